"""DeepLab-v3's ASPP head (Chen et al., "Rethinking Atrous Convolution", 2017): LibMTL's
``DeepLabHead`` (``examples/nyu/aspp.py``, the per-task decoder of CoNAL's NYUv2 / Cityscapes).

On a ``(B, F, h, w)`` map (F = 2048 from the dilated ResNet-50, output stride 8):

* ASPP: five parallel branches of ``C = 256`` channels, each conv (no bias) -> BN -> ReLU:
  a 1x1 conv; three 3x3 convs of dilation (= padding) 12, 24, 36; image pooling (global
  average pool -> 1x1 conv -> BN -> ReLU, upsampled back bilinearly with
  ``align_corners=False``); concatenated (5C) -> 1x1 conv -> BN -> ReLU -> Dropout(0.5);
* Conv3x3(C, C, no bias) -> BN -> ReLU -> Conv1x1(C, out_dim, bias);
* then (this project; LibMTL does it in its trainer's ``process_preds``) a bilinear upsampling,
  ``align_corners=True``, by ``upsample`` (the backbone's output stride, 8) back to the input
  size: ``(B, out_dim, 8h, 8w)``; equal to LibMTL's resize to the label size whenever the input
  sides are multiples of 8 (288x384, 128x256 and the tiny profile's are). ``align_corners=False``
  is Vandenhende et al.'s resize (``models/models.py``: ``F.interpolate(..., mode='bilinear')``),
  GatedMTL's setting; ``in_ch`` is the encoder's width (2048 for the dilated ResNet-50, 512 for the
  ResNet-18).

Parameters (:func:`aspp_head_params`): ``F C (5 + 27) + 5 C^2 + 9 C^2`` conv weights, seven BNs
(``14 C``), the classifier ``C out_dim + out_dim``; F = 2048: 16,125,440 + 257 out_dim.
Initialisation: PyTorch's defaults, as LibMTL (which initialises its heads explicitly nowhere).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registries import HEADS

__all__ = ["DeepLabHead", "ASPP", "aspp_head", "aspp_head_params"]


def aspp_head_params(out_dim: int, in_ch: int = 2048, ch: int = 256, n_rates: int = 3) -> int:
    """Learnable parameters of one :class:`DeepLabHead` (hand count, see the module docstring)."""
    n_branches = n_rates + 2
    convs = in_ch * ch * (2 + 9 * n_rates) + n_branches * ch * ch + 9 * ch * ch
    bns = 2 * ch * (n_branches + 2)
    return convs + bns + ch * out_dim + out_dim


def _cbr(in_ch: int, out_ch: int, k: int = 1, dilation: int = 1) -> list[nn.Module]:
    pad = dilation if k == 3 else 0
    return [nn.Conv2d(in_ch, out_ch, k, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_ch), nn.ReLU()]


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool -> 1x1 conv -> BN -> ReLU -> upsample back."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *_cbr(in_ch, out_ch))

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3s, image pooling -> project."""

    def __init__(self, in_ch: int, rates: Sequence[int] = (12, 24, 36), ch: int = 256, dropout: float = 0.5):
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(*_cbr(in_ch, ch))]
        branches += [nn.Sequential(*_cbr(in_ch, ch, 3, int(r))) for r in rates]
        branches.append(ASPPPooling(in_ch, ch))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*_cbr(len(branches) * ch, ch), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([b(x) for b in self.convs], dim=1))


class DeepLabHead(nn.Module):
    """ASPP -> Conv3x3 -> BN -> ReLU -> Conv1x1(out_dim) -> bilinear x``upsample``."""

    def __init__(self, in_ch: int, out_dim: int, rates: Sequence[int] = (12, 24, 36), ch: int = 256,
                 dropout: float = 0.5, upsample: int = 8, align_corners: bool = True):
        super().__init__()
        self.body = nn.Sequential(ASPP(in_ch, rates, ch, dropout), *_cbr(ch, ch, 3),
                                  nn.Conv2d(ch, out_dim, 1))
        self.upsample = int(upsample)
        self.align_corners = bool(align_corners)

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        if self.upsample == 1:
            return y
        size = (x.shape[-2] * self.upsample, x.shape[-1] * self.upsample)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=self.align_corners)


@HEADS.register("aspp")
def aspp_head(in_ch: int, out_dim: int, **kwargs) -> DeepLabHead:
    """LibMTL's ``DeepLabHead(in_ch, out_dim)`` plus the upsampling (``rates``, ``ch``,
    ``dropout``, ``upsample``, ``align_corners`` as :class:`DeepLabHead`)."""
    return DeepLabHead(in_ch, out_dim, **kwargs)
