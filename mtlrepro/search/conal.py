r"""CoNAL's architecture search (Yue, Zhang & Liang, AAAI 2023, Algorithm 1) as a method of the
harness: the weighting ``conal_search`` on the ``conal_supernet`` model.

Every training step (the ``joint`` update):

1. **Architecture step** (upper level of problem (2), first-order): on the next search-validation
   batch, :math:`\alpha \leftarrow \mathrm{Adam}(\nabla_\alpha \sum_t L_t^{val})` with its own
   optimizer (released code: Adam lr 5e-5, weight decay 1e-5; the model stays in training mode,
   so BatchNorm statistics also see these batches, as in ``CoNAL/search.py``). Only ``alpha``
   receives this gradient.
2. **Weight step** (lower level): on the training batch, the task gradients
   :math:`\mathrm{grad}_t = \nabla_{\theta_S} L_t` (Eq. 4); with **conflict noticing** (Eq. 5) the
   gradient of shared module ``p`` is :math:`\sum_t \mathrm{grad}_t^{(p)}` when
   :math:`\cos(\mathrm{grad}_i^{(p')}, \mathrm{grad}_j^{(p')}) \ge 0` for every task pair and every
   :math:`p' \le p`, else 0: the first module with a conflicting pair and every later shared
   module get no update. Task encoders and heads get :math:`\nabla \sum_t L_t` always. The trainer
   then clips (recipe ``grad_clip``: 5 in the released search) and steps the model's optimizer.

``conflict_noticing`` is a switch: **the released scripts never call their conflict-noticing
routine** (``NOCLGrad.backward`` is defined, ``search.py`` calls plain ``backward``), so
``conflict_noticing: false`` is the released behaviour and ``true`` the paper's Eq. 5 (the
recipes say which they run). The released routine, when called, would zero only the conflicting
module and average instead of sum; Eq. 5 is implemented as printed.

A cosine is negative iff the dot product is (a zero gradient counts as no conflict, as the
released ``torch.dot(g_i, g_j) < 0`` test does). Per-task gradients come from the one engine
(:func:`mtlrepro.conflicts.batch_conflicts`, the same block cosines CoNAL Table 1 reports).

Logs per step: ``frozen`` ``(M,)`` (1 where Eq. 5 zeroed module ``p``: its epoch mean is the
fraction of steps), ``branch_probabilities`` ``(T, M+1)``, ``val_loss``, ``task_weights`` (ones).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..methods.base import Weighting

__all__ = ["CoNALSearch", "noticed_mask", "take_arch_step"]


def take_arch_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One first-order upper-level step: ``loss``'s gradient w.r.t. the optimizer's (architecture)
    parameters only (``torch.autograd.grad``: no weight's ``.grad`` is touched), a step, grads cleared.
    Parameters ``loss`` does not depend on get no gradient, so the optimizer leaves them as they are."""
    arch = [p for g in optimizer.param_groups for p in g["params"]]
    for p, g in zip(arch, torch.autograd.grad(loss, arch, allow_unused=True)):
        p.grad = g
    optimizer.step()
    for p in arch:
        p.grad = None


def noticed_mask(negative: torch.Tensor) -> torch.Tensor:
    """Eq. 5's zeroed modules from per-(module, pair) conflict flags ``(M, P)``: module ``p`` is
    zeroed when some pair conflicts at any ``p' <= p``. Returns a bool ``(M,)``."""
    conflicted = negative.any(dim=1)
    return torch.cumsum(conflicted.to(torch.int64), dim=0) > 0


class CoNALSearch(Weighting):
    name: ClassVar[str] = "conal_search"
    needs_validation_batches: ClassVar[bool] = True
    not_separable_because: ClassVar[str] = "its conflict noticing compares every task's gradient at one point"
    version: ClassVar[int] = 1

    def __init__(self, n_tasks: int, conflict_noticing: bool = True, arch_lr: float = 5e-5,
                 arch_weight_decay: float = 1e-5, **kwargs: Any):
        super().__init__(n_tasks, **kwargs)
        self.conflict_noticing = bool(conflict_noticing)
        self.arch_lr, self.arch_weight_decay = float(arch_lr), float(arch_weight_decay)
        self._arch_opt: torch.optim.Optimizer | None = None
        self._task_loss = None
        self._val_loss: torch.Tensor | None = None

    # --- wiring ----------------------------------------------------------------------------
    @staticmethod
    def _require_supernet(model: nn.Module) -> None:
        if not hasattr(model, "arch_parameters") or not hasattr(model, "shared_module_parameters"):
            raise ValueError(f"conal_search searches a conal_supernet model; got {type(model).__name__} "
                             f"(recipe: sharing conal_supernet)")

    def model_parameters_it_steps(self, model: nn.Module) -> list[nn.Parameter]:
        self._require_supernet(model)
        arch = list(model.arch_parameters())
        self._arch_opt = torch.optim.Adam(arch, lr=self.arch_lr, weight_decay=self.arch_weight_decay)
        return arch

    def bind_training(self, task_loss, optimizer=None) -> None:
        self._task_loss = task_loss

    def get_extra_state(self) -> dict:
        return {"arch_optimizer": self._arch_opt.state_dict() if self._arch_opt is not None else None}

    def set_extra_state(self, state: dict) -> None:
        if state.get("arch_optimizer") is not None and self._arch_opt is not None:
            self._arch_opt.load_state_dict(state["arch_optimizer"])

    # --- the two steps -----------------------------------------------------------------------
    def before_step(self, model: nn.Module) -> None:
        """The architecture step on the next search-validation batch."""
        if self._arch_opt is None or self._task_loss is None:
            raise RuntimeError("conal_search: the trainer did not bind the model and the task loss")
        x, targets = self.validation_batch()
        loss = sum(self._task_loss(t, o, y) for t, (o, y) in enumerate(zip(model(x), targets)))
        take_arch_step(self._arch_opt, loss)
        self._val_loss = loss.detach()

    def backward(self, losses: torch.Tensor, model: nn.Module | None = None,
                 z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self._check_losses(losses)
        self._require_supernet(model)
        blocks = model.shared_module_parameters()
        M = len(blocks)
        frozen = torch.zeros(M, dtype=torch.bool, device=losses.device)
        if self.conflict_noticing and self.n_tasks > 1:
            from ..conflicts import SharedModule, batch_conflicts
            modules = [SharedModule(f"module{k}", tuple(p for p in ps if p.requires_grad))
                       for k, ps in enumerate(blocks)]
            negative, _, _ = batch_conflicts(losses, modules)
            frozen = noticed_mask(negative)
        arch = {id(p) for p in model.arch_parameters()}
        total = losses.sum()
        params = [p for p in model.parameters() if p.requires_grad and id(p) not in arch]
        grads = torch.autograd.grad(total, params, allow_unused=True)
        zero = {id(p) for k in range(M) if frozen[k] for p in blocks[k]}
        for p, g in zip(params, grads):
            if g is None or id(p) in zero:
                continue
            p.grad = g if p.grad is None else p.grad + g
        logs = {"task_weights": torch.ones(self.n_tasks, device=losses.device), "total_loss": total.detach(),
                "frozen": frozen.to(torch.float32),
                "branch_probabilities": model.branch_probabilities().detach()}
        if self._val_loss is not None:
            logs["val_loss"] = self._val_loss
        return logs

    def extra_repr(self) -> str:
        return (f"n_tasks={self.n_tasks}, conflict_noticing={self.conflict_noticing}, "
                f"arch_lr={self.arch_lr}, arch_weight_decay={self.arch_weight_decay}")
