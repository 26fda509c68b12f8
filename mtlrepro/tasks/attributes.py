"""Binary attributes (CelebA): one sigmoid output per attribute of the task, BCE averaged over
attributes and samples (Maximum Roaming's and ETR-NLP's loss). Metric keys: ``precision``,
``recall``, ``fscore`` per attribute over the whole split, averaged over attributes (x100)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TaskKind, register


def attributes_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out, target)


register(TaskKind(
    name="attributes", loss=lambda out, target, task: attributes_loss(out, target),
    batch_target=lambda task, stored: stored.to(torch.float32),
    metric_keys={"split": ("precision", "recall", "fscore")},
    description="a group of binary attributes, one logit each"))

__all__ = ["attributes_loss"]
