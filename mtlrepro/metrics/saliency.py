r"""Saliency: the best mean Jaccard over thresholds, and the max F-measure (Vandenhende et al.).

Follows ``SaliencyMeter`` in ``evaluation/eval_sal.py`` of
``SimonVandenhende/Multi-Task-Learning-PyTorch`` (after ASTMT), the meter GatedMTL's "Saliency"
column reads. The prediction is :math:`s = \sigma(x)` (the repo's ``get_output``:
``255 sigmoid(x)``, divided by 255 by the meter); the target is binary. For each threshold
:math:`t \in` ``linspace(0.2, 0.9, 15)`` and image :math:`i`, with :math:`P = \{s > t\}` (strict)
and :math:`G` the positive target pixels:

.. math::
    J_i(t) = \frac{|P \cap G|}{|P \cup G|}\ (1 \text{ if both are empty}),\quad
    \mathrm{prec}_i(t) = \frac{TP}{TP + FP + 10^{-12}},\quad
    \mathrm{rec}_i(t) = \frac{TP}{TP + FN + 10^{-12}}

then means over the images of the split, :math:`\bar J(t)`, :math:`\bar P(t)`, :math:`\bar R(t)`,
:math:`F(t) = 2 \bar P \bar R / (\bar P + \bar R + 10^{-12})` (the F of the mean precision and
recall), and

* ``miou_best_threshold`` = :math:`100 \max_t \bar J(t)` (the repo's ``mIoU``, percent);
* ``maxf`` = :math:`100 \max_t F(t)` (the repo's ``maxF``, percent).

The maximum is over thresholds of split-level means: one threshold for the whole split, chosen
on the evaluated split itself, as the repo does. Per-image values and sums are kept in float64
on the device; ``update`` does no host sync.
"""
from __future__ import annotations

import numpy as np
import torch

from .classification import _warn_empty
from .maps import flatten_single_channel
from .segmentation import _acc_float

__all__ = ["SaliencyMeter", "SALIENCY_THRESHOLDS"]

#: the repo's ``np.linspace(0.2, 0.9, 15)``
SALIENCY_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.linspace(0.2, 0.9, 15))


_maps = flatten_single_channel


class SaliencyMeter:
    """Best-threshold mean Jaccard and max F over a split (see the module docstring).

    ``update(pred, target)``: ``pred`` logits (``from_logits=True``, default) or probabilities,
    (B, 1, H, W) or (B, H, W); ``target`` the same shape, positive iff > 0.5.

    Example:
        >>> m = SaliencyMeter(thresholds=(0.5,), from_logits=False)
        >>> m.update(torch.tensor([[[0.9, 0.9, 0.1, 0.1]]]), torch.tensor([[[1, 0, 1, 0]]]))
        >>> {k: round(v, 2) for k, v in m.compute().items()}   # J = 1/3, P = R = 1/2
        {'miou_best_threshold': 33.33, 'maxf': 50.0}
    """

    def __init__(self, thresholds: tuple[float, ...] = SALIENCY_THRESHOLDS, from_logits: bool = True) -> None:
        if not thresholds:
            raise ValueError("thresholds must not be empty")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.from_logits = bool(from_logits)
        self.reset()

    def reset(self) -> None:
        self._sums: torch.Tensor | None = None  # (3, T): sums over images of J, prec, rec
        self.n_images = 0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p = _maps(pred.detach(), "pred")
        g = _maps(target.detach(), "target").to(p.device) > 0.5
        if p.shape != g.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        p = p.float() if not p.is_floating_point() else p
        s = torch.sigmoid(p) if self.from_logits else p
        fdt = _acc_float(p.device)
        n_gt = g.sum(1).to(fdt)
        rows = []
        for t in self.thresholds:
            m = s > t
            tp = (m & g).sum(1).to(fdt)
            n_pred = m.sum(1).to(fdt)
            union = n_pred + n_gt - tp
            jac = torch.where(union > 0, tp / union.clamp(min=1), torch.ones_like(tp))
            prec = tp / (n_pred + 1e-12)         # TP + FP = predicted positives
            rec = tp / (n_gt + 1e-12)            # TP + FN = positives
            rows.append(torch.stack([jac.sum(), prec.sum(), rec.sum()]))
        sums = torch.stack(rows, 1)
        self._sums = sums if self._sums is None else self._sums + sums
        self.n_images += p.shape[0]

    def compute_per_threshold(self) -> dict[str, np.ndarray]:
        """``miou``, ``precision``, ``recall``, ``f`` per threshold (fractions, float64)."""
        if self._sums is None or self.n_images == 0:
            nan = np.full(len(self.thresholds), np.nan)
            return {"miou": nan, "precision": nan.copy(), "recall": nan.copy(), "f": nan.copy()}
        j, pr, rc = (self._sums.cpu().double().numpy() / self.n_images)
        return {"miou": j, "precision": pr, "recall": rc, "f": 2 * pr * rc / (pr + rc + 1e-12)}

    def compute(self) -> dict[str, float]:
        """``{"miou_best_threshold", "maxf"}`` in percent; NaN (with a warning) if empty."""
        if self._sums is None or self.n_images == 0:
            _warn_empty(type(self).__name__)
            return {"miou_best_threshold": float("nan"), "maxf": float("nan")}
        per = self.compute_per_threshold()
        return {"miou_best_threshold": 100.0 * float(per["miou"].max()),
                "maxf": 100.0 * float(per["f"].max())}
