"""Task heads: one per task, on the backbone's representation (``HEADS`` registry).

A head builder is ``f(in_features, out_dim, **head_kwargs) -> nn.Module``; ``in_features`` is the
backbone's ``feature_dim`` (the channels of what its encoder returns). Registered:

* ``linear`` (:mod:`.linear`): ``Linear(in_features, out_dim)`` on a pooled ``(B, F)`` vector -
  the classification backbones' default (ResNet18 / VGG16 on CelebA);
* ``segnet`` (:mod:`.segnet_head`): MTAN's Conv3x3 -> Conv1x1 dense prediction layer on a
  ``(B, F, H, W)`` map - SegNet's default;
* ``aspp`` (:mod:`.aspp`): LibMTL's DeepLab ``DeepLabHead`` (ASPP rates 12/24/36) upsampled
  back to the input size - the dilated ResNet-50's default;
* ``dpt`` (:mod:`.dpt`): DPT's reassemble + fusion decoder on the ViT's (B, 8C, H/16, W/16) map,
  output at the input size;
* ``hrnet`` (:mod:`.hrnet_head`): Vandenhende's HighResolutionHead on the 270-channel concatenated
  branches, upsampled x4 - hrnet18's default.

Every backbone names its default head (``Backbone.make_head``); ``build_model(head=...)``
replaces it by a registered one. Heads are built at construction only (a picklable
:class:`HeadFactory`, no closures), so models deep-copy and pickle cleanly.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..registries import HEADS
from . import aspp, dpt, hrnet_head, linear, segnet_head  # noqa: F401  (register the heads)

__all__ = ["HEADS", "HeadFactory", "head_factory"]


class HeadFactory:
    """``factory(out_dim)`` builds head ``name`` on ``in_features`` inputs with ``kwargs``."""

    def __init__(self, name: str, in_features: int, **kwargs: Any):
        HEADS.get(name)  # unknown names raise with suggestions at construction
        self.name, self.in_features, self.kwargs = name, int(in_features), dict(kwargs)

    def __call__(self, out_dim: int) -> nn.Module:
        return HEADS.get(self.name)(self.in_features, out_dim, **self.kwargs)

    def __repr__(self) -> str:
        return f"HeadFactory({self.name!r}, {self.in_features}, **{self.kwargs})"


def head_factory(feature_dim: int, default: Callable[[int], nn.Module], head: str | None = None,
                 head_kwargs: dict | None = None) -> Callable[[int], nn.Module]:
    """The head factory a model uses: the backbone's ``default`` unless ``head`` names one."""
    if head is None:
        if head_kwargs:
            raise ValueError(f"head_kwargs {sorted(head_kwargs)} given without a head name")
        return default
    return HeadFactory(head, feature_dim, **(head_kwargs or {}))
