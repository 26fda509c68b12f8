r"""CoNAL-Pro (Yue, Zhang & Liang, AAAI 2023, Sec. 2.4): CoNAL's search run progressively, one
branch module per stage from the last, as the weighting ``conal_pro_search`` on the
``conal_pro_supernet`` model.

**Schedule** (epoch-based): stage :math:`s = \min(\lfloor e / E \rfloor, M - 1)` in epoch ``e``
with ``E = epochs_per_stage``; at the start of every epoch (:meth:`on_epoch_start`, and again in
:meth:`before_step`, idempotent) the model closes the stages before ``s``
(:meth:`~mtlrepro.models.sharing.conal_pro_supernet.CoNALProSupernet.advance_to`: argmax of each
closed stage's logits; tasks choosing the shared module leave the search as one subgroup). A run of
``M * E`` epochs searches every module; the last stage is decided by the export. ``E = 2`` by
default: the released CoNAL search's 10-epoch budget split evenly over the 5 ResNet modules
(CoNAL-Pro's schedule is in the paper's appendix, which is not in the text, and the released code
has no CoNAL-Pro: a choice, a parameter).

Every training step of stage ``s`` (module :math:`k = M-1-s` under decision), with
:math:`S` the tasks still searching:

1. **Architecture step** (first-order, as CoNAL's): on the next search-validation batch,
   :math:`\alpha^{(s)} \leftarrow \mathrm{Adam}(\nabla_{\alpha^{(s)}} \sum_{t \in S} L_t^{val})` (released
   CoNAL values: Adam 5e-5, weight decay 1e-5). Only the current stage's logits get a gradient;
   the others keep no Adam state.
2. **Weight step**: the gradient of :math:`\sum_{t \in S} L_t`; with conflict noticing, Eq. 5
   restricted to the module under decision (the paper: "only the gradient conflict of the last
   all-share module needs to be calculated"): when some pair :math:`i, j \in S` has
   :math:`\cos(\mathrm{grad}_i^{(k)}, \mathrm{grad}_j^{(k)}) < 0`, the trunk module ``k`` and the
   shared modules after it in this stage's space (the group chain :math:`H_s`) get no update;
   earlier trunk modules are not checked. The tasks that left the search are not trained
   (``train_allocated: false``, default: "only tasks that use purely-specific modules are
   included in the search space", and a removed subgroup then no longer drives the shared
   encoder, the imbalance Sec. 2.4 names); ``true`` adds their summed loss gradient unchanged.
   Gradients are taken w.r.t. the modules these tasks' forward runs only
   (:meth:`~mtlrepro.models.sharing.conal_pro_supernet.CoNALProSupernet.path_parameters`): every
   other module keeps ``grad = None``, so Adam neither moves it by momentum nor decays it.

Search memory: the harness needs every module in the model from the start (the trainer builds the
optimizer once), so the supernet holds more than CoNAL's (CelebA-9, ResNet-18: 152.8M vs 111.8M);
what a stage runs is smaller (stage 1 with all 9 tasks searching: 86.7M, growing by each own
module the searching tasks add and shrinking with every subgroup that leaves), which is the
paper's saving when modules are created on demand.

Logs per step: ``stage`` (1-based, the paper's numbering), ``searching`` (|S|), ``frozen``
(1 when Eq. 5 zeroed the module), ``branch_probabilities`` ``(T, 2)`` (shared, own) of the
current stage, ``val_loss``, ``task_weights`` (1 for the tasks trained, 0 else).
"""
from __future__ import annotations

import weakref
from typing import Any, ClassVar

import torch
from torch import nn

from ..methods.base import Weighting

__all__ = ["CoNALProSearch"]


