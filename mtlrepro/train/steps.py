"""Training steps: how a batch turns into parameter updates, per update scheme.

- ``joint``: all task heads on one shared forward; the weighting (loss weighting or gradient
  aggregator, :mod:`mtlrepro.methods`) turns the loss vector into gradients; one optimizer step.
- ``steady_state``: one task active per forward; an optimizer step after each task
  (Maximum Roaming's and ETR-NLP's CelebA protocol: the shared branch moves between tasks).
- ``synchronized``: one task active per forward; gradients of all tasks accumulate and one
  optimizer step follows (the dense-prediction protocol; ETR-NLP Table 7). Models with
  ``supports_batched_tasks`` run the tasks' passes as batched passes (``forward_tasks``: one
  forward over the batch repeated per task, the task objectives summed, one backward) - the same
  losses, gradients and BN running statistics as the loop up to float rounding. Tasks per
  batched pass: ``task_chunk`` / ``$MTLREPRO_TASK_CHUNK`` (see ``models.batched.task_chunks``;
  default on accelerators as many tasks as fit in half the free memory (``models.batched.chunking``),
  on CPU 4 per pass, where all tasks at once measured slower than the loop and 4 per pass
  1.1-1.2x faster).

Which (update scheme, weighting) pairs exist. One task per forward means no step ever holds all
``T`` losses of one forward, so only a *separable* weighting (``Weighting.separable``: objective
``sum_t f_t(L_t)`` with every ``f_t`` fixed before the batch, applied as task ``t``'s backward on
``f_t(L_t)``) can be applied; every other pair is rejected by :func:`check_update_weighting`
(call it before building the model) and again by the step itself:

=============  =========================  ===========================  ===========================
weighting      joint                      steady_state                 synchronized
=============  =========================  ===========================  ===========================
equal          yes: ``sum_t c L_t``       yes: task t steps on c L_t   yes: sum_t c grad L_t, 1 step
gradnorm       yes                        no: the weight update needs  no: not implemented (needs
                                          every task's G_t = |w_t|     every G_t and L_t/L_t(0)
                                          ||grad_W L_t|| at one W      collected across the task
                                                                       passes, then a w update)
mgda_ub        yes (``model.encode``)     no: needs z of ONE forward   no: same (and conditional
                                          for all tasks                models have no shared z)
scalar, uw,    yes                        yes: task t steps on f_t     yes: sum_t grad f_t(L_t)
dwa, rlw                                  (separable)
auto_lambda    yes                        no: its virtual step needs   no: same
                                          every task's gradient
mgda, pcgrad,  yes (Jacobian of the       no: an aggregator needs the  no: not implemented
cagrad, ...    shared parameters)         T x D Jacobian at one point
=============  =========================  ===========================  ===========================

``c`` is 1 (``reduction="sum"``) or 1/T (``"mean"``). The rule for new methods: ``joint`` takes
every weighting; ``steady_state`` and ``synchronized`` take the separable loss weightings (fixed
scalarisation, DWA, RLW and uncertainty weighting can be; GradNorm and every aggregator are not).
Since all task passes of a ``synchronized`` step see the same parameters, it could in principle
stack their shared-parameter gradients into the Jacobian of a ``needs_shared_jacobian``
aggregator (or collect GradNorm's norms); that is not implemented, and rejected.

Steps return the summed task losses as a detached tensor: no host sync on the hot path. With
``logs=`` (a :class:`mtlrepro.methods.logs.EpochLogs`) they also hand it the step's logs
(``task_weights`` ``(T,)``, ``total_loss``, and the weighting's own entries).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import ConfigError
from ..methods import WEIGHTINGS
from ..methods.logs import EpochLogs
from ..models.batched import auto_chunk_for, task_chunks
from ..registry import Registry

__all__ = ["STEPS", "check_update_weighting", "supported_weightings", "joint_step",
           "steady_state_step", "synchronized_step", "evaluate"]

StepFn = Callable[..., torch.Tensor]
STEPS: Registry[StepFn] = Registry("update scheme")
#: update schemes that run one task per forward (they apply separable weightings only)
ONE_TASK_PER_FORWARD = ("steady_state", "synchronized")


def _unsupported_reason(update: str, cls: type) -> str | None:
    if update in ONE_TASK_PER_FORWARD and not getattr(cls, "separable", False):
        return (f"{update!r} runs one task per forward, and {cls.name!r} is not separable: "
                f"{cls.not_separable_because}")
    return None


def supported_weightings(update: str) -> list[str]:
    """The registered weighting names ``update`` can apply."""
    STEPS.get(update)
    return [n for n in WEIGHTINGS.names() if _unsupported_reason(update, WEIGHTINGS.get(n)) is None]


def check_update_weighting(update: str, weighting: str) -> None:
    """Raise ``ValueError`` naming the pair, the reason and the alternatives when the update
    scheme ``update`` cannot apply the weighting ``weighting`` (names as in a recipe); unknown
    names raise :class:`~mtlrepro.registry.UnknownKeyError`. Needs no model."""
    STEPS.get(update)
    reason = _unsupported_reason(update, WEIGHTINGS.get(weighting))
    if reason is None:
        return
    updates = [u for u in STEPS.names() if _unsupported_reason(u, WEIGHTINGS.get(weighting)) is None]
    raise ConfigError(f"update {update!r} with weighting {weighting!r} is not implemented: {reason}. "
                     f"Weightings {update!r} supports: {', '.join(supported_weightings(update))}; "
                     f"updates {weighting!r} supports: {', '.join(updates)}")


def _require_supported(update: str, weighting) -> None:
    reason = _unsupported_reason(update, type(weighting))
    if reason is not None:
        raise ConfigError(f"update {update!r} with weighting {weighting.name!r} is not implemented: {reason}")


def joint_forward(model, weighting, optimizer, problem, x, targets):
    """The forward half of a joint update: every task's loss in one pass -> ``(losses, z)``
    (``z`` the shared representation when the method reads it, else None)."""
    weighting.before_step(model)
    optimizer.zero_grad(set_to_none=True)
    z = None
    if weighting.needs_representation:
        z = model.encode(x)
        outs = [model.decode(z, t) for t in range(problem.n_tasks)]
    else:
        outs = model(x)
    losses = torch.stack([problem.task_loss(t, o, y) for t, (o, y) in enumerate(zip(outs, targets))])
    return losses, z


def joint_update(model, weighting, optimizer, x, targets, losses, z, grad_clip: float | None = None) -> dict:
    """The backward half: the method's backward, optional clipping, the optimizer step -> its logs."""
    weighting.bind_batch(x, targets)   # TAG's look-ahead re-evaluates the losses on this batch
    step_logs = weighting.backward(losses, model, z)
    reg = getattr(model, "regularization_loss", lambda: None)()   # a term of the model's own (GatedMTL's lambda_s L_sparsity), after the
    if reg is not None:                 # method: its gradient adds to whatever the method left in .grad
        reg.backward()
        step_logs = {**step_logs, "regularization": reg.detach()}
    if grad_clip is not None:  # total-norm clipping of everything the optimizer steps (CoNAL's search: 5)
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    optimizer.step()
    return step_logs


