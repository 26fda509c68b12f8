r"""MTL-NAS's single-shot gradient-based search (Gao et al., CVPR 2020, Sec. 4) as a method of the
harness: the weighting ``mtl_nas_search`` on the ``mtl_nas_supernet`` model.

Every training step (the ``joint`` update), as the authors' ``tools/train_nas.py``:

1. **Architecture step** (first-order, on the next search-validation batch): the supernet in its
   ``arch_phase`` (``"sigmoid"``: :math:`m_e = \sigma(\alpha_e)`, the released default
   ``HARD_ARCH_TRAINING: False``), then

   .. math:: \alpha \leftarrow \mathrm{Adam}\Big(\nabla_\alpha \big[\textstyle\sum_t w_t L_t^{val}
             + \lambda_s\, \bar H(\sigma(\alpha))\big]\Big),

   :math:`\bar H` the **minimum-entropy regulariser** (the mean Bernoulli entropy of each target
   task's edges, averaged over the tasks: the authors' ``entropy_loss``), which drives every
   :math:`\sigma(\alpha_e)` to 0 or 1 so that the searched supernet is (nearly) the discretised
   network. Only :math:`\alpha` moves; BatchNorm statistics also see the batch (training mode,
   as released).
2. **Weight step** on the training batch: the supernet in its ``weight_phase`` (``"gumbel"``: one
   RelaxedBernoulli sample per edge at temperature :math:`\tau_s`, the released default
   ``HARD_WEIGHT_TRAINING: True``); the gradients of :math:`\sum_t w_t L_t` go to the weights
   (not to :math:`\alpha`), the trainer steps the model's optimizer.

Schedules, with ``s`` the global step and ``N = schedule_epochs x steps_per_epoch`` (the
authors' ``TRAIN.STEPS``), both the authors' ``poly(start, end, s, N, period, power)`` (``start``
until ``s/N`` reaches ``period[0]``, ``end`` from ``period[1]``, polynomial in between):

* :math:`\tau_s` = ``poly(tau0, 0, s, N, tau_period, tau_power)`` (released: 1, (0, 1), 2, i.e.
  :math:`(1 - s/N)^2`; floored at 1e-8);
* :math:`\lambda_s` = ``poly(0, entropy_weight, s, N, entropy_period, 1)`` (released search
  configs: weight 10, period (0, 0): 0 at step 0, then 10).

Optimiser of :math:`\alpha` (released): Adam lr 1e-3 (the configs' ``ARCH.LR``), betas
(0.5, 0.999), weight decay 1e-3, no lr schedule. ``task_weights`` (None: ones, the CoNAL
tables' equal weighting; the released NYUv2 code weights normals by 20) enter both losses.
Differences from the released procedure, all the harness's: the held-out half is fixed
(``search_val_fraction``; released ``ARCH.TRAIN_SPLIT 0.5`` re-drawn every pass over the data,
``MIXED_DATA``), and the weights train with the recipe's optimizer (released: SGD, fusion layers
at 100x the lr).

``N`` is the run's length, which the trainer gives through :meth:`bind_schedule`;
``schedule_epochs`` (None: the run's epochs) sets another length in epochs.

Logs per step: ``task_weights``, ``total_loss``, ``val_loss``, ``entropy``, ``entropy_weight``,
``tau``, ``edges_on`` (how many :math:`\alpha_e > 0`), ``edge_probabilities`` ``(E,)``.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..methods.base import Weighting

__all__ = ["MTLNASSearch", "poly"]


def poly(start: float, end: float, step: int, total_steps: int, period: Sequence[float], power: float) -> float:
    """The authors' schedule: ``start`` until ``step / total_steps`` reaches ``period[0]``, ``end``
    from ``period[1]`` on, and ``end - (end - start) (1 - (s - a) / (b - a))^power`` in between
    (``a, b = total_steps * period``)."""
    rate = float(step) / total_steps
    if rate <= period[0]:
        return float(start)
    if rate >= period[1]:
        return float(end)
    lo, hi = total_steps * period[0], total_steps * period[1]
    return float(end - (end - start) * (1.0 - (step - lo) / (hi - lo)) ** power)


class MTLNASSearch(Weighting):
    name: ClassVar[str] = "mtl_nas_search"
    needs_validation_batches: ClassVar[bool] = True
    not_separable_because: ClassVar[str] = ("it searches the mtl_nas_supernet, whose forward computes every "
                                            "task at once (update joint)")
    version: ClassVar[int] = 1

    def __init__(self, n_tasks: int, arch_lr: float = 1e-3, arch_betas: Sequence[float] = (0.5, 0.999),
                 arch_weight_decay: float = 1e-3, entropy_weight: float = 10.0,
                 entropy_period: Sequence[float] = (0.0, 0.0), tau0: float = 1.0, tau_power: float = 2.0,
                 tau_period: Sequence[float] = (0.0, 1.0), arch_phase: str = "sigmoid",
                 weight_phase: str = "gumbel", schedule_epochs: int | None = None,
                 task_weights: Sequence[float] | None = None, **kwargs: Any):
        super().__init__(n_tasks, **kwargs)
        from ..models.sharing.mtl_nas_supernet import PHASES
        if arch_phase not in PHASES or weight_phase not in PHASES:
            raise ValueError(f"mtl_nas_search: phases must be among {PHASES}, got {arch_phase!r}, {weight_phase!r}")
        if task_weights is not None and len(task_weights) != n_tasks:
            raise ValueError(f"mtl_nas_search: {len(task_weights)} task_weights for {n_tasks} tasks")
        self.arch_lr, self.arch_betas = float(arch_lr), tuple(float(b) for b in arch_betas)
        self.arch_weight_decay = float(arch_weight_decay)
        self.entropy_weight, self.entropy_period = float(entropy_weight), tuple(float(v) for v in entropy_period)
        self.tau0, self.tau_power, self.tau_period = float(tau0), float(tau_power), tuple(float(v) for v in tau_period)
        self.arch_phase, self.weight_phase = arch_phase, weight_phase
        self.schedule_epochs = None if schedule_epochs is None else int(schedule_epochs)
        self.register_buffer("task_weight", torch.tensor([1.0] * n_tasks if task_weights is None
                                                         else [float(w) for w in task_weights]))
        self._total_steps: int | None = None
        self._arch_opt: torch.optim.Optimizer | None = None
        self._task_loss = None
        self._last: dict[str, torch.Tensor] = {}

    # --- wiring ----------------------------------------------------------------------------
    @staticmethod
    def _require_supernet(model: nn.Module | None) -> None:
        if model is None or not hasattr(model, "arch_parameters") or not hasattr(model, "set_search_phase"):
            raise ValueError(f"mtl_nas_search searches a mtl_nas_supernet model; got {type(model).__name__} "
                             f"(recipe: sharing mtl_nas_supernet)")

    def model_parameters_it_steps(self, model: nn.Module) -> list[nn.Parameter]:
        self._require_supernet(model)
        arch = list(model.arch_parameters())
        self._arch_opt = torch.optim.Adam(arch, lr=self.arch_lr, betas=self.arch_betas,
                                          weight_decay=self.arch_weight_decay)
        return arch

    def bind_training(self, task_loss, optimizer=None) -> None:
        self._task_loss = task_loss

    def bind_schedule(self, epochs: int, steps_per_epoch: int) -> None:
        """The run's length (the trainer calls it once): the schedules' ``N`` is
        ``(schedule_epochs or epochs) * steps_per_epoch``."""
        self._total_steps = max(int(self.schedule_epochs or epochs) * int(steps_per_epoch), 1)

    def get_extra_state(self) -> dict:
        return {"arch_optimizer": self._arch_opt.state_dict() if self._arch_opt is not None else None}

    def set_extra_state(self, state: dict) -> None:
        if state.get("arch_optimizer") is not None and self._arch_opt is not None:
            self._arch_opt.load_state_dict(state["arch_optimizer"])

    # --- the schedules -----------------------------------------------------------------------
    def total_steps(self, model: nn.Module) -> int:
        if self._total_steps is not None:
            return self._total_steps
        if self.schedule_epochs is None:
            raise RuntimeError("mtl_nas_search: the run's length is unknown (the trainer calls bind_schedule; "
                               "or set weighting_kwargs.schedule_epochs)")
        return max(self.schedule_epochs * max(int(model.steps_per_epoch), 1), 1)

    def temperature(self, step: int, total: int) -> float:
        return poly(self.tau0, 0.0, step, total, self.tau_period, self.tau_power)

    def entropy_coefficient(self, step: int, total: int) -> float:
        return poly(0.0, self.entropy_weight, step, total, self.entropy_period, 1.0)

    # --- the two steps -----------------------------------------------------------------------
    def _weighted(self, losses: torch.Tensor) -> torch.Tensor:
        return (self.task_weight.to(losses.dtype) * losses).sum()

    def before_step(self, model: nn.Module) -> None:
        """The architecture step on the next search-validation batch, then the weight phase."""
        self._require_supernet(model)
        if self._arch_opt is None or self._task_loss is None:
            raise RuntimeError("mtl_nas_search: the trainer did not bind the model and the task loss")
        step, total = int(model.global_step), self.total_steps(model)
        tau, lam = self.temperature(step, total), self.entropy_coefficient(step, total)
        x, targets = self.validation_batch()
        model.set_search_phase(self.arch_phase, tau)
        outs = model(x)
        val = self._weighted(torch.stack([self._task_loss(t, o, y) for t, (o, y) in enumerate(zip(outs, targets))]))
        entropy = model.entropy()
        arch = [p for g in self._arch_opt.param_groups for p in g["params"]]
        grads = torch.autograd.grad(val + lam * entropy, arch)
        for p, g in zip(arch, grads):
            p.grad = g
        self._arch_opt.step()
        for p in arch:
            p.grad = None
        model.set_search_phase(self.weight_phase, tau)
        dev = val.device
        self._last = {"val_loss": val.detach(), "entropy": entropy.detach(),
                      "entropy_weight": torch.tensor(lam, device=dev), "tau": torch.tensor(tau, device=dev)}

    def backward(self, losses: torch.Tensor, model: nn.Module | None = None,
                 z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self._check_losses(losses)
        self._require_supernet(model)
        total = self._weighted(losses)
        total.backward()
        for p in model.arch_parameters():   # the weight step never moves alpha
            p.grad = None
        probs = model.edge_probabilities().detach()
        return {"task_weights": self.task_weight.detach().clone(), "total_loss": total.detach(),
                "edges_on": (model.alpha.detach() > 0).sum().to(losses.dtype),
                "edge_probabilities": probs, **self._last}

    def extra_repr(self) -> str:
        return (f"n_tasks={self.n_tasks}, arch_lr={self.arch_lr}, entropy_weight={self.entropy_weight}, "
                f"tau0={self.tau0}, phases=({self.arch_phase!r}, {self.weight_phase!r}), "
                f"schedule_epochs={self.schedule_epochs}")
