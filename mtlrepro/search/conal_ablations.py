r"""CoNAL Table 4's "w/o conflict-notice and pure" ablation: CoNAL's architecture learning with
its purely-specific modules replaced by partially-specific ones (Yue, Zhang & Liang, AAAI 2023,
Sec. 3.2; the search space of LTB, Fig. 1a, where a module may be shared by any subset of tasks)
and no conflict noticing.

The method ``conal_partial_search`` on the ``ltb_supernet`` model: LTB's supergraph and its
parent-choice sampling (:mod:`mtlrepro.search.ltb`: Gumbel-softmax warm-up and temperature
schedule), trained as CoNAL trains (:mod:`mtlrepro.search.conal`, Algorithm 1): every step first
an **architecture step** on the next held-out batch (first-order; only the parent logits move,
with their own Adam, CoNAL's released 5e-5 / weight decay 1e-5), then the **weight step** on the
training batch with the plain sum of the task losses (the logits' gradient from it is dropped).
The paper gives no more detail for this variant: the combination is a reading of its sentence,
written here and in the recipe.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .conal import take_arch_step
from .ltb import LTBSearch

__all__ = ["CoNALPartialSearch"]


class CoNALPartialSearch(LTBSearch):
    name: ClassVar[str] = "conal_partial_search"
    needs_validation_batches: ClassVar[bool] = True
    version: ClassVar[int] = 1

    def __init__(self, n_tasks: int, arch_lr: float = 5e-5, arch_weight_decay: float = 1e-5, **kwargs: Any):
        super().__init__(n_tasks, arch_lr=arch_lr, arch_weight_decay=arch_weight_decay, **kwargs)
        self._task_loss = None

    def bind_training(self, task_loss, optimizer=None) -> None:
        self._task_loss = task_loss

    def before_step(self, model: nn.Module) -> None:
        """LTB's phase for this epoch, then CoNAL's architecture step on a held-out batch."""
        super().before_step(model)
        if self._arch_opt is None or self._task_loss is None:
            raise RuntimeError("conal_partial_search: the trainer did not bind the model and the task loss")
        x, targets = self.validation_batch()
        take_arch_step(self._arch_opt, sum(self._task_loss(t, o, y) for t, (o, y) in enumerate(zip(model(x), targets))))

    def backward(self, losses: torch.Tensor, model: nn.Module | None = None,
                 z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The weight step: the plain sum; the logits keep no gradient from the training batch."""
        self._check_losses(losses)
        self._require_supernet(model)
        arch = {id(p) for p in model.arch_parameters()}
        params = [p for p in model.parameters() if p.requires_grad and id(p) not in arch]
        total = losses.sum()
        for p, g in zip(params, torch.autograd.grad(total, params, allow_unused=True)):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        dev = losses.device
        return {"task_weights": torch.ones(self.n_tasks, device=dev), "total_loss": total.detach(),
                "tau": torch.tensor(self._tau, device=dev), "warmup": torch.tensor(float(self._warmup), device=dev),
                "branch_probabilities": model.branch_probabilities().detach()}
