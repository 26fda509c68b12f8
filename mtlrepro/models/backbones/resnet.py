"""ResNet18 multi-task backbone with pluggable conv units.

Topology = torchvision's ``resnet18(weights=None)``: 7x7/2 stem conv + BN + ReLU + 3x3/2 max
pool, four stages of two BasicBlocks (64, 128, 256, 512 channels; stride 2 from stage 2 on, with
a 1x1/2 conv + BN projection shortcut), global average pooling, then one ``Linear(512, d_t)``
head per task. Built for 64x64 CelebA inputs (any size >= 32 works).

The 20 convolutions (stem, 16 block convs, 3 downsample projections: exactly the 20 layers
Maximum Roaming masks) are each built by ``make_unit(ConvSpec)``; a unit returns the
pre-activation (after BN, before ReLU / before the residual addition), which is where task
masks and SE modulation act. Unit indices follow forward order: 0 = stem, then per block
conv1, conv2, [downsample].

Backbone keyword arguments:

* ``width_mult`` (1.0): channel multiplier (ETR-NLP Table 2's "NLPs (2x)" = 2.0); the stem
  and every stage scale, so the feature dimension is ``512 * width_mult``.
* ``track_running_stats`` (True): BatchNorm running statistics. torchvision's default; the
  Maximum Roaming CelebA code uses ``False`` (batch statistics at eval too) - pass ``False`` to
  mirror it.
* ``downsample_norm`` (True): BN after the 1x1 projection shortcut, as in torchvision (required
  for the exact 11,176,512 encoder parameters); the Maximum Roaming code omits it (-1,792
  parameters).

Stages (:class:`~mtlrepro.models.backbones.protocol.StagedBackbone`): the stem (conv + ReLU +
max pool) then ``layer1`` .. ``layer4``, widths ``(64, 128, 256, 512) * width_mult``, output strides
4, 8, 16, 32; ``readout`` is the global average pooling, so the encoder returns ``(B, 512 *
width_mult)`` and the default head is ``linear`` (:mod:`mtlrepro.models.heads.linear`).

Initialisation follows torchvision: Kaiming-normal (fan_out, relu) for learnable convs, BN
weight 1 / bias 0, PyTorch's default for the linear heads.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..heads import HeadFactory
from ..registries import BACKBONES
from ..units import ConvSpec
from ..weight_init import init_torchvision
from .protocol import Backbone, StagedBackbone, StageTaps

__all__ = ["ResNet18Encoder", "BasicBlock", "build_resnet18", "RESNET18_ENCODER_PARAMS"]

RESNET18_ENCODER_PARAMS = 11_176_512  # torchvision resnet18 without fc


class BasicBlock(nn.Module):
    def __init__(self, conv1: nn.Module, conv2: nn.Module, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = conv1
        self.conv2 = conv2
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class BlockStageTaps:
    """Taps of stages that are plain sequences of residual blocks (torchvision's ResNet18, the CIFAR
    ResNets): ``first`` = block 0's output, ``last`` = ``out`` = the last block's; global average
    pooling readout."""

    def stage_taps(self, s: int, h: Tensor, state: dict) -> StageTaps:
        blocks = self.stages[s]
        first = last = blocks[0](h)
        for block in blocks[1:]:
            last = block(last)
        return StageTaps(input=h, first=first, last=last, out=last)

    def readout(self, h: Tensor) -> Tensor:
        return torch.flatten(self.avgpool(h), 1)

    def units(self) -> list[nn.Module]:
        return list(self._units)


class ResNetStages(StagedBackbone):
    """The stage layout torchvision's ResNets share: ``stem`` (conv unit) -> ReLU -> ``maxpool``,
    then ``layer1`` .. ``layer4``. Subclasses give the blocks and their taps."""

    @property
    def stages(self) -> tuple[nn.Module, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.stem(x)))

    # --- branch modules: where branched architectures (CoNAL, LTB, ...) may split ---------------
    #: module k of a branched architecture: 0 = the stem (conv -> BN -> ReLU -> max pool), 1..4 =
    #: layer1..layer4 (CoNAL's five modules, its released ``layer_list``)
    branch_module_names = ("stem", "layer1", "layer2", "layer3", "layer4")

    @property
    def n_branch_modules(self) -> int:
        return len(self.branch_module_names)

    def branch_module(self, k: int) -> nn.Module:
        return getattr(self, self.branch_module_names[k])

    def forward_branch_module(self, k: int, h: Tensor) -> Tensor:
        return self.forward_stem(h) if k == 0 else self.stages[k - 1](h)

    def keep_branch_modules(self, keep) -> None:
        """Drop every branch module not in ``keep`` (its parameters leave the model); calling a
        dropped one raises."""
        keep = set(keep)
        for k, name in enumerate(self.branch_module_names):
            if k not in keep:
                setattr(self, name, DroppedModule(name))
        if hasattr(self, "_units"):  # the conv units of the dropped modules leave units() too
            alive = {id(m) for m in self.modules()}
            self._units = [u for u in self._units if id(u) in alive]


class DroppedModule(nn.Module):
    """Stands in for a branch module a branched architecture does not use (no parameters)."""

    def __init__(self, name: str):
        super().__init__()
        self.dropped = name

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"branch module {self.dropped!r} was dropped from this network")

    def extra_repr(self) -> str:
        return f"dropped={self.dropped!r}"


class ResNet18Encoder(BlockStageTaps, ResNetStages):
    """ResNet18 up to global average pooling; ``forward`` returns ``(B, 512 * width_mult)``."""

    strides = (4, 8, 16, 32)

    def __init__(self, make_unit, width_mult: float = 1.0, track_running_stats: bool = True,
                 downsample_norm: bool = True, in_channels: int = 3):
        super().__init__()
        widths = [int(round(w * width_mult)) for w in (64, 128, 256, 512)]
        self._units: list[nn.Module] = []
        idx = 0

        def unit(in_ch, out_ch, k, stride, pad, role, norm=True):
            nonlocal idx
            m = make_unit(ConvSpec(in_ch, out_ch, k, stride, pad, index=idx, role=role, norm=norm,
                                   track_running_stats=track_running_stats))
            idx += 1
            self._units.append(m)
            return m

        self.stem = unit(in_channels, widths[0], 7, 2, 3, "stem")
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch = widths[0]
        stages = []
        for s, w in enumerate(widths):
            blocks = []
            for b in range(2):
                stride = 2 if (s > 0 and b == 0) else 1
                c1 = unit(in_ch, w, 3, stride, 1, "conv1")
                c2 = unit(w, w, 3, 1, 1, "conv2")
                ds = None
                if stride != 1 or in_ch != w:
                    ds = unit(in_ch, w, 1, stride, 0, "downsample", norm=downsample_norm)
                blocks.append(BasicBlock(c1, c2, ds))
                in_ch = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_features = in_ch
        self.widths = tuple(widths)
        self.stem_width = widths[0]
        self._init_weights()

    def _init_weights(self) -> None:
        init_torchvision(self)

    # --- stages (StagedBackbone): ResNetStages; the taps: BlockStageTaps ----------------------

    def last_shared_layer(self) -> nn.Module:
        """The last conv unit (conv -> BN) of the last residual block."""
        return self.layer4[-1].conv2

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.stem(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


@BACKBONES.register("resnet18")
def build_resnet18(make_unit, **kwargs) -> Backbone:
    enc = ResNet18Encoder(make_unit, **kwargs)
    return Backbone(encoder=enc, feature_dim=enc.out_features, make_head=HeadFactory("linear", enc.out_features))
