"""Conv units: what a backbone asks for at every convolution, and the standard answer.

A backbone is written ONCE and builds each of its convolutions by calling a *conv unit factory*
``make_unit(spec: ConvSpec) -> nn.Module``. A unit maps ``x`` to the *pre-activation* of that
layer (conv -> BN -> whatever the sharing scheme adds, e.g. a task mask or an SE gate); the
backbone applies the ReLU / residual addition. So a sharing scheme is a conv-unit variant, not
a copy of ResNet, and :class:`ConvBN` (conv -> BN) is the plain, hard-sharing unit.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from torch import nn

__all__ = ["ConvSpec", "ConvBN", "UnitFactory"]


@dataclass(frozen=True)
class ConvSpec:
    """Everything a conv unit factory needs to know about the convolution it replaces.

    ``index`` is the unit's position in forward order (0 = first conv), ``role`` one of
    ``"stem"``, ``"conv1"``, ``"conv2"`` (the two convs of a residual block; ``"conv3"``: a
    bottleneck's third), ``"downsample"``
    (the 1x1 projection shortcut), ``"transition"`` / ``"fuse"`` (HRNet's branch transitions and
    cross-resolution fusions) or ``"conv"`` (plain conv stacks: VGG/SegNet).
    ``norm=False`` means no BatchNorm after the conv (the unit then returns the conv output).
    ``dilation`` > 1: an atrous conv (the dilated ResNet-50); units that cannot dilate are
    rejected by the backbone that asks for it.
    """

    in_ch: int
    out_ch: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    index: int = 0
    role: str = "conv"
    norm: bool = True
    bias: bool = False
    track_running_stats: bool = True
    dilation: int = 1

    def with_channels(self, out_ch: int) -> "ConvSpec":
        return replace(self, out_ch=out_ch)


class ConvBN(nn.Sequential):
    """conv -> BN, the standard (hard-sharing) conv unit; returns the pre-activation."""

    def __init__(self, spec: ConvSpec):
        layers: list[nn.Module] = [nn.Conv2d(spec.in_ch, spec.out_ch, spec.kernel_size, spec.stride,
                                             spec.padding, dilation=spec.dilation, bias=spec.bias)]
        if spec.norm:
            layers.append(nn.BatchNorm2d(spec.out_ch, track_running_stats=spec.track_running_stats))
        super().__init__(*layers)
        self.spec = spec

    @property
    def conv(self) -> nn.Conv2d:
        return self[0]  # type: ignore[return-value]


UnitFactory = Callable[[ConvSpec], nn.Module]
