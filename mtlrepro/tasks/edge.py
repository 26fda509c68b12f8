r"""Edge detection (Vandenhende et al.'s PASCAL / NYUD ``edge`` task): class-balanced BCE on logits.

The repo's ``BalancedCrossEntropyLoss(size_average=True, pos_weight=0.95)``
(``losses/loss_functions.py``, the HED-style loss of ASTMT) on one logit map :math:`x` and a
0/1 target :math:`y` (``y = label >= 0.5``):

.. math::
    L = \frac{1}{N} \Big( w \sum_{y_i = 1} \operatorname{softplus}(-x_i)
        + (1 - w) \sum_{y_i = 0} \operatorname{softplus}(x_i) \Big)

with :math:`N` every pixel of the batch (``size_average`` divides by ``label.numel()``) and
:math:`w` = ``pos_weight`` = 0.95 (the configs' ``edge_w``). ``softplus(-x)`` / ``softplus(x)``
are the binary cross-entropies of a positive / negative pixel, which is what the repo's
``x (y - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0]))`` computes (negated) in a stable form.
With ``pos_weight=None`` the weight is the batch's fraction of negative pixels,
:math:`w = N_- / N` (HED's balancing; the repo's saliency loss, :mod:`mtlrepro.tasks.saliency`).
There is no ignore label (PASCAL's and NYUD's edge maps have none).

Metric key: ``edge_loss`` -- the same loss pooled over every pixel of the split
(:class:`mtlrepro.metrics.edge.EdgeLoss`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TaskKind, register

#: the configs' ``edge_w`` (configs/{pascal,nyud}/*: ``edge_w: 0.95``)
EDGE_POS_WEIGHT = 0.95


def balanced_bce_with_logits(out: torch.Tensor, target: torch.Tensor,
                             pos_weight: float | None = EDGE_POS_WEIGHT) -> torch.Tensor:
    """The repo's ``BalancedCrossEntropyLoss`` (size-averaged) of logits ``out`` vs ``target``."""
    if out.shape != target.shape:
        raise ValueError(f"output {tuple(out.shape)} and target {tuple(target.shape)} differ")
    y = (target >= 0.5).to(out.dtype)
    bce = F.binary_cross_entropy_with_logits(out, y, reduction="none")
    pos, neg = (bce * y).sum(), (bce * (1.0 - y)).sum()
    w = (1.0 - y).sum() / y.numel() if pos_weight is None else pos_weight
    return (w * pos + (1.0 - w) * neg) / y.numel()


def as_map(stored: torch.Tensor) -> torch.Tensor:
    """A stored (B, H, W) 0/1 map -> the (B, 1, H, W) float32 target of a 1-channel output."""
    return (stored if stored.dim() == 4 else stored.unsqueeze(1)).to(torch.float32)


register(TaskKind(
    name="edge", loss=lambda out, target, task: balanced_bce_with_logits(out, target, EDGE_POS_WEIGHT),
    batch_target=lambda task, stored: as_map(stored),
    metric_keys={"pooled": ("edge_loss",)},
    description="binary edge map, one logit per pixel (class-balanced BCE, positive weight 0.95)"))

__all__ = ["EDGE_POS_WEIGHT", "as_map", "balanced_bce_with_logits"]
