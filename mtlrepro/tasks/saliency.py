r"""Saliency (Vandenhende et al.'s PASCAL ``sal`` task): BCE on logits, balanced per batch.

The repo trains saliency with ``BalancedCrossEntropyLoss(size_average=True)`` and no
``pos_weight`` (``utils/common_config.py``, ``get_loss``): the positive weight is the batch's
fraction of negative pixels, :math:`w = N_- / N`, so

.. math:: L = \frac{1}{N}\Big(w \sum_{y_i=1} \operatorname{softplus}(-x_i)
          + (1 - w) \sum_{y_i=0} \operatorname{softplus}(x_i)\Big)

over every pixel of the batch (:func:`mtlrepro.tasks.edge.balanced_bce_with_logits` with
``pos_weight=None``); GatedMTL's appendix calls it "binary cross-entropy ... similar to
Vandenhende et al.". The target is the distilled saliency thresholded at 0.5 (0 / 1, no ignore).

Metric keys: ``miou_best_threshold`` and ``maxf`` over the split
(:class:`mtlrepro.metrics.saliency.SaliencyMeter`).
"""
from __future__ import annotations

import torch

from .base import TaskKind, register
from .edge import as_map, balanced_bce_with_logits


def saliency_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return balanced_bce_with_logits(out, target, pos_weight=None)


register(TaskKind(
    name="saliency", loss=lambda out, target, task: saliency_loss(out, target),
    batch_target=lambda task, stored: as_map(stored),
    metric_keys={"split": ("miou_best_threshold", "maxf")},
    description="binary saliency map, one logit per pixel (BCE balanced by the batch's negatives)"))

__all__ = ["saliency_loss"]
