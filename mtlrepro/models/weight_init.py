"""The two weight initialisations the backbones and heads follow.

* :func:`init_torchvision` - torchvision's ResNet / VGG: Kaiming-normal (fan_out, relu) conv
  weights, zero conv biases, norm weight 1 / bias 0 (He et al., ICCV 2015).
* :func:`init_xavier` - MTAN's SegNet (``lorenmt/mtan``): Xavier-normal learnable conv weights
  (Glorot & Bengio, AISTATS 2010), zero conv biases, norm weight 1 / bias 0.

Both walk ``module.modules()`` in order, so the draws (and therefore a seeded model) depend only
on the order the modules were built in.
"""
from __future__ import annotations

from torch import nn

__all__ = ["init_torchvision", "init_xavier"]


def init_torchvision(module: nn.Module) -> None:
    """torchvision's initialisation: Kaiming-normal (fan_out) convs, zero biases, unit-scale norms."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def init_xavier(module: nn.Module) -> None:
    """MTAN's initialisation: Xavier-normal learnable convs with zero bias, unit-scale norms."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.weight.requires_grad:
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
