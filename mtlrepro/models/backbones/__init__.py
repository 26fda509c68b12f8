"""Backbones: the network topologies every sharing scheme is built on (``BACKBONES`` registry).

* ``resnet18`` (:mod:`.resnet`) - torchvision's ResNet18, CelebA (ETR-NLP, Max Roaming);
* ``vgg16`` (:mod:`.vgg`) - torchvision's VGG16 ``.features`` (ETR-NLP Table 2);
* ``segnet`` (:mod:`.segnet`) - MTAN's SegNet, encoder + decoder (Cityscapes, NYUv2);
* ``resnet50_dilated`` (:mod:`.resnet_dilated`) - LibMTL's dilated ResNet-50, output stride 8 (CoNAL).

All of them are :class:`~.protocol.StagedBackbone` encoders (the protocol and the builder
contract: :mod:`.protocol`), so the stage-wise schemes run on each of them. A new backbone is
one module here: a builder ``f(make_unit, **kwargs) -> Backbone`` registered in ``BACKBONES``,
whose encoder builds every conv with ``make_unit(ConvSpec)`` and subclasses ``StagedBackbone``.
"""
from ..registries import BACKBONES
from . import resnet, resnet_dilated, segnet, vgg  # noqa: F401  (register the four backbones)
from .protocol import Backbone, StagedBackbone, StageTaps, spatial_size

__all__ = ["BACKBONES", "Backbone", "StagedBackbone", "StageTaps", "spatial_size"]
