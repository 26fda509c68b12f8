"""Surface normals: 1 - cosine between the L2-normalised prediction and the target, over pixels
whose target is not all-zero (MTAN). (Max Roaming's NYUv2 code masks its normal loss with the
*depth* mask -- a slip; the normals' own mask is used here, as in MTAN.)

Metric keys: ``mean_angle``, ``median_angle``, ``within_11_25``, ``within_22_5``, ``within_30``
(per-batch means, MTAN) and the same with ``_pooled`` (every valid pixel of the split, LibMTL).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TaskKind, register, stored_as_is

NORMAL_KEYS = ("mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30")


def normals_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine(normalise(out), target) over valid pixels."""
    valid = (target != 0).any(1, keepdim=True)
    pred = torch.where(valid, out, torch.ones_like(out))  # finite stand-in at invalid pixels
    pred = F.normalize(pred, p=2.0, dim=1, eps=1e-12)
    cos = torch.where(valid, (pred * target).sum(1, keepdim=True), torch.zeros_like(valid, dtype=pred.dtype))
    return 1.0 - cos.sum() / valid.sum().clamp(min=1)


register(TaskKind(
    name="normals", loss=lambda out, target, task: normals_loss(out, target), batch_target=stored_as_is,
    metric_keys={"batch": NORMAL_KEYS, "pooled": tuple(f"{k}_pooled" for k in NORMAL_KEYS)},
    description="unit surface normals (3 channels), all-zero = invalid"))

__all__ = ["NORMAL_KEYS", "normals_loss"]
