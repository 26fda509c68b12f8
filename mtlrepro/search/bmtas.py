r"""BMTAS's search (Bruggemann, Kanakis, Georgoulis & Van Gool, "Automated Search for
Resource-Efficient Branched Multi-Task Networks", BMVC 2020) as a method of the harness: the
weighting ``bmtas_search`` on the ``bmtas_supernet`` model (:mod:`mtlrepro.models.sharing.bmtas_supernet`).

Schedule, as the released ``main_search.py`` / ``src/tools.py:train_search`` (``brdav/bmtas``):

* **Split**: the weights train on one part of the training split, :math:`\alpha` on the other
  (released: random 80 / 20; here the recipe's ``search_val_fraction``, :mod:`mtlrepro.search.split`).
* **Warm-up**: the first ``warmup_epochs`` epochs (released ``max_epochs // 20``: None) train the
  supergraph with task ``t`` on copy ``t`` only; :math:`\alpha` is not touched.
* **Temperature**: epoch :math:`e` (1-based, :math:`d` warm-up epochs, :math:`E` epochs) samples at
  :math:`\tau_e = \min\big(\tau_0 - \tfrac{e - d - 1}{E - d - 1} (\tau_0 - \tau_1), \tau_0\big)`,
  linear from :math:`\tau_0 = 5` in the first search epoch to :math:`\tau_1 = 0.1` in the last
  (:meth:`on_epoch_start`).
* **Alternation** (``arch_update="epoch"``, released): every search epoch starts with one pass over
  the search-validation split, one :math:`\alpha` step per batch (Adam lr 0.01, weight decay 5e-5,
  its state reset every epoch), on :math:`\sum_t \big(L_t + \lambda R(\alpha)\big)` -- the released
  loss adds :math:`\lambda R` to each task's loss, so the resource gradient counts ``T`` times
  (``resource_per_task``) -- one forward and backward per task on its own path, the searched
  modules' BatchNorms not tracking; then the weight optimizer's state and those running statistics
  are reset ("arch has changed") and the epoch's weight steps follow (the joint step: one step on
  :math:`\sum_t L_t` per batch; the resource term never enters them). ``arch_update="step"``
  instead takes one :math:`\alpha` step on the next search-validation batch before every weight
  step (DARTS-style, as ``conal_search``).
* **Resource** :math:`R(\alpha)`: the expected cost of the sampled tree
  (:class:`~mtlrepro.search.bmtas_resource.BranchingResource`, estimator ``"released"`` or
  ``"exact"``) with per-layer costs from the supernet (``resource="flops"``: GFLOPs of one copy at
  the search input size, released counter; ``"params"``: millions), optionally divided by one
  path's cost (``resource_normalise``: :math:`R \in [1, T]`), times ``resource_weight``
  :math:`\lambda` (released default 0.05 on GFLOPs).
* **Result**: the argmax tree (``model.export_architecture()``), which ``branched`` retrains.

Differences from the released search, by construction of the harness: the weights take one
optimizer step per batch on the summed task losses (released: one step per task, each on its own
path); the weight optimizer is the recipe's (released: Adam 1e-3, wd 1e-4); incomplete last
batches are used (released ``drop_last=True``).

:math:`E` comes from :meth:`bind_schedule` (the trainer's epoch count) or the ``epochs`` option.

Logs per step: ``tau``, ``warmup`` (1 in warm-up epochs), ``resource`` (:math:`R` at the current
:math:`\alpha`, in its unit, once known), ``arch_loss`` (mean over the epoch's architecture steps),
``task_weights`` (ones).
"""
from __future__ import annotations

import weakref
from collections import defaultdict
from typing import Any, ClassVar

import torch
from torch import nn

from ..methods.base import Weighting
from .bmtas_resource import ESTIMATORS, BranchingResource

__all__ = ["BMTASSearch", "temperature"]


def temperature(epoch: int, n_epochs: int, warmup_epochs: int, tau_start: float = 5.0,
                tau_end: float = 0.1) -> float:
    """The released linear schedule at 0-based ``epoch`` (a single search epoch samples at ``tau_start``)."""
    e, d = epoch + 1, warmup_epochs
    span = n_epochs - d - 1
    if span <= 0:
        return float(tau_start)
    return float(min(tau_start - (e - d - 1) / span * (tau_start - tau_end), tau_start))


