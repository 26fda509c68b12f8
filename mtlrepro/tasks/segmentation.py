"""Segmentation tasks: multi-class (``seg``, MTAN) and one-vs-rest binary (``binary_seg``, Max Roaming).

* ``seg``: cross-entropy over pixels labelled != -1 (MTAN: ``nll_loss(log_softmax, ignore_index=-1)``);
  a batch without any labelled pixel gives 0 (MTAN: NaN), with no host sync either way.
* ``binary_seg``: sigmoid BCE over **all** pixels of class ``task.cls``; ignore pixels (-1) are
  negatives, as Max Roaming's one-hot encoding makes them
  (``F.binary_cross_entropy(sigmoid(out), mask)``).

Metric keys (:mod:`mtlrepro.metrics.definitions`): ``miou`` / ``pixel_acc`` (MTAN's confusion
matrix over the split) and ``miou_binary`` / ``pixel_acc_binary`` (Max Roaming's per-image binary
IoU, averaged per batch); both kinds produce both (a multi-class output through the one-hot of its
argmax).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Task, TaskKind, register

SEG_KEYS = {"confusion": ("miou", "pixel_acc"), "binary": ("miou_binary", "pixel_acc_binary")}


def as_mask(target: torch.Tensor, cls: int) -> torch.Tensor:
    """A (B, 1, H, W) float 0/1 mask, from a mask or from a (B, H, W) label map (-1 -> 0)."""
    if target.dim() == 4 and target.is_floating_point():
        return target
    if target.dim() == 4:
        target = target[:, 0]
    return (target == cls).unsqueeze(1).to(torch.float32)


def binary_seg_loss(out: torch.Tensor, target: torch.Tensor, cls: int) -> torch.Tensor:
    """Sigmoid BCE over all pixels (Max Roaming)."""
    return F.binary_cross_entropy_with_logits(out, as_mask(target, cls).to(out.dtype))


def seg_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over pixels labelled != -1 (MTAN), 0 for a batch with none."""
    target = target.long()
    if target.dim() == 4:
        target = target[:, 0]
    total = F.cross_entropy(out, target, ignore_index=-1, reduction="sum")
    return total / (target != -1).sum().clamp(min=1)


register(TaskKind(
    name="seg", loss=lambda out, target, task: seg_loss(out, target),
    batch_target=lambda task, stored: stored.long(),
    metric_keys={"split": SEG_KEYS["confusion"], "batch": SEG_KEYS["binary"]},
    description="multi-class segmentation, labels 0..C-1, -1 ignored"))

register(TaskKind(
    name="binary_seg", loss=lambda out, target, task: binary_seg_loss(out, target, task.cls),
    batch_target=lambda task, stored: as_mask(stored, task.cls),
    metric_keys={"split": SEG_KEYS["confusion"], "batch": SEG_KEYS["binary"]},
    description="one class of a segmentation as a binary task (ignore pixels are negatives)"))

__all__ = ["SEG_KEYS", "as_mask", "binary_seg_loss", "seg_loss", "Task"]
