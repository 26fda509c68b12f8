r"""The edge loss over a split: GatedMTL's "Edge" column read as the balanced BCE on logits.

GatedMTL prints "Edge ↓" values of about 0.017 for PASCAL-Context without naming the measure.
Vandenhende et al.'s code evaluates edges with the MATLAB seism toolbox (odsF, higher is
better) and, during training, with ``EdgeMeter`` (``evaluation/eval_edge.py``), which applies
``BalancedCrossEntropyLoss(pos_weight=0.95)`` to the *sigmoid* of the output as if it were a
logit -- a meter that cannot go below 0.0347 (REFERENCE). The values are consistent with the
training loss itself, the balanced BCE on the logits (:mod:`mtlrepro.tasks.edge`), pooled over
all pixels of the split as ``EdgeMeter`` pools (it weights each batch's size-averaged loss by
its number of pixels):

.. math:: \mathrm{edge\_loss} = \frac{1}{N} \sum_i \big(w\, y_i \operatorname{softplus}(-x_i)
          + (1 - w)(1 - y_i) \operatorname{softplus}(x_i)\big),\qquad w = 0.95

with :math:`N` every pixel of the split and :math:`y_i` = target >= 0.5. That reading is a
documented choice (``edge_loss`` in :mod:`mtlrepro.metrics.definitions`); ``pos_weight`` is a
parameter. Sums are float64 on the device; ``update`` does no host sync.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .classification import _warn_empty
from .segmentation import _acc_float

__all__ = ["EdgeLoss"]


class EdgeLoss:
    """Pooled balanced BCE of edge logits (see the module docstring); key ``edge_loss``.

    ``update(pred, target)``: logits and 0/1 targets of the same shape ((B, 1, H, W) or (B, H, W)).

    Example:
        >>> m = EdgeLoss()
        >>> m.update(torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 0.0]]]]))
        >>> round(m.compute()["edge_loss"], 6)   # (0.95 log 2 + 0.05 log 2) / 2
        0.346574
    """

    def __init__(self, pos_weight: float = 0.95) -> None:
        if not 0.0 <= pos_weight <= 1.0:
            raise ValueError("pos_weight must lie in [0, 1]")
        self.pos_weight = float(pos_weight)
        self.reset()

    def reset(self) -> None:
        self._sum: torch.Tensor | None = None
        self.n_pixels = 0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        x = pred.detach()
        x = x.float() if not x.is_floating_point() else x
        if target.shape != x.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        y = (target.detach().to(x.device) >= 0.5).to(x.dtype)
        bce = F.binary_cross_entropy_with_logits(x, y, reduction="none").to(_acc_float(x.device))
        y = y.to(bce.dtype)
        s = self.pos_weight * (bce * y).sum() + (1.0 - self.pos_weight) * (bce * (1.0 - y)).sum()
        self._sum = s if self._sum is None else self._sum + s
        self.n_pixels += y.numel()

    def compute(self) -> dict[str, float]:
        if self._sum is None or self.n_pixels == 0:
            _warn_empty(type(self).__name__)
            return {"edge_loss": float("nan")}
        return {"edge_loss": float(self._sum.cpu()) / self.n_pixels}
