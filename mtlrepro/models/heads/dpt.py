"""DPT's decoder as one task's head (Ranftl et al. 2021; ``isl-org/DPT``, ``dpt/blocks.py``, ``dpt/models.py``).

Reads the four reassembled maps of :mod:`mtlrepro.models.backbones.vit` (strides 4, 8, 16, 32,
``widths`` channels) - DPT's ``scratch``:

* ``layer{1..4}_rn``: 3x3 convs (no bias) from ``widths[i]`` to ``features`` channels
  (GatedMTL Appendix A.3: "The feature dimension for DPT's decoder was reduced from 256 to 64");
* four ``FeatureFusionBlock_custom`` (no BN, no expand, ``align_corners=True``): ``out =
  up2(RCU2(x + RCU1(skip)))`` then a 1x1 conv (bias), where ``RCU(x) = x + conv(ReLU(conv(ReLU(x))))``
  with 3x3 convs with bias; refinenet4 takes layer4 alone;
* the output head of DPT's depth model for every task (a choice: GatedMTL does not say which head
  its tasks use, and one design keeps the tasks' decoders alike): ``conv3x3(f, f/2) -> up2 (bilinear,
  align_corners=True) -> conv3x3(f/2, 32) -> ReLU -> conv1x1(32, out_dim)``, without the depth model's
  final non-negative ReLU (segmentation logits and normals are signed). Output at the input size.

Parameters (hand count, :func:`dpt_head_params`): with ``features`` f, ``widths`` w:
``9 f sum(w)`` + 4 fusions x (4 (9 f^2 + f) + f^2 + f) + ``9 f f/2 + f/2 + 9 f/2 32 + 32 + 32 out + out``.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..registries import HEADS

__all__ = ["DPTHead", "dpt_head", "dpt_head_params"]


def dpt_head_params(out_dim: int, widths: Sequence[int], features: int = 64) -> int:
    f, h = features, features // 2
    rn = 9 * f * sum(widths)
    fusion = 4 * (4 * (9 * f * f + f) + f * f + f)
    head = 9 * f * h + h + 9 * h * 32 + 32 + 32 * out_dim + out_dim
    return rn + fusion + head


class _RCU(nn.Module):
    """``ResidualConvUnit_custom`` without BN: x + conv2(ReLU(conv1(ReLU(x))))."""

    def __init__(self, f: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(f, f, 3, padding=1), nn.Conv2d(f, f, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _Fusion(nn.Module):
    """``FeatureFusionBlock_custom(deconv=False, bn=False, expand=False, align_corners=True)``."""

    def __init__(self, f: int):
        super().__init__()
        self.rcu1, self.rcu2, self.out_conv = _RCU(f), _RCU(f), nn.Conv2d(f, f, 1)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.rcu1(skip)
        x = F.interpolate(self.rcu2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """DPT's ``scratch`` for one task: four reassembled maps -> ``(B, out_dim, H, W)``."""

    def __init__(self, widths: Sequence[int], out_dim: int, features: int = 64):
        super().__init__()
        f = int(features)
        self.rn = nn.ModuleList(nn.Conv2d(w, f, 3, padding=1, bias=False) for w in widths)
        self.refine = nn.ModuleList(_Fusion(f) for _ in range(4))    # refine[i] = DPT's refinenet{i+1}
        self.conv1 = nn.Conv2d(f, f // 2, 3, padding=1)
        self.conv2 = nn.Conv2d(f // 2, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, out_dim, 1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        l1, l2, l3, l4 = (rn(x) for rn, x in zip(self.rn, feats))
        p = self.refine[3](l4)
        p = self.refine[2](p, l3)
        p = self.refine[1](p, l2)
        p = self.refine[0](p, l1)
        y = F.interpolate(self.conv1(p), scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv3(F.relu(self.conv2(y)))


@HEADS.register("dpt")
def dpt_head(in_features: int, out_dim: int, widths: Sequence[int] | None = None, features: int = 64) -> DPTHead:
    """DPT's decoder for the maps of a ``dpt_vit*`` encoder (``widths``: their channels)."""
    if widths is None:
        d = int(in_features)
        widths = (d // 8, d // 4, d // 2, d)
    return DPTHead(widths, out_dim, features)
