"""Depth estimation: L1 over pixels with depth != 0 (MTAN's and Max Roaming's loss).

Invalid pixels are masked with ``torch.where`` on the prediction, so whatever the model outputs
there (even inf or NaN) neither changes the loss nor gets a gradient. Metric keys: ``abs_err`` /
``rel_err`` (per-batch means, MTAN) and ``abs_err_pooled`` / ``rel_err_pooled`` (over all valid
pixels of the split, LibMTL).
"""
from __future__ import annotations

import torch

from .base import TaskKind, register, stored_as_is


def depth_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |out - target| over pixels with target != 0."""
    valid = target != 0
    pred = torch.where(valid, out, target)  # invalid pixels: zero error and zero gradient
    return (pred - target).abs().sum() / valid.sum().clamp(min=1)


register(TaskKind(
    name="depth", loss=lambda out, target, task: depth_loss(out, target), batch_target=stored_as_is,
    metric_keys={"batch": ("abs_err", "rel_err"), "pooled": ("abs_err_pooled", "rel_err_pooled")},
    description="per-pixel depth, 0 = invalid"))

__all__ = ["depth_loss"]
