"""HRNet's dense head: Vandenhende et al.'s ``HighResolutionHead`` (``models/seg_hrnet.py`` of
``SimonVandenhende/Multi-Task-Learning-PyTorch``), the per-task decoder of GatedMTL's NYUD HRNet-W18
table, plus the final resize of that repo's ``models/models.py``.

On the four HRNet branch maps ``x_b`` (widths 18 / 36 / 72 / 144 at strides 4 / 8 / 16 / 32):

* :func:`concat_branches`: ``x_2 .. x_4`` upsampled bilinearly (``align_corners=False``, what
  ``F.interpolate(..., mode='bilinear')`` defaults to) to ``x_1``'s size and concatenated:
  ``(B, 270, H/4, W/4)``;
* ``Conv1x1(270, 270, bias) -> BN -> ReLU -> Conv1x1(270, out_dim, bias)`` (``last_layer``);
* bilinear upsampling, ``align_corners=False`` (``MultiTaskModel.forward``: ``F.interpolate(
  decoder(z), out_size, mode='bilinear')``), by ``upsample`` (the branch-1 stride, 4) back to the
  input size: equal to Vandenhende's resize to ``out_size`` whenever the input sides are multiples
  of 4 (the ``hrnet18`` backbone needs multiples of 32 anyway; 480x640 is).

The head reads either the branch list (Vandenhende's split) or the already concatenated
``(B, 270, h, w)`` map: the ``hrnet18`` encoder returns the latter (one tensor is what the
representation-level methods, MGDA-UB / GradNorm / RotoGrad, differentiate; the concatenation has
no parameters, so the parameter split is Vandenhende's).

Parameters (:func:`hrnet_head_params`): ``C^2 + C`` (first conv) ``+ 2C`` (BN) ``+ C out_dim +
out_dim``; ``C = 270``: 73,710 + 271 out_dim (NYUD's 40 / 1 / 3 outputs: 84,550 / 73,981 / 74,523).
Initialisation: PyTorch's defaults, as Vandenhende (whose ``init_weights`` covers the backbone only).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registries import HEADS

__all__ = ["HRNetHead", "hrnet_head", "hrnet_head_params", "concat_branches", "HRNET_W18_CHANNELS"]

HRNET_W18_CHANNELS = (18, 36, 72, 144)   # Vandenhende's ``backbone_channels`` for hrnet_w18


def hrnet_head_params(out_dim: int, in_ch: int = sum(HRNET_W18_CHANNELS)) -> int:
    """Learnable parameters of one :class:`HRNetHead` (hand count, see the module docstring)."""
    return in_ch * in_ch + in_ch + 2 * in_ch + in_ch * out_dim + out_dim


def concat_branches(xs: Sequence[Tensor]) -> Tensor:
    """Branches 2.. upsampled bilinearly (``align_corners=False``) to branch 1's size, then
    concatenated along channels (Vandenhende's ``HighResolutionHead.forward``, first half)."""
    size = xs[0].shape[-2:]
    ups = [xs[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in xs[1:]]
    return torch.cat(ups, dim=1)


class HRNetHead(nn.Module):
    """[concat branches] -> Conv1x1 -> BN -> ReLU -> Conv1x1(out_dim) -> bilinear x``upsample``."""

    def __init__(self, in_ch: int, out_dim: int, upsample: int = 4):
        super().__init__()
        self.last_layer = nn.Sequential(
            nn.Conv2d(in_ch, in_ch, 1), nn.BatchNorm2d(in_ch), nn.ReLU(inplace=False),
            nn.Conv2d(in_ch, out_dim, 1))
        self.in_ch, self.upsample = int(in_ch), int(upsample)

    def forward(self, x: Tensor | Sequence[Tensor]) -> Tensor:
        if not isinstance(x, Tensor):
            x = concat_branches(x)
        if x.shape[1] != self.in_ch:
            raise ValueError(f"hrnet head expects {self.in_ch} channels, got {x.shape[1]}")
        y = self.last_layer(x)
        if self.upsample == 1:
            return y
        size = (x.shape[-2] * self.upsample, x.shape[-1] * self.upsample)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


@HEADS.register("hrnet")
def hrnet_head(in_ch: int, out_dim: int, **kwargs) -> HRNetHead:
    """Vandenhende's ``HighResolutionHead(backbone_channels, out_dim)`` plus the resize to the
    input size (``upsample`` as :class:`HRNetHead`); ``in_ch`` = the summed branch widths."""
    return HRNetHead(in_ch, out_dim, **kwargs)