class BMTASSearch(Weighting):
    name: ClassVar[str] = "bmtas_search"
    needs_validation_batches: ClassVar[bool] = True
    not_separable_because: ClassVar[str] = "it samples one supergraph path per task and steps the architecture between"
    version: ClassVar[int] = 1

    def __init__(self, n_tasks: int, resource_weight: float = 0.05, resource: str = "flops",
                 resource_normalise: bool = False, resource_per_task: bool = True, estimator: str = "released",
                 arch_lr: float = 0.01, arch_weight_decay: float = 5e-5, arch_update: str = "epoch",
                 arch_steps_per_epoch: int | None = None, warmup_epochs: int | None = None,
                 tau_start: float = 5.0, tau_end: float = 0.1, epochs: int | None = None,
                 reset_optimizers: bool = True, **kwargs: Any):
        super().__init__(n_tasks, **kwargs)
        if resource not in ("flops", "params"):
            raise ValueError(f"bmtas_search: resource {resource!r} is not 'flops' or 'params'")
        if estimator not in ESTIMATORS:
            raise ValueError(f"bmtas_search: estimator {estimator!r} is not one of {ESTIMATORS}")
        if arch_update not in ("epoch", "step"):
            raise ValueError(f"bmtas_search: arch_update {arch_update!r} is not 'epoch' or 'step'")
        self.resource_weight, self.resource = float(resource_weight), resource
        self.resource_normalise, self.resource_per_task = bool(resource_normalise), bool(resource_per_task)
        self.estimator, self.arch_update = estimator, arch_update
        self.arch_lr, self.arch_weight_decay = float(arch_lr), float(arch_weight_decay)
        self.arch_steps_per_epoch = None if arch_steps_per_epoch is None else int(arch_steps_per_epoch)
        self.warmup_epochs = None if warmup_epochs is None else int(warmup_epochs)
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)
        self.epochs = None if epochs is None else int(epochs)
        self.reset_optimizers = bool(reset_optimizers)
        self._bound_epochs: int | None = None
        self._model: weakref.ref | None = None
        self._arch_opt: torch.optim.Optimizer | None = None
        self._weight_opt: torch.optim.Optimizer | None = None
        self._task_loss = None
        self._box: dict[str, Any] = {}      # the resource module (not a submodule: built lazily)
        self._searching, self._tau = False, float(tau_start)
        self._arch_loss: torch.Tensor | None = None

    # --- wiring ------------------------------------------------------------------------------
    @staticmethod
    def _require_supernet(model: nn.Module) -> None:
        if not all(hasattr(model, a) for a in ("arch_parameters", "set_search_state", "module_costs")):
            raise ValueError(f"bmtas_search searches a bmtas_supernet model; got {type(model).__name__} "
                             f"(recipe: sharing bmtas_supernet)")

    def model_parameters_it_steps(self, model: nn.Module) -> list[nn.Parameter]:
        self._require_supernet(model)
        self._model = weakref.ref(model)
        arch = list(model.arch_parameters())
        self._arch_opt = torch.optim.Adam(arch, lr=self.arch_lr, weight_decay=self.arch_weight_decay)
        return arch

    def bind_training(self, task_loss, optimizer=None) -> None:
        self._task_loss, self._weight_opt = task_loss, optimizer

    def bind_schedule(self, n_epochs: int, steps_per_epoch: int | None = None) -> None:
        """The run's epoch count (the temperature schedule and the warm-up are defined over it)."""
        self._bound_epochs = int(n_epochs)

    def get_extra_state(self) -> dict:
        return {"arch_optimizer": self._arch_opt.state_dict() if self._arch_opt is not None else None}

    def set_extra_state(self, state: dict) -> None:
        if state.get("arch_optimizer") is not None and self._arch_opt is not None:
            self._arch_opt.load_state_dict(state["arch_optimizer"])

    # --- schedule ----------------------------------------------------------------------------
    def n_epochs(self) -> int:
        n = self.epochs if self.epochs is not None else self._bound_epochs
        if n is None:
            raise RuntimeError("bmtas_search needs the run's number of epochs for its temperature schedule: "
                               "weighting_kwargs.epochs, or a trainer that calls bind_schedule(n_epochs)")
        return n

    def n_warmup(self) -> int:
        return self.n_epochs() // 20 if self.warmup_epochs is None else self.warmup_epochs

    def on_epoch_start(self, epoch: int) -> None:
        model = self._bound_model()
        warm = epoch < self.n_warmup()
        self._tau = temperature(epoch, self.n_epochs(), self.n_warmup(), self.tau_start, self.tau_end)
        model.set_search_state(warm, self._tau)
        self._searching = not warm
        self._arch_loss = None
        if self._searching and self.arch_update == "epoch":
            self._architecture_pass(model)

    def _bound_model(self) -> nn.Module:
        model = self._model() if self._model is not None else None
        if model is None or self._arch_opt is None or self._task_loss is None:
            raise RuntimeError("bmtas_search: the trainer did not bind the model and the task loss")
        return model

    # --- the architecture updates ------------------------------------------------------------
    def resource_module(self, model: nn.Module, input_shape) -> BranchingResource:
        if "resource" not in self._box:
            costs = model.module_costs(self.resource, tuple(input_shape))
            if self.resource_normalise:
                costs = costs / costs.sum()
            self._box["resource"] = BranchingResource(self.n_tasks, costs, self.estimator).to(model.alpha.device)
        return self._box["resource"]

    def _val_batches_per_epoch(self) -> int:
        if self.arch_steps_per_epoch is not None:
            return self.arch_steps_per_epoch
        n = getattr(getattr(self._next_validation_batch, "__self__", None), "n_batches", None)
        if n is None:
            raise RuntimeError("bmtas_search: one pass over the search-validation split needs its size; "
                               "set search_val_fraction in the recipe or weighting_kwargs.arch_steps_per_epoch")
        return int(n)

    def _architecture_pass(self, model: nn.Module) -> None:
        if self.reset_optimizers:
            self._arch_opt.state = defaultdict(dict)
        model.set_bn_tracking(False)
        losses = [self._architecture_step(model) for _ in range(self._val_batches_per_epoch())]
        self._arch_loss = torch.stack(losses).mean()
        if self.reset_optimizers and self._weight_opt is not None:
            self._weight_opt.state = defaultdict(dict)
        model.set_bn_tracking(True, reset=True)

    def _architecture_step(self, model: nn.Module) -> torch.Tensor:
        """One :math:`\\alpha` step on the next search-validation batch; returns its loss."""
        x, targets = self.validation_batch()
        alpha = model.alpha
        res = self.resource_module(model, x.shape[1:])
        grad = torch.zeros_like(alpha)
        total = torch.zeros((), device=alpha.device)
        for t in range(self.n_tasks):
            loss = self._task_loss(t, model.forward_task(x, t), targets[t])
            if self.resource_per_task:
                loss = loss + self.resource_weight * res(alpha).to(loss.dtype)
            grad = grad + torch.autograd.grad(loss, [alpha])[0]
            total = total + loss.detach()
        if not self.resource_per_task:
            r = self.resource_weight * res(alpha)
            grad = grad + torch.autograd.grad(r, [alpha])[0].to(grad.dtype)
            total = total + r.detach().to(total.dtype)
        alpha.grad = grad
        self._arch_opt.step()
        alpha.grad = None
        return total

    def before_step(self, model: nn.Module) -> None:
        """``arch_update="step"``: one :math:`\\alpha` step before the weight step (search epochs)."""
        if not (self._searching and self.arch_update == "step"):
            return
        model.set_bn_tracking(False)
        self._arch_loss = self._architecture_step(model)
        model.set_bn_tracking(True)

    # --- the weight step ---------------------------------------------------------------------
    def backward(self, losses: torch.Tensor, model: nn.Module | None = None,
                 z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self._check_losses(losses)
        self._require_supernet(model)
        arch = {id(p) for p in model.arch_parameters()}
        total = losses.sum()
        params = [p for p in model.parameters() if p.requires_grad and id(p) not in arch]
        for p, g in zip(params, torch.autograd.grad(total, params, allow_unused=True)):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        dev = losses.device
        logs = {"task_weights": torch.ones(self.n_tasks, device=dev), "total_loss": total.detach(),
                "tau": torch.tensor(self._tau, device=dev),
                "warmup": torch.tensor(float(not self._searching), device=dev)}
        if "resource" in self._box:
            with torch.no_grad():
                logs["resource"] = self._box["resource"](model.alpha).detach()
        if self._arch_loss is not None:
            logs["arch_loss"] = self._arch_loss
        return logs

    def extra_repr(self) -> str:
        return (f"n_tasks={self.n_tasks}, resource={self.resource!r}, resource_weight={self.resource_weight}, "
                f"estimator={self.estimator!r}, arch_update={self.arch_update!r}, arch_lr={self.arch_lr}")
