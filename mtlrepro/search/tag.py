r"""TAG, Task Affinity Grouping (Fifty, Amid, Zhao, Yu, Anil & Finn, "Efficiently Identifying Task
Groupings for Multi-Task Learning", NeurIPS 2021), as a search method of the harness: the weighting
``tag_affinity`` on a plain ``hard_sharing`` model, which exports the best grouping of the tasks
(:mod:`mtlrepro.search.grouping`) as a branched architecture.

**Affinity** (the paper's look-ahead inter-task affinity). Every ``affinity_every`` steps, on the batch :math:`X^t`, for
every task ``i``: take the step the model optimizer would take on task ``i``'s gradient alone,
restricted to the shared parameters (heads stay at :math:`\theta_j^t`),

.. math::
    \theta^{t+1}_{s|i} = \theta^t_s - \Delta(\nabla_{\theta_s} L_i(X^t)), \qquad
    Z^t_{i\to j} = 1 - \frac{L_j(X^t, \theta^{t+1}_{s|i}, \theta^t_j)}{L_j(X^t, \theta^t_s, \theta^t_j)},

and accumulate :math:`\hat Z = \frac{1}{N}\sum_t Z^t / \eta_t` over the ``N`` measured steps
(``affinity[i][j]`` = :math:`\hat Z_{i\to j}`: row = the task whose gradient is stepped, column = the
task whose loss is looked at; the diagonal is kept and never used by the grouping). Training itself
backpropagates the plain sum :math:`\sum_t L_t` (the authors' ``train_step``). The measurement never
changes the model: the look-ahead forwards run through :func:`torch.func.functional_call` on copies
of the buffers (BatchNorm running statistics stay as they were), under a forked RNG, and the
per-task gradients come from ``torch.autograd.grad`` (``p.grad`` is untouched).

Facts from the authors' code (``google-research/tag``) and the choices they fix:

* ``lookahead="optimizer"`` (default): :math:`\Delta` is the model optimizer's own update rule
  with its *current* state, read from the optimizer bound by :meth:`bind_training` -- the CelebA
  notebook steps ``momentum * get_slot(param, 'momentum') - lr * grad`` (the real SGD-momentum slot;
  plain ``lr * grad`` before the first step), which in PyTorch's convention is
  :math:`\eta(\mu b + g)`; weight decay is added to the gradient as in the Taskonomy patch (whose
  momentum lookup reads ``param_groups`` and so never finds the buffer: it steps
  :math:`\eta(g + \lambda\theta)`). SGD (momentum, dampening, Nesterov, weight decay), Adam and
  AdamW are implemented; for Adam (not in the authors' code) the look-ahead is Adam's step from its
  current moments with ``g`` as the next gradient (step count + 1, bias-corrected).
  ``lookahead="sgd"``: :math:`\Delta = \eta g`, the paper's printed update, for any optimizer.
  ``lookahead_lr`` overrides :math:`\eta` (default: the learning rate of the shared parameters'
  param group, so a schedule is followed).
* ``scale_by_lr=True``: both codes divide each :math:`Z^t` by the learning rate.
* ``affinity_every=10``: the README says TAG's affinities are "computed every 10 steps" (the
  Taskonomy patch measures when ``batch_num % 10 == 0``; the CelebA notebook measures every step).
  Here the step counter is global (the first step is measured) and checkpointed.
* ``lookahead_batch="training"`` (the paper's :math:`X^t`): the batch the step trains on; the
  ``joint`` step must hand it over (:meth:`bind_batch`). ``"stream"``: an independent batch of the
  training split from the trainer's second stream (:meth:`Weighting.bind_validation`), on which the
  losses, gradients and look-aheads are all computed -- the same estimator on another i.i.d.
  training batch, at one extra forward/backward per measurement.
* The CelebA notebook also drops the affinities of its early-stopping tail; here every measured
  step counts.

**Grouping**: :func:`~mtlrepro.search.grouping.best_grouping` (the authors' network selection, over
partitions into exactly ``n_groups`` groups; see :mod:`mtlrepro.search.grouping`).

**Export** (:meth:`TAGAffinity.export_architecture`): the grouping as a
:class:`~mtlrepro.search.architecture.BranchedArchitecture` with the same partition at every branch
module (``groups = [[g_1, ..., g_G]] * n_modules``), i.e. one separate network per group, which the
``branched`` scheme retrains; plus the affinity matrix and the grouping's value as provenance.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn
from torch.func import functional_call

from ..methods.base import Weighting
from .architecture import BranchedArchitecture
from .grouping import SCORES, SINGLETON_SCORE, Grouping, best_grouping, grouping_value, set_partitions

__all__ = ["TAGAffinity", "Grouping", "best_grouping", "grouping_value", "set_partitions",
           "lookahead_steps", "LOOKAHEADS", "LOOKAHEAD_BATCHES", "SCORES"]

LOOKAHEADS = ("optimizer", "sgd")
LOOKAHEAD_BATCHES = ("training", "stream")


# ====================================================================== the look-ahead step
def _sgd_step(p: torch.Tensor, g: torch.Tensor, group: dict, state: dict, lr: float) -> torch.Tensor:
    r"""``torch.optim.SGD``'s step on ``g``: :math:`d = g + \lambda\theta`, :math:`b = \mu b_{old} +
    (1 - \tau) d` (:math:`b = d` without a buffer), :math:`\Delta = \eta b` (Nesterov: :math:`\eta(d +
    \mu b)`)."""
    d = g + group["weight_decay"] * p if group.get("weight_decay") else g
    mu = group.get("momentum", 0.0) or 0.0
    if mu:
        buf = state.get("momentum_buffer")
        b = d if buf is None else mu * buf + (1.0 - (group.get("dampening", 0.0) or 0.0)) * d
        d = d + mu * b if group.get("nesterov") else b
    return lr * d


def _adam_step(p: torch.Tensor, g: torch.Tensor, group: dict, state: dict, lr: float,
               decoupled: bool) -> torch.Tensor:
    r"""Adam's step on ``g`` as the next gradient: :math:`m = \beta_1 m_{old} + (1-\beta_1) g`, :math:`v =
    \beta_2 v_{old} + (1-\beta_2) g^2`, step :math:`k + 1`, :math:`\Delta = \frac{\eta}{1-\beta_1^{k+1}}
    \frac{m}{\sqrt{v/(1-\beta_2^{k+1})} + \epsilon}` (L2 weight decay in ``g``; AdamW adds
    :math:`\eta\lambda\theta`)."""
    beta1, beta2 = group["betas"]
    wd = group.get("weight_decay", 0.0) or 0.0
    if wd and not decoupled:
        g = g + wd * p
    step = float(state["step"]) + 1.0 if "step" in state else 1.0
    m = beta1 * state["exp_avg"] + (1 - beta1) * g if "exp_avg" in state else (1 - beta1) * g
    v = beta2 * state["exp_avg_sq"] + (1 - beta2) * g * g if "exp_avg_sq" in state else (1 - beta2) * g * g
    if group.get("amsgrad") and "max_exp_avg_sq" in state:
        v = torch.maximum(state["max_exp_avg_sq"], v)
    denom = v.sqrt() / (1 - beta2 ** step) ** 0.5 + group["eps"]
    delta = (lr / (1 - beta1 ** step)) * m / denom
    return delta + lr * wd * p if (wd and decoupled) else delta


def lookahead_steps(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None],
                    optimizer: torch.optim.Optimizer | None, rule: str = "optimizer",
                    lr: float | None = None) -> list[torch.Tensor]:
    r"""The steps :math:`\Delta_p` (:math:`\theta' = \theta - \Delta`) the look-ahead takes on
    ``params`` with ``grads`` (None = zero): ``rule="optimizer"`` applies the update rule of
    ``optimizer`` (SGD, Adam, AdamW) with its current state and never changes it; ``"sgd"`` is
    :math:`\eta g`. ``lr`` overrides each parameter's param-group learning rate."""
    if rule not in LOOKAHEADS:
        raise ValueError(f"tag: lookahead must be one of {LOOKAHEADS}, got {rule!r}")
    group_of = {id(q): grp for grp in optimizer.param_groups for q in grp["params"]} if optimizer else {}
    out = []
    with torch.no_grad():
        for p, g in zip(params, grads):
            g = torch.zeros_like(p) if g is None else g.detach().to(p.dtype)
            group = group_of.get(id(p))
            if group is None and (lr is None or rule == "optimizer"):
                raise ValueError("tag: a shared parameter is not in the bound optimizer (bind_training): the "
                                 "'optimizer' look-ahead needs its state, the 'sgd' one at least a lookahead_lr")
            eta = float(group["lr"]) if lr is None else float(lr)
            if rule == "sgd":
                out.append(eta * g)
                continue
            if group.get("maximize"):
                g = -g
            state = optimizer.state.get(p, {})
            if isinstance(optimizer, torch.optim.Adam):   # AdamW subclasses Adam in recent torch
                decoupled = bool(group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW)))
                out.append(_adam_step(p, g, group, state, eta, decoupled))
            elif isinstance(optimizer, torch.optim.AdamW):
                out.append(_adam_step(p, g, group, state, eta, True))
            elif isinstance(optimizer, torch.optim.SGD):
                out.append(_sgd_step(p, g, group, state, eta))
            else:
                raise NotImplementedError(f"tag: lookahead 'optimizer' knows SGD, Adam and AdamW, not "
                                          f"{type(optimizer).__name__}; use lookahead: sgd")
    return out


