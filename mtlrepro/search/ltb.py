r"""LTB's search (Guo, Lee & Ulbricht, "Learning to Branch for Multi-Task Learning", ICML 2020) as a
method of the harness: the weighting ``ltb_search`` on the ``ltb_supernet`` model.

LTB is not bilevel: the branching logits :math:`\alpha` and the weights are trained **jointly on
the training loss** :math:`\sum_t L_t` (equal, fixed task weights: CoNAL Table 4 calls them "the
same fixed weights as in LTB"), the logits through the straight-through Gumbel-softmax samples of
the supernet's forward. So the method needs no validation batches (run it with
``search_val_fraction: 0``: it trains on the whole training split).

Facts from LibMTL's ``LibMTL/architecture/LTB.py`` (the implementation CoNAL's group wrote):
``alpha`` is a parameter of the model, so the one Adam optimizer of the run steps it with the
weights (same lr, weight decay and lr schedule): ``arch_lr=None`` here (the default) leaves it in
the model's optimizer; a float gives it its own Adam (``arch_lr``, ``arch_weight_decay``), stepped
at the end of :meth:`backward` (not clipped by ``grad_clip``). The schedule, per epoch ``e``:

* warm-up for ``epoch < epochs / 100`` (LibMTL): every child sums all its parents, no sampling;
* then hard Gumbel-softmax at :math:`\tau_e = (\mathrm{epochs} / 20) / \sqrt{e + 1}` (LibMTL:
  10 at epoch 0 of 200, 0.71 at the last; the decay counts from epoch 0, not from the warm-up's
  end).

Here as parameters, since the method does not know the run's length: ``tau0`` (LibMTL:
``epochs / 20``) and ``warmup_epochs`` (LibMTL: ``ceil(epochs / 100)``); for 200 epochs 10 and 2.
:meth:`on_epoch_start` computes the epoch's phase, :meth:`before_step` hands it to the model.

The paper's procedure is search, then retrain (its own text: hours "to search the architecture"
and hours "to obtain the optimal weights"): the trainer stores the supernet's discretised tree
(:meth:`~mtlrepro.models.sharing.ltb_supernet.LTBSupernet.export_architecture`) and a ``branched``
recipe with ``architecture_from`` retrains it.

Logs per step: ``task_weights`` (ones), ``total_loss``, ``tau``, ``warmup`` (1 during warm-up),
``branch_probabilities`` ``(M + 1, T, T)`` (softmax of alpha over the parents).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from ..methods.base import Weighting

__all__ = ["LTBSearch", "ltb_temperature"]


def ltb_temperature(epoch: int, tau0: float) -> float:
    r"""LibMTL's :math:`\tau_e = \tau_0 / \sqrt{e + 1}` (``epoch`` 0-based)."""
    return float(tau0) / math.sqrt(epoch + 1)


class LTBSearch(Weighting):
    name: ClassVar[str] = "ltb_search"
    not_separable_because: ClassVar[str] = ("it searches the ltb_supernet, whose forward computes every "
                                            "task at once (update joint)")
    version: ClassVar[int] = 1

    def __init__(self, n_tasks: int, tau0: float = 10.0, warmup_epochs: int = 2, arch_lr: float | None = None,
                 arch_weight_decay: float = 0.0, **kwargs: Any):
        super().__init__(n_tasks, **kwargs)
        if tau0 <= 0 or warmup_epochs < 0:
            raise ValueError(f"ltb_search: tau0 must be > 0 and warmup_epochs >= 0, got {tau0}, {warmup_epochs}")
        self.tau0, self.warmup_epochs = float(tau0), int(warmup_epochs)
        self.arch_lr = None if arch_lr is None else float(arch_lr)
        self.arch_weight_decay = float(arch_weight_decay)
        self._arch_opt: torch.optim.Optimizer | None = None
        self._warmup, self._tau = self.warmup_epochs > 0, ltb_temperature(0, self.tau0)

    # --- wiring ----------------------------------------------------------------------------
    @staticmethod
    def _require_supernet(model: nn.Module | None) -> None:
        if model is None or not hasattr(model, "arch_parameters") or not hasattr(model, "set_search_phase"):
            raise ValueError(f"ltb_search searches an ltb_supernet model; got {type(model).__name__} "
                             f"(recipe: sharing ltb_supernet)")

    def model_parameters_it_steps(self, model: nn.Module) -> list[nn.Parameter]:
        """Nothing (alpha trains in the model's optimizer, as LibMTL), or alpha with its own Adam."""
        self._require_supernet(model)
        if self.arch_lr is None:
            return []
        arch = list(model.arch_parameters())
        self._arch_opt = torch.optim.Adam(arch, lr=self.arch_lr, weight_decay=self.arch_weight_decay)
        return arch

    def get_extra_state(self) -> dict:
        return {"arch_optimizer": self._arch_opt.state_dict() if self._arch_opt is not None else None}

    def set_extra_state(self, state: dict) -> None:
        if state.get("arch_optimizer") is not None and self._arch_opt is not None:
            self._arch_opt.load_state_dict(state["arch_optimizer"])

    # --- the schedule ------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self._warmup = epoch < self.warmup_epochs
        self._tau = ltb_temperature(epoch, self.tau0)

    def before_step(self, model: nn.Module) -> None:
        self._require_supernet(model)
        model.set_search_phase(warmup=self._warmup, tau=self._tau)

    # --- the joint step ------------------------------------------------------------------------
    def backward(self, losses: torch.Tensor, model: nn.Module | None = None,
                 z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self._check_losses(losses)
        self._require_supernet(model)
        total = losses.sum()
        total.backward()
        if self._arch_opt is not None:
            self._arch_opt.step()
            for g in self._arch_opt.param_groups:
                for p in g["params"]:
                    p.grad = None
        dev = losses.device
        return {"task_weights": torch.ones(self.n_tasks, device=dev), "total_loss": total.detach(),
                "tau": torch.tensor(self._tau, device=dev), "warmup": torch.tensor(float(self._warmup), device=dev),
                "branch_probabilities": model.branch_probabilities().detach()}

    def extra_repr(self) -> str:
        return (f"n_tasks={self.n_tasks}, tau0={self.tau0}, warmup_epochs={self.warmup_epochs}, "
                f"arch_lr={self.arch_lr}, arch_weight_decay={self.arch_weight_decay}")
