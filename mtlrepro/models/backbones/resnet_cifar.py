"""CIFAR-style ResNet-20 (He et al., "Deep Residual Learning", CVPR 2016, Sec. 4.2): GatedMTL's CelebA encoder.

Topology: a 3x3 conv (3 -> 16) + BN + ReLU stem **without pooling** (GatedMTL Appendix A.1: "remove
the initial pooling in the stem"), three stages of ``n = 3`` BasicBlocks (3x3 -> 3x3) with 16 / 32 /
64 channels (times ``width_mult``: GatedMTL's Original / Half / Quarter widths 1, 0.5, 0.25) at
strides 1 / 2 / 2, global average pooling; ``6n + 2 = 20`` weighted layers with the linear heads.

Shortcuts (``shortcut``): ``"A"`` (default) - He et al.'s CIFAR option A, the parameter-free
identity that subsamples by 2 and zero-pads the new channels (``akamaster/pytorch_resnet_cifar10``
``resnet.py``, ``option='A'``: ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``,
the common public ResNet-20; 0.27M parameters at width 1); ``"B"`` - a 1x1 conv + BN projection
where the shape changes. GatedMTL does not say which, and its numbers cannot tell (below); "A" is
the choice.

Counts (fvcore, ``tests/models/test_resnet_cifar.py``'s hand counts for the parameters): encoder
parameters A 269,072 / 67,720 / 17,156, B 271,824 / 68,456 / 17,364 at width 1 / 0.5 / 0.25. fvcore
MACs at 32x32, one network with its three linear heads (= MTL; STL = 3 networks): option A 40.93 /
10.44 / 2.71 M (STL 122.8 / 31.3 / 8.14 M), option B 41.22 / 10.52 / 2.74 M (STL 123.7 / 31.5 /
8.21 M; = REFERENCE's 41.2 / 10.5 / 2.74 M, counted with projections). GatedMTL prints MTL 58 / 14.8
/ 3.9 and STL 174 / 44.4 / 11.6 MFLOPs: 1.407 x fvcore (B) or 1.417 x (A) at widths 1 and 0.5
(1.41-1.44 at 0.25, the printed 3.9 has two digits), neither 1 x nor 2 x MACs; a gap no standard
convention explains (REFERENCE, open). FLOPs grow with the pixel count, so ~32 x sqrt(1.41) = 38
pixels a side would close it, but the strided convs round up: measured, 37x37 gives B 59.0 / 15.05
/ 3.91 M (1.43 x 32x32's) and 38x38 60.1 / 15.3 / 3.98 M (1.46 x); no square input reproduces the
printed cells exactly. The paper says 32x32; the model is not fitted to the printed counts.

Every conv is built by ``make_unit(ConvSpec)`` (19 units with option A, 21 with B). Stages
(:class:`~.protocol.StagedBackbone`): widths ``(16, 32, 64) * width_mult``, strides 1, 2, 4;
``readout`` is the global average pooling, so the encoder returns ``(B, 64 * width_mult)`` and the
default head is ``linear``. Initialisation: torchvision's (Kaiming-normal fan_out, BN 1 / 0).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..heads import HeadFactory
from ..registries import BACKBONES
from ..units import ConvSpec
from ..weight_init import init_torchvision
from .protocol import Backbone, StagedBackbone
from .resnet import BlockStageTaps

__all__ = ["CifarResNetEncoder", "ShortcutA", "build_resnet20"]


class ShortcutA(nn.Module):
    """Option A: ``x[:, :, ::2, ::2]`` zero-padded from ``in_ch`` to ``out_ch`` channels (no parameters)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.pad, self.stride = out_ch - in_ch, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.pad <= 0:
            return x
        lo = self.pad // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.pad - lo))


class _Block(nn.Module):
    def __init__(self, conv1: nn.Module, conv2: nn.Module, shortcut: nn.Module | None):
        super().__init__()
        self.conv1, self.conv2, self.shortcut = conv1, conv2, shortcut
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        return self.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class CifarResNetEncoder(BlockStageTaps, StagedBackbone):
    """ResNet-(6n+2) for 32x32 inputs; ``forward`` returns ``(B, 64 * width_mult)``."""

    strides = (1, 2, 4)

    def __init__(self, make_unit, depth: int = 20, width_mult: float = 1.0, shortcut: str = "A",
                 track_running_stats: bool = True, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-padding identity) or 'B' (1x1 projection), got {shortcut!r}")
        n = (depth - 2) // 6
        widths = [max(1, int(round(w * width_mult))) for w in (16, 32, 64)]
        self._units: list[nn.Module] = []

        def unit(in_ch, out_ch, k, stride, pad, role):
            m = make_unit(ConvSpec(in_ch, out_ch, k, stride, pad, index=len(self._units), role=role,
                                   track_running_stats=track_running_stats))
            self._units.append(m)
            return m

        self.stem = unit(in_channels, widths[0], 3, 1, 1, "stem")
        self.relu = nn.ReLU(inplace=True)
        in_ch, stages = widths[0], []
        for s, w in enumerate(widths):
            blocks = []
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                c1 = unit(in_ch, w, 3, stride, 1, "conv1")
                c2 = unit(w, w, 3, 1, 1, "conv2")
                sc = None
                if stride != 1 or in_ch != w:
                    sc = ShortcutA(in_ch, w, stride) if shortcut == "A" else unit(in_ch, w, 1, stride, 0, "downsample")
                blocks.append(_Block(c1, c2, sc))
                in_ch = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.widths, self.stem_width, self.out_features = tuple(widths), widths[0], in_ch
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        init_torchvision(self)

    @property
    def stages(self) -> tuple[nn.Module, ...]:
        return (self.layer1, self.layer2, self.layer3)

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.relu(self.stem(x))

    def last_shared_layer(self) -> nn.Module:
        return self.layer3[-1].conv2

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.layer3(self.layer2(self.layer1(self.forward_stem(x)))))


@BACKBONES.register("resnet20")
def build_resnet20(make_unit, **kwargs) -> Backbone:
    """CIFAR-style ResNet-20 (``width_mult``, ``shortcut``, ``track_running_stats``); linear heads."""
    enc = CifarResNetEncoder(make_unit, depth=20, **kwargs)
    return Backbone(encoder=enc, feature_dim=enc.out_features, make_head=HeadFactory("linear", enc.out_features))