@STEPS.register("joint")
def joint_step(model, weighting, optimizer, problem, x, targets, logs: EpochLogs | None = None,
               grad_clip: float | None = None) -> torch.Tensor:
    losses, z = joint_forward(model, weighting, optimizer, problem, x, targets)
    step_logs = joint_update(model, weighting, optimizer, x, targets, losses, z, grad_clip)
    if logs is not None:
        logs.add(step_logs)
    return losses.detach().sum()


@STEPS.register("steady_state")
def steady_state_step(model, weighting, optimizer, problem, x, targets,
                      logs: EpochLogs | None = None) -> torch.Tensor:
    _require_supported("steady_state", weighting)
    weighting.start_step()
    total = torch.zeros((), device=x.device)
    objective = torch.zeros((), device=x.device)
    for t in range(problem.n_tasks):
        optimizer.zero_grad(set_to_none=True)
        loss = problem.task_loss(t, model(x, task=t), targets[t])
        obj = weighting.task_objective(t, loss)
        obj.backward()
        optimizer.step()
        total = total + loss.detach()
        objective = objective + obj.detach()
    if logs is not None:
        logs.add({"task_weights": weighting.current_task_weights(total), "total_loss": objective})
    return total


@STEPS.register("synchronized")
def synchronized_step(model, weighting, optimizer, problem, x, targets,
                      task_chunk: int | str | None = None, logs: EpochLogs | None = None) -> torch.Tensor:
    _require_supported("synchronized", weighting)
    weighting.start_step()
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=x.device)
    objective = torch.zeros((), device=x.device)
    chunks = task_chunks(problem.n_tasks, task_chunk, x.device, auto_chunk=auto_chunk_for(model, x, task_chunk))
    if getattr(model, "supports_batched_tasks", False) and any(len(c) > 1 for c in chunks):
        for chunk in chunks:  # one forward + one backward per chunk of tasks
            outs = model.forward_tasks(x, chunk)
            losses = [problem.task_loss(t, o, targets[t]) for t, o in zip(chunk, outs)]
            objs = [weighting.task_objective(t, loss) for t, loss in zip(chunk, losses)]
            obj = sum(objs[1:], objs[0])
            obj.backward()
            total = total + sum(losses[1:], losses[0]).detach()
            objective = objective + obj.detach()
    else:
        for t in range(problem.n_tasks):
            loss = problem.task_loss(t, model(x, task=t), targets[t])
            obj = weighting.task_objective(t, loss)
            obj.backward()
            total = total + loss.detach()
            objective = objective + obj.detach()
    optimizer.step()
    if logs is not None:
        logs.add({"task_weights": weighting.current_task_weights(total), "total_loss": objective})
    return total


def evaluate(model, problem, batch_size: int) -> dict[str, float]:
    """All tasks' outputs on the eval split; metrics over the whole split."""
    model.eval()
    ev = problem.new_evaluator()
    with torch.no_grad():
        for x, targets in problem.eval_batches(batch_size):
            outs = model.forward_all(x) if model.task_conditional else model(x)
            ev.update([o.float() for o in outs], targets)
    model.train()
    return ev.compute()
