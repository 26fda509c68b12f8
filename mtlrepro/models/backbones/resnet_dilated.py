"""Dilated ResNets (output stride 8): CoNAL's / LibMTL's ResNet-50 and GatedMTL's / Vandenhende's ResNet-18.

Topology = torchvision's ``resnet50(weights=None)`` without ``avgpool`` / ``fc``, dilated as
LibMTL's ``ResnetDilated(dilate_scale=8)`` (``LibMTL/model/resnet_dilated.py``, after Yu et al.,
"Dilated Residual Networks", CVPR 2017): in ``layer3`` and ``layer4`` every stride-2 conv gets
stride 1 and every 3x3 conv is dilated (padding = dilation):

=========  =======================================  ===============  =======  ======
stage      blocks (Bottleneck 1x1 -> 3x3 -> 1x1)    3x3 dilation     width    stride
=========  =======================================  ===============  =======  ======
stem       7x7/2 conv + BN + ReLU + 3x3/2 max pool  -                64       4
layer1     3                                        1                256      4
layer2     4 (stride 2 in block 0's 3x3)            1                512      8
layer3     6                                        1 (block 0), 2   1024     8
layer4     3                                        2 (block 0), 4   2048     8
=========  =======================================  ===============  =======  ======

(block 0's 3x3 of a dilated stage had stride 2: LibMTL's ``_nostride_dilate`` gives it
``dilate // 2``.) Encoder parameters: 23,508,032 (:data:`RESNET50_ENCODER_PARAMS`).

All 53 convolutions (stem; per block conv1, conv2, conv3, [downsample]) are built by
``make_unit(ConvSpec)`` in torchvision's ``state_dict`` order, which is how
:func:`mtlrepro.models.pretrained.load_imagenet` maps ImageNet weights onto any scheme's units.
A unit returns the pre-activation; the block applies ReLU and the residual addition.

Stages (:class:`~.protocol.StagedBackbone`): the stem, then ``layer1`` .. ``layer4``. Taps follow
LibMTL's MTAN, which splits each layer into ``layer[:-1]`` and ``layer[-1]``: ``first`` is the
output of every block but the last (MTAN's attention reads it), ``last`` / ``out`` the last
block's. ``readout`` is the identity: the encoder returns ``(B, 2048, H/8, W/8)`` and the default
head is ``aspp`` (:mod:`mtlrepro.models.heads.aspp`, DeepLab).

Backbone keyword arguments: ``pretrained`` (None or ``"imagenet1k_v1"``: torchvision's
``ResNet50_Weights.IMAGENET1K_V1`` / ``ResNet18_Weights.IMAGENET1K_V1`` from the torch hub cache,
see :mod:`..pretrained`), ``track_running_stats`` (True), ``width_mult`` (1.0). Initialisation
otherwise follows torchvision (Kaiming-normal fan_out convs, BN weight 1 / bias 0).

``resnet18_dilated`` (GatedMTL's PASCAL-Context encoder, Vandenhende's ``ResnetDilated(resnet18,
dilate_scale=8)``): the same rule on torchvision's ResNet-18 (BasicBlocks 3x3 -> 3x3, 2 per stage,
widths 64/128/256/512): in layer3 / layer4 block 0's conv1 (the strided 3x3) gets dilation 1 / 2,
every other 3x3 dilation 2 / 4, the 1x1 projections stride 1. Encoder parameters 11,176,512
(torchvision's resnet18 without fc); the encoder returns ``(B, 512, H/8, W/8)``, default head
``aspp`` on 512 channels. With five ASPP heads on PASCAL's 21/7/1/3/1 outputs hard sharing has
34,795,873 parameters and the five single-task networks 79,501,921 (REFERENCE: 34.80M / 79.50M);
fvcore at 512x512, 2 x MACs: MTL 284.6 / STL 670.1 G (GatedMTL Table 5 prints 284 / 670).
Vandenhende's ``models/models.py`` upsamples with ``F.interpolate(..., mode='bilinear')``, i.e.
``align_corners=False``: the GatedMTL recipes pass the head's ``align_corners: false`` (the head's
default stays LibMTL's True).

MTAN on both (``attention_hidden`` / ``make_attention_block``): hidden ``C / 4`` and a stride-1
Bottleneck of ``C_next / 4`` planes with a 1x1 conv -> BN projection between stages - LibMTL's
``_transform_resnet_MTAN`` on the ResNet-50, and Vandenhende's ``models/mtan.py``
(``AttentionLayer(C, C // 4, C)``, ``RefinementBlock``) on the ResNet-18 of
``configs/pascal/resnet18/mtan.yml`` (2x2 max pool after layer1 only: the scheme's pool "where
the sizes differ" on strides 4, 8, 8, 8).

``width_mult`` (GatedMTL Table 7 right, ResNet-50 at "Half" and "Quarter" width, NYUD, 3 tasks of
40 / 1 / 3 outputs at 480x640): every stage's planes (and the stem) times ``width_mult``, the ASPP
heads reading the narrower ``2048 * width_mult`` features with their 256 channels kept (the
default; the head's ``ch`` is the other reading). The paper does not say what shrinks. fvcore, 2 x
MACs, STL / MTL:

======  ============  ==============  =================  ===========================
width   printed       encoder only    ASPP x mult too    parameters, encoder only
======  ============  ==============  =================  ===========================
1       1149 / 683    1152.3 / 683.8  (the same)         118,911,724 / 71,895,660
0.5     415 / 296     415.4 / 297.3   289.8 / 171.6      43,259,020 / 31,473,740
0.25    177 / 147     177.5 / 147.5   73.3 / 43.3        18,620,764 / 15,658,812
======  ============  ==============  =================  ===========================

Only the encoder-only reading reproduces the printed cells (within 0.4%); it was also the reading
chosen before counting, but it is confirmed by (and so *fitted* to) these counts (the recipes say
so). ``width_mult=1`` is the exact torchvision network (23,508,032 / 11,176,512 encoder parameters).
Counted with ``build_model(..., "single_task" | "hard_sharing", [40, 1, 3], width_mult=m)`` and
fvcore's ``FlopCountAnalysis`` on a ``(1, 3, 480, 640)`` input (STL: the sum of the 3 one-task passes).
"""
from __future__ import annotations

