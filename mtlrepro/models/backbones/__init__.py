"""Backbones: the network topologies every sharing scheme is built on (``BACKBONES`` registry).

* ``resnet18`` (:mod:`.resnet`) - torchvision's ResNet18, CelebA (ETR-NLP, Max Roaming);
* ``vgg16`` (:mod:`.vgg`) - torchvision's VGG16 ``.features`` (ETR-NLP Table 2);
* ``segnet`` (:mod:`.segnet`) - MTAN's SegNet, encoder + decoder (Cityscapes, NYUv2);
* ``resnet50_dilated`` (:mod:`.resnet_dilated`) - LibMTL's dilated ResNet-50, output stride 8 (CoNAL);
* ``resnet18_dilated`` (:mod:`.resnet_dilated`) - Vandenhende's dilated ResNet-18 (GatedMTL, PASCAL);
  both dilated ResNets take ``width_mult``;
* ``resnet20`` (:mod:`.resnet_cifar`) - CIFAR-style ResNet-20, CelebA at 32x32 (GatedMTL Tables 7, 8);
* ``dpt_vitb`` / ``dpt_vits`` (:mod:`.vit`) - timm's ViT-B/16 / ViT-S/16 (384) for DPT, GatedMTL
  Tables 3, 4 (default head ``dpt``: readout, reassemble and fusion per task); not staged;
* ``hrnet18`` (:mod:`.hrnet`) - timm's HRNetV2-W18, NYUD (GatedMTL Table 1); unit-wise schemes only
  (not staged).

All but ``hrnet18`` and the DPT encoders are :class:`~.protocol.StagedBackbone` encoders (the protocol and the builder
contract: :mod:`.protocol`), so the stage-wise schemes run on each of them. A new backbone is
one module here: a builder ``f(make_unit, **kwargs) -> Backbone`` registered in ``BACKBONES``,
whose encoder builds every conv with ``make_unit(ConvSpec)`` and subclasses ``StagedBackbone``.
"""
from ..registries import BACKBONES
from . import hrnet, resnet, resnet_cifar, resnet_dilated, segnet, vgg, vit  # noqa: F401  (register the backbones)
from .protocol import Backbone, StagedBackbone, StageTaps, spatial_size

__all__ = ["BACKBONES", "Backbone", "StagedBackbone", "StageTaps", "spatial_size"]
