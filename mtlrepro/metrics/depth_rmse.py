r"""Depth RMSE and log-RMSE pooled over the valid pixels of a split (Vandenhende et al.'s NYUD).

Follows ``DepthMeter`` in ``evaluation/eval_depth.py`` of
``SimonVandenhende/Multi-Task-Learning-PyTorch``, GatedMTL's "Depth (rmse)": predictions are
clamped to at least ``1e-9`` (the repo's ``torch.clamp(pred, min=1e-9)``; its final evaluation
sets ``pred[pred <= 0] = 1e-9``), and over the valid pixels :math:`V` of the whole split
(target != 0; the repo's ``gt != 255`` after ``AddIgnoreRegions`` turned depth 0 into 255)

.. math:: \mathrm{rmse} = \sqrt{\tfrac{1}{|V|}\textstyle\sum_V (g - p)^2},\qquad
          \mathrm{log\_rmse} = \sqrt{\tfrac{1}{|V|}\textstyle\sum_V (\log g - \log p)^2}

(depth units, metres on NYUD). Both are pooled -- one sum over every valid pixel of the split,
not a mean of per-image or per-batch values. Sums are float64 on the device.
"""
from __future__ import annotations

import math

import torch

from .classification import _warn_empty
from .depth import _flatten_depth
from .segmentation import _acc_float

__all__ = ["DepthRMSE"]


class DepthRMSE:
    """Pooled ``rmse`` and ``log_rmse`` with predictions clamped to >= ``clamp_min``.

    Example:
        >>> m = DepthRMSE()
        >>> m.update(torch.tensor([[[1., 3.], [-2., 9.]]]), torch.tensor([[[2., 0.], [1., 8.]]]))
        >>> round(m.compute()["rmse"], 4)   # valid: (2, 1), (1, ~0), (8, 9): sqrt((1 + 1 + 1) / 3)
        1.0
    """

    def __init__(self, clamp_min: float = 1e-9, invalid_value: float = 0.0) -> None:
        self.clamp_min = float(clamp_min)
        self.invalid_value = float(invalid_value)
        self.reset()

    def reset(self) -> None:
        self._sum: torch.Tensor | None = None   # (squared error, squared log error)
        self._n: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p = _flatten_depth(pred.detach(), "pred")
        g = _flatten_depth(target.detach(), "target").to(p.device)
        if p.shape != g.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        fdt = _acc_float(p.device)
        valid = g != self.invalid_value
        p = p.to(fdt).clamp(min=self.clamp_min)
        g = torch.where(valid, g.to(fdt), torch.ones_like(p))   # finite logs at invalid pixels
        zero = torch.zeros((), dtype=fdt, device=p.device)
        se = torch.where(valid, (g - p) ** 2, zero).sum()
        sle = torch.where(valid, (torch.log(g) - torch.log(p)) ** 2, zero).sum()
        s = torch.stack([se, sle])
        self._sum = s if self._sum is None else self._sum + s
        n = valid.sum()
        self._n = n if self._n is None else self._n + n

    def compute(self) -> dict[str, float]:
        n = 0 if self._n is None else int(self._n.cpu())
        if n == 0:
            _warn_empty(type(self).__name__)
            return {"rmse": float("nan"), "log_rmse": float("nan")}
        se, sle = self._sum.cpu().double().tolist()
        return {"rmse": math.sqrt(se / n), "log_rmse": math.sqrt(sle / n)}
