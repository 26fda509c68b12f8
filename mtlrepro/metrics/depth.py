"""Streaming masked depth-error metrics (Cityscapes / NYUv2 depth).

Shared conventions (NaN + ``EmptyMetricWarning`` when nothing valid was seen,
no host syncs in ``update``) are described in
:mod:`mtlrepro.metrics.classification`. Depth errors are in the units of the
depth maps, **not** percentages.
"""

from __future__ import annotations

import math

import torch

from .classification import _warn_empty
from .maps import flatten_single_channel
from .segmentation import _acc_float

__all__ = ["DepthErrors"]


_flatten_depth = flatten_single_channel   # (B, 1, H, W) or (B, H, W) -> (B, H*W)


class DepthErrors:
    r"""Absolute / relative depth error over valid pixels, plus RMSE.

    A pixel is *valid* iff ``target != invalid_value`` (default 0: MTAN's
    preprocessed Cityscapes/NYUv2 depth marks missing depth with 0; MTAN tests
    ``sum over the channel dim != 0``, identical for 1-channel depth). With
    :math:`V` the valid pixels, :math:`p` the prediction and :math:`g` the
    target:

    .. math::
        \mathrm{abs\_err}(V) = \frac{1}{|V|}\sum_{x\in V} |p_x - g_x|,\qquad
        \mathrm{rel\_err}(V) = \frac{1}{|V|}\sum_{x\in V} \frac{|p_x - g_x|}{g_x}

    ``averaging`` decides which :math:`V`:

    * ``"batch"`` (MTAN, ``depth_error`` averaged as ``avg_cost += cost /
      test_batch``): :math:`V_b` = valid pixels of batch :math:`b` (one
      ``update`` call); the per-batch values are averaged over batches,
      **unweighted** - a small last batch weighs as much as a full one, and a
      batch with few valid pixels as much as one with many. A batch with no
      valid pixel is skipped (MTAN would produce NaN).
    * ``"pooled"``: :math:`V` = all valid pixels of the split.

    ``rmse`` = :math:`\sqrt{\frac{1}{|V|}\sum (p - g)^2}` is always pooled over
    the split (Vandenhende et al.'s NYUD convention), whatever ``averaging``.

    ``update(pred, target)``: (B, 1, H, W) or (B, H, W) each (MTAN's depth
    ``.npy`` is H x W x 1, so its loader yields (B, 1, H, W)). Keys
    ``abs_err``, ``rel_err``, ``rmse``; all NaN (with a warning) if no valid
    pixel was seen.

    Example:
        >>> m = DepthErrors(averaging="pooled")
        >>> m.update(torch.tensor([[[1., 3.], [5., 9.]]]), torch.tensor([[[2., 0.], [4., 8.]]]))
        >>> {k: round(v, 4) for k, v in m.compute().items()}   # valid: 2, 4, 8 -> |err| 1, 1, 1
        {'abs_err': 1.0, 'rel_err': 0.2917, 'rmse': 1.0}
    """

    def __init__(self, averaging: str = "batch", invalid_value: float = 0.0) -> None:
        if averaging not in ("batch", "pooled"):
            raise ValueError("averaging must be 'batch' or 'pooled'")
        self.averaging = averaging
        self.invalid_value = float(invalid_value)
        self.reset()

    def reset(self) -> None:
        # index 0: abs, 1: rel, 2: squared error
        self._sum: torch.Tensor | None = None  # pooled sums (3,)
        self._n: torch.Tensor | None = None  # pooled valid-pixel count
        self._batch_sum: torch.Tensor | None = None  # sum of per-batch (abs, rel) means (2,)
        self._n_batches: torch.Tensor | None = None  # batches with >= 1 valid pixel

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p = _flatten_depth(pred.detach(), "pred")
        g = _flatten_depth(target.detach(), "target").to(p.device)
        if p.shape != g.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        fdt = _acc_float(p.device)
        valid = g != self.invalid_value
        p, g = p.to(fdt), g.to(fdt)
        err = (p - g).abs()
        # where() (not multiplication) so that inf/NaN at invalid pixels cannot leak in
        zero = torch.zeros((), dtype=fdt, device=p.device)
        abs_e = torch.where(valid, err, zero)
        rel_e = torch.where(valid, err / torch.where(valid, g, torch.ones_like(g)), zero)
        sums = torch.stack([abs_e.sum(), rel_e.sum(), (abs_e * abs_e).sum()])
        n = valid.sum()
        if self._sum is None:
            self._sum = torch.zeros(3, dtype=fdt, device=p.device)
            self._n = torch.zeros((), dtype=torch.int64, device=p.device)
            self._batch_sum = torch.zeros(2, dtype=fdt, device=p.device)
            self._n_batches = torch.zeros((), dtype=torch.int64, device=p.device)
        self._sum += sums
        self._n += n
        has = n > 0
        self._batch_sum += torch.where(has, sums[:2] / n.clamp(min=1).to(fdt), zero)
        self._n_batches += has.to(torch.int64)

    def compute(self) -> dict[str, float]:
        """``{"abs_err", "rel_err", "rmse"}`` (depth units, not percent)."""
        n = 0 if self._n is None else int(self._n.cpu())
        if n == 0:
            _warn_empty(type(self).__name__)
            return {"abs_err": float("nan"), "rel_err": float("nan"), "rmse": float("nan")}
        s = self._sum.cpu().double().tolist()
        if self.averaging == "batch":
            nb = int(self._n_batches.cpu())
            abs_err, rel_err = (v / nb for v in self._batch_sum.cpu().double().tolist())
        else:
            abs_err, rel_err = s[0] / n, s[1] / n
        return {"abs_err": abs_err, "rel_err": rel_err, "rmse": math.sqrt(s[2] / n)}
