"""VGG16 multi-task backbone with pluggable conv units (ETR-NLP Table 2's VGG16 block).

Topology = torchvision's ``vgg16(weights=None).features`` (configuration "D"): 13 convolutions
3x3/1 with padding 1 and a bias, each followed by ReLU, in five stages of 2-2-3-3-3 convs
(64, 128, 256, 512, 512 channels), each stage closed by a 2x2/2 max pool. On a 64x64 CelebA
input the features are ``512 x 2 x 2``; they are globally average-pooled to a 512-d vector and
fed to one ``Linear(512, d_t)`` head per task.

Why this and not torchvision's full VGG16: the paper's VGG16 Conv row (14.7M parameters,
1.25G FLOPs) is exactly ``.features`` - 14,714,688 parameters and 1,252.8M fvcore MACs at
64x64 - so the large fully connected classifier (119.5M parameters) is not part of the
published model. The paper does not say how the 2x2 map reaches the heads; global average
pooling (as in our ResNet18) adds no parameters and 2,048 MACs, and keeps
``feature_dim = 512 * width_mult``. With 40 outputs the heads add 20,520 parameters
(14,735,208 in all, still 14.7M).

The 13 convolutions are each built by ``make_unit(ConvSpec)`` (a unit returns the
pre-activation, ReLU follows in the backbone), so every sharing scheme works on VGG16. Unit
indices follow forward order and all 13 have ``role="conv"`` (``ConvSpec``'s role for plain
conv stacks): VGG16 has no stem in ResNet's sense - conv1_1 is an ordinary 3x3 conv - so the
schemes that keep ResNet18's 7x7 stem learnable (``nlp``, ``etr_nlp``, ``conv_alt``) treat
conv1_1 like every other conv. Evidence from ETR-NLP Table 2: with conv1_1 replaced, the
LBConv VGG16 row is reproduced as printed (1,835,176 parameters / 1.433G MACs -> 1.84M /
1.43G; keeping it learnable gives 1.83M / 1.42G) and the Shift row's 0.14G too (0.146G
otherwise); the NLPs row matches either way (see ``sharing/conv_alternatives.py``). There are
no strided convs and no projection shortcuts.

Backbone keyword arguments:

* ``width_mult`` (1.0): channel multiplier of every conv (ETR-NLP Table 2's "NLPs (2x)" = 2.0);
  the feature dimension is ``512 * width_mult``.
* ``batch_norm`` (False): torchvision's ``vgg16`` has none (the published 14.7M equals it
  without BN); ``True`` gives the ``vgg16_bn`` topology (BN after every conv, conv bias kept as
  torchvision does: +8,448 parameters at width 1).
* ``track_running_stats`` (True): BatchNorm running statistics (only with ``batch_norm``).

Stages (:class:`~mtlrepro.models.backbones.protocol.StagedBackbone`): the five conv stages, each
closed by its max pool (the ``out`` tap is pooled, ``last`` is the last conv's ReLU output),
widths ``(64, 128, 256, 512, 512) * width_mult``, output strides 2, 4, 8, 16, 32; no stem;
``readout`` is the global average pooling and the default head ``linear``.

Initialisation follows torchvision: Kaiming-normal (fan_out, relu) for learnable convs with
zero bias, BN weight 1 / bias 0; PyTorch's default for the linear heads (as ResNet18's).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..heads import HeadFactory
from ..registries import BACKBONES
from ..units import ConvSpec
from ..weight_init import init_torchvision
from .protocol import Backbone, StagedBackbone, StageTaps

__all__ = ["VGG16Encoder", "build_vgg16", "VGG16_CFG", "VGG16_FEATURES_PARAMS", "VGG16_FEATURES_MACS_64"]

# torchvision cfg "D": ints are 3x3 conv widths, "M" a 2x2/2 max pool
VGG16_CFG: tuple = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG16_FEATURES_PARAMS = 14_714_688   # torchvision vgg16().features
VGG16_FEATURES_MACS_64 = 1_252_786_176  # fvcore count of .features on 1x3x64x64 (convs only)


class VGG16Encoder(StagedBackbone):
    """VGG16 ``.features`` + global average pooling; ``forward`` returns ``(B, 512 * width_mult)``."""

    strides = (2, 4, 8, 16, 32)

    def __init__(self, make_unit, width_mult: float = 1.0, batch_norm: bool = False,
                 track_running_stats: bool = True, in_channels: int = 3):
        super().__init__()
        self._units: list[nn.Module] = []
        layers: list[nn.Module] = []
        bounds, widths = [], []   # per stage: its (start, end) in ``features``, its width
        in_ch = in_channels
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                bounds.append((bounds[-1][1] if bounds else 0, len(layers)))
                widths.append(in_ch)
                continue
            w = int(round(v * width_mult))
            idx = len(self._units)
            unit = make_unit(ConvSpec(in_ch, w, 3, 1, 1, index=idx, role="conv", norm=bool(batch_norm),
                                      bias=True,
                                      track_running_stats=track_running_stats))
            self._units.append(unit)
            layers += [unit, nn.ReLU(inplace=True)]
            in_ch = w
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_features = in_ch
        self.widths = tuple(widths)
        self._stage_bounds = tuple(bounds)
        self._init_weights()

    def _init_weights(self) -> None:
        init_torchvision(self)

    # --- stages (StagedBackbone) --------------------------------------------------------------
    @property
    def stages(self) -> tuple[nn.Sequential, ...]:
        """Slices of ``features``: [conv unit, ReLU] x 2 or 3, then the max pool."""
        return tuple(self.features[a:b] for a, b in self._stage_bounds)

    def stage_taps(self, s: int, h: Tensor, state: dict) -> StageTaps:
        layers = self.stages[s]
        x, first = h, None
        for layer in layers[:-1]:
            x = layer(x)
            if first is None and isinstance(layer, nn.ReLU):
                first = x
        return StageTaps(input=h, first=first, last=x, out=layers[-1](x))

    def readout(self, h: Tensor) -> Tensor:
        return torch.flatten(self.avgpool(h), 1)

    def units(self) -> list[nn.Module]:
        """The 13 conv units in forward order."""
        return list(self._units)

    def last_shared_layer(self) -> nn.Module:
        """The last conv unit (conv5_3)."""
        return self._units[-1]

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)


@BACKBONES.register("vgg16")
def build_vgg16(make_unit, **kwargs) -> Backbone:
    enc = VGG16Encoder(make_unit, **kwargs)
    return Backbone(encoder=enc, feature_dim=enc.out_features, make_head=HeadFactory("linear", enc.out_features))
