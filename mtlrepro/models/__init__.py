"""Multi-task models: ``build_model(backbone, sharing, out_dims, **kwargs) -> MTLModel``.

Two registries, so backbones and sharing schemes combine freely:

* ``BACKBONES`` (``resnet18``, ``vgg16``, ``segnet``; another one is a registered builder
  ``f(make_unit, **backbone_kwargs) -> Backbone``): the network topology, whose every conv is
  built by the sharing scheme's conv-unit factory;
* ``SHARING`` (``hard_sharing``, ``attentive``, ``task_routing``, ``max_roaming``, ``etr``,
  ``etr_nlp``, ``nlp``, ``conv_alt``, ``mtan``, ``cross_stitch``, ``single_task``): the ``MTLModel`` subclass, i.e. what a conv unit is.

``kwargs`` are the scheme's keyword arguments (documented in each class' module) plus the
backbone's (``width_mult``, ``track_running_stats``, ``downsample_norm`` for ResNet18). Unknown
keywords raise ``TypeError``.
"""
from __future__ import annotations

from .base import (BACKBONES, SHARING, Backbone, ConvBN, ConvSpec, MTLModel, PerTask, TaskContext,
                   UnitMTLModel, count_parameters)
from . import resnet  # noqa: F401  (registers "resnet18")
from . import vgg  # noqa: F401  (registers "vgg16")
from . import segnet  # noqa: F401  (registers "segnet")
from . import sharing  # noqa: F401  (registers the sharing schemes)

__all__ = ["build_model", "MTLModel", "UnitMTLModel", "BACKBONES", "SHARING", "Backbone", "ConvSpec",
           "ConvBN", "PerTask", "TaskContext", "count_parameters"]


def build_model(backbone: str, sharing: str, out_dims: list[int], **kwargs) -> MTLModel:
    """Build the ``sharing`` scheme on ``backbone`` with one head per entry of ``out_dims``."""
    BACKBONES.get(backbone)  # unknown names raise with suggestions before any work
    cls = SHARING.get(sharing)
    try:
        return cls(backbone=backbone, out_dims=list(out_dims), **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise TypeError(f"{sharing} on {backbone}: {e}") from None
        raise
