"""Training steps: how a batch turns into parameter updates, per update scheme.

- ``joint``: all task heads on one shared forward; a weighting (equal, GradNorm, MGDA-UB)
  combines the task losses; one optimizer step.
- ``steady_state``: one task active per forward; an optimizer step after each task
  (Maximum Roaming's and ETR-NLP's CelebA protocol: the shared branch moves between tasks).
- ``synchronized``: one task active per forward; gradients of all tasks accumulate and one
  optimizer step follows (the dense-prediction protocol; ETR-NLP Table 7). Models with
  ``supports_batched_tasks`` run the tasks' passes as batched passes (``forward_tasks``: one
  forward over the batch repeated per task, the task losses summed, one backward) - the same
  losses, gradients and BN running statistics as the loop up to float rounding. Tasks per
  batched pass: ``task_chunk`` / ``$MTLREPRO_TASK_CHUNK`` (see ``models.base.task_chunks``;
  default on accelerators as many tasks as fit in half the free memory (``models.task_memory``),
  on CPU 4 per pass, where all tasks at once measured slower than the loop and 4 per pass
  1.1-1.2x faster).

Steps return the summed task losses as a detached tensor: no host sync on the hot path.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..models.base import task_chunks
from ..models.task_memory import auto_chunk_for
from ..registry import Registry

StepFn = Callable[..., torch.Tensor]
STEPS: Registry[StepFn] = Registry("update scheme")


@STEPS.register("joint")
def joint_step(model, weighting, optimizer, problem, x, targets) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    z = None
    if weighting.needs_representation:
        z = model.encode(x)
        outs = [model.decode(z, t) for t in range(problem.n_tasks)]
    else:
        outs = model(x)
    losses = torch.stack([problem.task_loss(t, o, y) for t, (o, y) in enumerate(zip(outs, targets))])
    weighting.backward(losses, model, z)
    optimizer.step()
    return losses.detach().sum()


@STEPS.register("steady_state")
def steady_state_step(model, weighting, optimizer, problem, x, targets) -> torch.Tensor:
    total = torch.zeros((), device=x.device)
    for t in range(problem.n_tasks):
        optimizer.zero_grad(set_to_none=True)
        loss = problem.task_loss(t, model(x, task=t), targets[t])
        loss.backward()
        optimizer.step()
        total = total + loss.detach()
    return total


@STEPS.register("synchronized")
def synchronized_step(model, weighting, optimizer, problem, x, targets,
                      task_chunk: int | str | None = None) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=x.device)
    chunks = task_chunks(problem.n_tasks, task_chunk, x.device, auto_chunk=auto_chunk_for(model, x, task_chunk))
    if getattr(model, "supports_batched_tasks", False) and any(len(c) > 1 for c in chunks):
        for chunk in chunks:  # one forward + one backward per chunk of tasks
            outs = model.forward_tasks(x, chunk)
            losses = [problem.task_loss(t, o, targets[t]) for t, o in zip(chunk, outs)]
            loss = sum(losses[1:], losses[0])
            loss.backward()
            total = total + loss.detach()
    else:
        for t in range(problem.n_tasks):
            loss = problem.task_loss(t, model(x, task=t), targets[t])
            loss.backward()
            total = total + loss.detach()
    optimizer.step()
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