from torch import Tensor, nn

from ..heads import HeadFactory
from ..registries import BACKBONES
from ..units import ConvBN, ConvSpec
from ..weight_init import init_torchvision
from .protocol import Backbone, StageTaps
from .resnet import BasicBlock, ResNetStages

__all__ = ["ResNetDilatedEncoder", "ResNet50DilatedEncoder", "Bottleneck", "build_resnet50_dilated",
           "build_resnet18_dilated", "RESNET50_ENCODER_PARAMS", "BLOCKS", "DILATIONS"]

RESNET50_ENCODER_PARAMS = 23_508_032  # torchvision resnet50 without fc (REFERENCE.md, CoNAL's setting)
BLOCKS = (3, 4, 6, 3)
PLANES = (64, 128, 256, 512)
EXPANSION = 4
#: depth -> (blocks per stage, block kind, expansion)
DEPTHS = {50: ((3, 4, 6, 3), "bottleneck", 4), 18: ((2, 2, 2, 2), "basic", 1)}
#: per stage: (dilation of block 0's 3x3, dilation of the other blocks' 3x3s); None = not dilated
DILATIONS: tuple[tuple[int, int] | None, ...] = (None, None, (1, 2), (2, 4))


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5: the stride sits in the 3x3) on three or four conv units."""

    def __init__(self, conv1: nn.Module, conv2: nn.Module, conv3: nn.Module, downsample: nn.Module | None):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = conv1, conv2, conv3
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.conv1(x))
        out = self.relu(self.conv2(out))
        out = self.conv3(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _check_dilation(unit: nn.Module, spec: ConvSpec) -> None:
    """A dilated spec must come back as a unit whose conv IS dilated (a unit factory that
    ignores ``ConvSpec.dilation`` would silently build a different network)."""
    if spec.dilation == 1:
        return
    want = (spec.dilation, spec.dilation)
    if not any(isinstance(m, nn.Conv2d) and m.dilation == want for m in unit.modules()):
        raise ValueError(f"conv unit {type(unit).__name__} ignores ConvSpec.dilation={spec.dilation} "
                         f"(unit {spec.index}); resnet50_dilated needs units that dilate")


class ResNetDilatedEncoder(ResNetStages):
    """Dilated ResNet-``depth`` (50 or 18) up to ``layer4``; ``forward`` returns ``(B, C, H/8, W/8)``."""

    strides = (4, 8, 8, 8)

    def __init__(self, make_unit, track_running_stats: bool = True, in_channels: int = 3, depth: int = 50,
                 width_mult: float = 1.0):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"dilated ResNet depth {depth}: known {sorted(DEPTHS)}")
        blocks_per_stage, kind, expansion = DEPTHS[depth]
        self.depth, self.expansion = depth, expansion
        planes_all = [max(1, int(round(p * width_mult))) for p in PLANES]
        self._units: list[nn.Module] = []

        def unit(in_ch, out_ch, k, stride, pad, role, dilation=1):
            spec = ConvSpec(in_ch, out_ch, k, stride, pad, index=len(self._units), role=role,
                            track_running_stats=track_running_stats, dilation=dilation)
            m = make_unit(spec)
            _check_dilation(m, spec)
            self._units.append(m)
            return m

        stem_w = planes_all[0]
        self.stem = unit(in_channels, stem_w, 7, 2, 3, "stem")
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch = stem_w
        stages = []
        for s, (n_blocks, planes) in enumerate(zip(blocks_per_stage, planes_all)):
            out_ch = planes * expansion
            blocks = []
            for b in range(n_blocks):
                if DILATIONS[s] is None:
                    stride, dil, dil_other = (2 if (s > 0 and b == 0) else 1), 1, 1
                else:   # _nostride_dilate: the strided 3x3 gets dilate // 2, every other 3x3 dilate
                    stride, dil, dil_other = 1, DILATIONS[s][0 if b == 0 else 1], DILATIONS[s][1]
                needs_ds = b == 0 and (stride != 1 or in_ch != out_ch)
                if kind == "bottleneck":
                    c1 = unit(in_ch, planes, 1, 1, 0, "conv1")
                    c2 = unit(planes, planes, 3, stride, dil, "conv2", dilation=dil)
                    c3 = unit(planes, out_ch, 1, 1, 0, "conv3")
                    ds = unit(in_ch, out_ch, 1, stride, 0, "downsample") if b == 0 else None
                    blocks.append(Bottleneck(c1, c2, c3, ds))
                else:
                    c1 = unit(in_ch, planes, 3, stride, dil, "conv1", dilation=dil)
                    c2 = unit(planes, planes, 3, 1, dil_other, "conv2", dilation=dil_other)
                    ds = unit(in_ch, out_ch, 1, stride, 0, "downsample") if needs_ds else None
                    blocks.append(BasicBlock(c1, c2, ds))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_features = in_ch
        self.widths = tuple(p * expansion for p in planes_all)
        self.stem_width = stem_w
        init_torchvision(self)

    # --- stages (StagedBackbone): ResNetStages; the taps follow LibMTL's MTAN split -----------

    def stage_taps(self, s: int, h: Tensor, state: dict) -> StageTaps:
        blocks = self.stages[s]
        first = h
        for block in blocks[:-1]:
            first = block(first)
        last = blocks[-1](first)
        return StageTaps(input=h, first=first, last=last, out=last)

    # --- what MTAN builds on it (LibMTL's _transform_resnet_MTAN) ----------------------------
    def attention_hidden(self, width: int) -> int:
        """An attention module gating ``C`` channels has ``C / 4`` hidden channels (LibMTL's MTAN
        on the ResNet-50; Vandenhende's ``models/mtan.py`` on the ResNet-18 too)."""
        return width // EXPANSION

    def make_attention_block(self, in_ch: int, out_ch: int, track_running_stats: bool = True) -> nn.Module:
        """LibMTL's ``_conv_layer`` / Vandenhende's ``RefinementBlock``: a stride-1 Bottleneck of
        ``out_ch / 4`` planes with a 1x1 conv -> BN projection shortcut (bias-free convs)."""
        planes = out_ch // EXPANSION

        def cbn(i: int, o: int, k: int) -> ConvBN:
            return ConvBN(ConvSpec(i, o, k, 1, k // 2, track_running_stats=track_running_stats))
        return Bottleneck(cbn(in_ch, planes, 1), cbn(planes, planes, 3), cbn(planes, out_ch, 1),
                          cbn(in_ch, out_ch, 1))

    def units(self) -> list[nn.Module]:
        return list(self._units)

    def last_shared_layer(self) -> nn.Module:
        """The last conv unit of the last block (a bottleneck's 1x1 conv3, a basic block's conv2)."""
        last = self.layer4[-1]
        return last.conv3 if hasattr(last, "conv3") else last.conv2

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.stem(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ResNet50DilatedEncoder(ResNetDilatedEncoder):
    """Dilated ResNet-50 (CoNAL / LibMTL); ``forward`` returns ``(B, 2048 * width_mult, H/8, W/8)``."""

    def __init__(self, make_unit, track_running_stats: bool = True, in_channels: int = 3, width_mult: float = 1.0):
        super().__init__(make_unit, track_running_stats, in_channels, depth=50, width_mult=width_mult)


class ResNet18DilatedEncoder(ResNetDilatedEncoder):
    """Dilated ResNet-18 (GatedMTL's PASCAL-Context encoder); returns ``(B, 512 * width_mult, H/8, W/8)``."""

    def __init__(self, make_unit, track_running_stats: bool = True, in_channels: int = 3, width_mult: float = 1.0):
        super().__init__(make_unit, track_running_stats, in_channels, depth=18, width_mult=width_mult)


def _build(encoder_cls, name: str, make_unit, kwargs: dict) -> Backbone:
    pretrained = kwargs.pop("pretrained", None)
    enc = encoder_cls(make_unit, **kwargs)
    if pretrained is not None:
        if kwargs.get("width_mult", 1.0) != 1.0:
            raise ValueError(f"{name}: ImageNet weights exist for width_mult 1 only (got {kwargs['width_mult']})")
        from ..pretrained import load_imagenet
        load_imagenet(enc, name=name, weights=pretrained)
    return Backbone(encoder=enc, feature_dim=enc.out_features, make_head=HeadFactory("aspp", enc.out_features))


@BACKBONES.register("resnet50_dilated")
def build_resnet50_dilated(make_unit, **kwargs) -> Backbone:
    """The encoder and its default ``aspp`` head factory; ``pretrained=`` (one of
    ``build_resnet50_dilated.pretrained_weights``) loads ImageNet weights into it. (A keyword
    argument, not a named default, so the fingerprint's resolved kwargs do not repeat the
    recipe's ``pretrained`` field.)"""
    return _build(ResNet50DilatedEncoder, "resnet50", make_unit, kwargs)


@BACKBONES.register("resnet18_dilated")
def build_resnet18_dilated(make_unit, **kwargs) -> Backbone:
    """The dilated ResNet-18 and its default ``aspp`` head factory (``pretrained`` as above)."""
    return _build(ResNet18DilatedEncoder, "resnet18", make_unit, kwargs)


build_resnet18_dilated.pretrained_weights = ("imagenet1k_v1",)


build_resnet50_dilated.pretrained_weights = ("imagenet1k_v1",)  # what build_model(pretrained=) accepts
