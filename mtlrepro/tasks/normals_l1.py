r"""Surface normals with Vandenhende et al.'s loss: L1 between the normalised output and the target.

The repo's ``NormalsLoss(normalize=True, size_average=True, norm=1)`` (``losses/loss_functions.py``;
GatedMTL's appendix: "L_1 loss for ... normals"): the output is divided by its L2 norm + 1e-12
(``Normalize``), and

.. math:: L = \frac{1}{3 |V|} \sum_{x \in V} \sum_{c=1}^{3} |\hat p_c(x) - g_c(x)|

over the valid pixels :math:`V` (the repo masks every component equal to the ignore value 255,
which ``AddIgnoreRegions`` writes into all three components of a zero-norm normal; here a pixel
is invalid when its target is all-zero, the same pixels). Invalid pixels are masked with
``torch.where`` on the output, so whatever the model predicts there neither changes the loss nor
gets a gradient. (MTAN's ``normals`` kind is 1 - cosine instead: :mod:`mtlrepro.tasks.normals`.)

The stored targets are float16 unit vectors (:mod:`mtlrepro.data.nyud_mt`); the batch target
renormalises them in float32 (zero stays zero), which the repo's ``FixedResize`` also does.
Metric keys: the pooled normal-angle keys (``mean_angle_pooled``, ...).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TaskKind, register
from .normals import NORMAL_KEYS


def normals_l1_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |out / (|out| + 1e-12) - target| over the components of valid pixels."""
    valid = (target != 0).any(1, keepdim=True)
    pred = torch.where(valid, out, torch.ones_like(out))
    pred = pred / (torch.linalg.vector_norm(pred, dim=1, keepdim=True) + 1e-12)
    err = torch.where(valid, (pred - target).abs(), torch.zeros_like(pred))
    return err.sum() / (3 * valid.sum()).clamp(min=1)


def unit_normals(stored: torch.Tensor) -> torch.Tensor:
    """Stored (B, 3, H, W) normals -> float32 unit vectors (all-zero stays all-zero)."""
    return F.normalize(stored.to(torch.float32), p=2.0, dim=1, eps=1e-12)


register(TaskKind(
    name="normals_l1", loss=lambda out, target, task: normals_l1_loss(out, target),
    batch_target=lambda task, stored: unit_normals(stored),
    metric_keys={"pooled": tuple(f"{k}_pooled" for k in NORMAL_KEYS)},
    description="unit surface normals (3 channels), L1 after normalising the output; all-zero = invalid"))

__all__ = ["normals_l1_loss", "unit_normals"]
