"""The linear head: ``Linear(in_features, out_dim)`` on the backbone's pooled ``(B, F)`` vector.

ResNet18's and VGG16's default on CelebA (one head per task or attribute group; 40 outputs in all
add ``40 * (512 + 1)`` = 20,520 parameters at width 1). PyTorch's default initialisation
(Kaiming-uniform with ``a = sqrt(5)``), as torchvision's ``fc``. A plain ``nn.Linear``, so that
batched task passes run all tasks' heads as one batched matmul
(:func:`~mtlrepro.models.batched.per_task.per_task_linear`).
"""
from __future__ import annotations

from torch import nn

from ..registries import HEADS

__all__ = ["linear_head"]


@HEADS.register("linear")
def linear_head(in_features: int, out_dim: int, bias: bool = True) -> nn.Linear:
    """``nn.Linear(in_features, out_dim)``; the input must be ``(B, in_features)``."""
    return nn.Linear(in_features, out_dim, bias=bias)