# ====================================================================== the search method
TaskLoss = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


class TAGAffinity(Weighting):
    """TAG's affinity measurement during plain-sum hard-sharing training (see the module docstring).

    Options: ``n_groups`` (2), ``affinity_every`` (10), ``lookahead`` ("optimizer" | "sgd"),
    ``lookahead_lr`` (None), ``lookahead_batch`` ("training" | "stream"), ``scale_by_lr`` (True),
    ``score`` ("mean" | "sum"), ``singleton_score`` (-1e6).

    Logs on measured steps: ``affinity`` ``(T, T)`` (this step's :math:`Z/\\eta`; its epoch mean is
    the epoch's affinity) and ``lookahead_loss`` ``(T, T)``; every step ``task_weights`` (ones)
    and ``total_loss``.
    """

    name: ClassVar[str] = "tag_affinity"
    separable: ClassVar[bool] = False
    not_separable_because: ClassVar[str] = ("its look-ahead needs every task's loss and gradient at the same "
                                            "shared parameters (one joint forward)")
    version: ClassVar[int] = 1

    def __init__(self, n_tasks: int, n_groups: int = 2, affinity_every: int = 10, lookahead: str = "optimizer",
                 lookahead_lr: float | None = None, lookahead_batch: str = "training", scale_by_lr: bool = True,
                 score: str = "mean", singleton_score: float = SINGLETON_SCORE, **kwargs: Any):
        super().__init__(n_tasks, **kwargs)
        if lookahead not in LOOKAHEADS:
            raise ValueError(f"tag_affinity: lookahead must be one of {LOOKAHEADS}, got {lookahead!r}")
        if lookahead_batch not in LOOKAHEAD_BATCHES:
            raise ValueError(f"tag_affinity: lookahead_batch must be one of {LOOKAHEAD_BATCHES}, "
                             f"got {lookahead_batch!r}")
        if score not in SCORES:
            raise ValueError(f"tag_affinity: score must be one of {SCORES}, got {score!r}")
        if int(affinity_every) < 1 or not 1 <= int(n_groups) <= self.n_tasks:
            raise ValueError(f"tag_affinity: affinity_every >= 1 and 1 <= n_groups <= {self.n_tasks} "
                             f"(got {affinity_every}, {n_groups})")
        self.n_groups, self.affinity_every = int(n_groups), int(affinity_every)
        self.lookahead, self.lookahead_batch, self.score = lookahead, lookahead_batch, score
        self.lookahead_lr = None if lookahead_lr is None else float(lookahead_lr)
        self.scale_by_lr, self.singleton_score = bool(scale_by_lr), float(singleton_score)
        self.needs_validation_batches = lookahead_batch == "stream"   # the trainer reads the instance
        self.register_buffer("affinity_sum", torch.zeros(self.n_tasks, self.n_tasks, dtype=torch.float64))
        self._steps, self._measured, self._n_modules = 0, 0, None
        self._task_loss: TaskLoss | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._batch: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    # --- wiring and state ---------------------------------------------------------------------
    def model_parameters_it_steps(self, model: nn.Module) -> list[nn.Parameter]:
        """Steps nothing itself; records the encoder's number of branch modules for the export."""
        n = getattr(getattr(model, "encoder", None), "n_branch_modules", None)
        if n is None:
            raise ValueError(f"tag_affinity exports a branched architecture and needs an encoder with branch "
                             f"modules (ResNetStages, e.g. sharing hard_sharing on resnet18); "
                             f"got {type(model).__name__}")
        self._n_modules = int(n)
        return []

    def bind_training(self, task_loss: TaskLoss, optimizer: torch.optim.Optimizer | None = None) -> None:
        self._task_loss, self._optimizer = task_loss, optimizer

    def bind_batch(self, x: torch.Tensor, targets: list[torch.Tensor]) -> None:
        """The step's training batch (``lookahead_batch="training"``): the ``joint`` step calls it
        before :meth:`backward`."""
        self._batch = (x, list(targets))

    def get_extra_state(self) -> dict:
        return {"steps": self._steps, "measured": self._measured, "n_modules": self._n_modules}

    def set_extra_state(self, state: dict) -> None:
        self._steps, self._measured = int(state.get("steps", 0)), int(state.get("measured", 0))
        self._n_modules = state.get("n_modules", self._n_modules)

    @property
    def n_measurements(self) -> int:
        return self._measured

    def affinity(self) -> torch.Tensor:
        """The mean measured affinity ``(T, T)`` (float64; row i -> column j)."""
        if not self._measured:
            raise RuntimeError("tag_affinity: no affinity measured yet")
        return self.affinity_sum / self._measured

    # --- the measurement ------------------------------------------------------------------------
    def _lr(self, p: nn.Parameter) -> float:
        if self.lookahead_lr is not None:
            return self.lookahead_lr
        if self._optimizer is None:
            raise RuntimeError("tag_affinity needs the model optimizer (bind_training) or a lookahead_lr")
        return float(next(g["lr"] for g in self._optimizer.param_groups if any(q is p for q in g["params"])))

    def measure(self, model: nn.Module, losses: torch.Tensor, x: torch.Tensor,
                targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Z, L')``: ``Z[i, j]`` = :math:`1 - L_j(\\theta_{s|i})/L_j(\\theta_s)` on ``(x, targets)``
        (divided by the learning rate when ``scale_by_lr``) and the look-ahead losses ``L'[i, j]``.
        ``losses`` are the tasks' losses at the current parameters on that batch, with their graph
        (retained). Changes nothing in the model, its optimizer or the RNG streams."""
        self._require_task_loss()
        shared = [p for p in model.shared_parameters() if p.requires_grad]
        name_of = {id(p): n for n, p in model.named_parameters()}
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        base = losses.detach().to(torch.float64)
        after = torch.empty(self.n_tasks, self.n_tasks, dtype=torch.float64, device=losses.device)
        for i in range(self.n_tasks):
            grads = torch.autograd.grad(losses[i], shared, retain_graph=True, allow_unused=True)
            steps = lookahead_steps(shared, grads, self._optimizer, self.lookahead, self.lookahead_lr)
            with torch.no_grad():
                moved = {name_of[id(p)]: p - d for p, d in zip(shared, steps)}
                outs = functional_call(model, {**buffers, **moved}, (x,))
                after[i] = torch.stack([self._task_loss(t, outs[t], targets[t]).detach()
                                        for t in range(self.n_tasks)]).to(torch.float64)
        Z = 1.0 - after / base.unsqueeze(0)
        if self.scale_by_lr:
            Z = Z / self._lr(shared[0])
        return Z, after

    def _require_task_loss(self) -> None:
        if self._task_loss is None:
            raise RuntimeError("tag_affinity needs the problem's task loss: bind_training(task_loss, optimizer)")

    def _stream_losses(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        self._require_task_loss()
        x, targets = self.validation_batch()
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        outs = functional_call(model, buffers, (x,))
        return torch.stack([self._task_loss(t, outs[t], targets[t]) for t in range(self.n_tasks)]), x, targets

    def backward(self, losses: torch.Tensor, model: nn.Module | None = None,
                 z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self._check_losses(losses)
        if model is None:
            raise ValueError("tag_affinity: backward needs the model (the look-ahead forwards)")
        if self._n_modules is None:
            self._n_modules = getattr(getattr(model, "encoder", None), "n_branch_modules", None)
        logs: dict[str, torch.Tensor] = {}
        if self._steps % self.affinity_every == 0:
            dev = losses.device   # the look-ahead forwards draw nothing from the training RNG streams
            with torch.random.fork_rng(devices=[dev] if dev.type != "cpu" else [],
                                       device_type=dev.type if dev.type != "cpu" else None):
                if self.lookahead_batch == "stream":
                    Z, after = self.measure(model, *self._stream_losses(model))
                else:
                    if self._batch is None:
                        raise RuntimeError(
                            "tag_affinity (lookahead_batch='training') needs the step's batch: the joint step must "
                            "call weighting.bind_batch(x, targets) before weighting.backward (or use "
                            "lookahead_batch='stream')")
                    Z, after = self.measure(model, losses, *self._batch)
            self.affinity_sum += Z.to(self.affinity_sum.device)
            self._measured += 1
            logs = {"affinity": Z.detach(), "lookahead_loss": after.detach()}
        self._batch = None
        self._steps += 1
        total = losses.sum()
        total.backward()
        return {"task_weights": torch.ones(self.n_tasks, device=losses.device), "total_loss": total.detach(), **logs}

    # --- the output -----------------------------------------------------------------------------
    def grouping(self) -> Grouping:
        """:func:`best_grouping` of the mean measured affinity."""
        return best_grouping(self.affinity().cpu().numpy(), self.n_groups, self.score, self.singleton_score)

    def export_architecture(self, n_modules: int | None = None) -> dict[str, Any]:
        """The best grouping as a branched architecture (the same ``n_groups`` partition at every
        branch module: one network per group) plus provenance: ``affinity`` (row i -> column j),
        ``grouping_score`` (the grouping's value), ``task_scores``, ``n_measurements``, ``score``."""
        M = self._n_modules if n_modules is None else int(n_modules)
        if M is None:
            raise RuntimeError("tag_affinity: the number of branch modules is unknown (the trainer calls "
                               "model_parameters_it_steps(model); or pass n_modules)")
        best = self.grouping()
        arch = BranchedArchitecture(self.n_tasks, tuple(best.groups for _ in range(M)))
        return {**arch.to_dict(), "method": "tag", "affinity": self.affinity().cpu().tolist(),
                "affinity_convention": "affinity[i][j] = Z_{i->j}: the look-ahead gain of task j's loss from a "
                                       "step on task i's gradient (row: source, column: target)",
                "grouping_score": best.score, "task_scores": list(best.task_scores),
                "n_measurements": self._measured, "score": self.score, "n_groups": self.n_groups}

    def extra_repr(self) -> str:
        return (f"n_tasks={self.n_tasks}, n_groups={self.n_groups}, affinity_every={self.affinity_every}, "
                f"lookahead={self.lookahead!r}, lookahead_batch={self.lookahead_batch!r}, score={self.score!r}")