class CoNALProSearch(Weighting):
    name: ClassVar[str] = "conal_pro_search"
    needs_validation_batches: ClassVar[bool] = True
    not_separable_because: ClassVar[str] = "its conflict noticing compares every task's gradient at one point"
    version: ClassVar[int] = 1

    def __init__(self, n_tasks: int, epochs_per_stage: int = 2, conflict_noticing: bool = True,
                 arch_lr: float = 5e-5, arch_weight_decay: float = 1e-5, train_allocated: bool = False,
                 **kwargs: Any):
        super().__init__(n_tasks, **kwargs)
        if int(epochs_per_stage) < 1:
            raise ValueError(f"conal_pro_search: epochs_per_stage must be >= 1, got {epochs_per_stage}")
        self.epochs_per_stage = int(epochs_per_stage)
        self.conflict_noticing, self.train_allocated = bool(conflict_noticing), bool(train_allocated)
        self.arch_lr, self.arch_weight_decay = float(arch_lr), float(arch_weight_decay)
        self._arch_opt: torch.optim.Optimizer | None = None
        self._task_loss = None
        self._val_loss: torch.Tensor | None = None
        self._epoch = 0
        self._model_ref = None

    # --- wiring ----------------------------------------------------------------------------
    @staticmethod
    def _require_supernet(model: nn.Module) -> None:
        if not hasattr(model, "advance_to") or not hasattr(model, "decision_module_parameters"):
            raise ValueError(f"conal_pro_search searches a conal_pro_supernet model; got {type(model).__name__} "
                             f"(recipe: sharing conal_pro_supernet)")

    def model_parameters_it_steps(self, model: nn.Module) -> list[nn.Parameter]:
        self._require_supernet(model)
        self._model_ref = weakref.ref(model)      # not a submodule: the model stays out of this state_dict
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

    # --- the schedule ------------------------------------------------------------------------
    def stage_for_epoch(self, epoch: int) -> int:
        """0-based stage of epoch ``epoch`` (the model caps it at ``M - 1``)."""
        return int(epoch) // self.epochs_per_stage

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = int(epoch)
        model = self._model_ref() if self._model_ref is not None else None
        if model is not None:
            model.advance_to(self.stage_for_epoch(epoch))

    def _sync(self, model: nn.Module) -> None:
        model.advance_to(self.stage_for_epoch(self._epoch))

    # --- the two steps -----------------------------------------------------------------------
    def before_step(self, model: nn.Module) -> None:
        """The architecture step on the next search-validation batch (current stage's logits)."""
        if self._arch_opt is None or self._task_loss is None:
            raise RuntimeError("conal_pro_search: the trainer did not bind the model and the task loss")
        self._sync(model)
        search = model.searching_tasks()
        if not search:
            self._val_loss = None
            return
        x, targets = self.validation_batch()
        alpha = model.alpha[model.stage_state()[0]]
        outs = model(x)
        loss = sum(self._task_loss(t, outs[t], targets[t]) for t in search)
        (g,) = torch.autograd.grad(loss, [alpha])
        alpha.grad = g
        self._arch_opt.step()
        alpha.grad = None
        self._val_loss = loss.detach()

    def backward(self, losses: torch.Tensor, model: nn.Module | None = None,
                 z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self._check_losses(losses)
        self._require_supernet(model)
        self._sync(model)
        dev = losses.device
        search = model.searching_tasks()
        allocated = [t for t in range(self.n_tasks) if t not in search]
        frozen = torch.zeros((), dtype=torch.bool, device=dev)
        if self.conflict_noticing and len(search) > 1:
            from ..conflicts import SharedModule, batch_conflicts
            block = SharedModule("decision", tuple(p for p in model.decision_module_parameters() if p.requires_grad))
            negative, _, _ = batch_conflicts(losses[search], [block])
            frozen = negative.any()
        weights = torch.zeros(self.n_tasks, device=dev)
        parts = []
        if search:
            zero = set()
            if bool(frozen):   # Eq. 5 on module k: it and the shared modules after it get no update
                zero = {id(p) for p in [*model.decision_module_parameters(), *model.successor_shared_parameters()]}
            parts.append((search, zero))
        if self.train_allocated and allocated:
            parts.append((allocated, set()))
        for i, (tasks, zero) in enumerate(parts):
            weights[tasks] = 1.0
            params = model.path_parameters(tasks)     # only what these tasks' forward ran (no zero grads)
            grads = torch.autograd.grad(losses[tasks].sum(), params, allow_unused=True,
                                        retain_graph=i + 1 < len(parts))
            for p, g in zip(params, grads):
                if g is None or id(p) in zero:
                    continue
                p.grad = g if p.grad is None else p.grad + g
        s = model.stage_state()[0]
        logs = {"task_weights": weights, "total_loss": (weights * losses.detach()).sum(),
                "stage": torch.tensor(float(s + 1), device=dev),
                "searching": torch.tensor(float(len(search)), device=dev),
                "frozen": frozen.to(torch.float32),
                "branch_probabilities": model.branch_probabilities().detach()}
        if self._val_loss is not None:
            logs["val_loss"] = self._val_loss
        return logs

    def extra_repr(self) -> str:
        return (f"n_tasks={self.n_tasks}, epochs_per_stage={self.epochs_per_stage}, "
                f"conflict_noticing={self.conflict_noticing}, train_allocated={self.train_allocated}, "
                f"arch_lr={self.arch_lr}, arch_weight_decay={self.arch_weight_decay}")
