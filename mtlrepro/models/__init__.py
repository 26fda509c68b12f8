"""Multi-task models: ``build_model(backbone, sharing, out_dims, head=None, conv_unit=None, **kwargs)``.

Where things are (one guess each):

===================  ===========================================================================
``backbones/``       the topologies: ``resnet.py`` (ResNet18), ``vgg.py`` (VGG16), ``segnet.py``
                     (SegNet); ``protocol.py``: the builder contract and the staged-backbone
                     protocol (stages, widths, strides, features) stage-wise schemes read
``heads/``           one task's head: ``linear.py`` (CelebA), ``segnet_head.py`` (MTAN's dense head)
``sharing/``         the schemes, one module each: ``hard_sharing``, ``mtan``, ``cross_stitch``,
                     ``task_routing``, ``max_roaming``, ``attentive``, ``etr``, ``etr_nlp`` (and
                     ``nlp``), ``conv_alternatives`` (``conv_alt``), ``single_task``
``units.py``         ``ConvSpec`` / ``ConvBN``: the conv-unit contract every backbone builds with
``primitives.py``    the non-learnable primitives and the NLP block of ETR-NLP
``interface.py``     ``MTLModel`` (what the trainer and weightings use), ``UnitMTLModel``,
                     ``TaskContext``, ``PerTask``
``batched/``         batched task passes: per-task-group BN, grouped per-task convs, chunking policy
``registries.py``    ``BACKBONES``, ``HEADS``, ``SHARING``, and which conv units each scheme takes
===================  ===========================================================================

The four fields of a model combine freely:

* ``backbone``: a ``BACKBONES`` name (``resnet18``, ``vgg16``, ``segnet``);
* ``sharing``: a ``SHARING`` name (``hard_sharing``, ``attentive``, ``task_routing``,
  ``max_roaming``, ``etr``, ``etr_nlp``, ``nlp``, ``conv_alt``, ``mtan``, ``cross_stitch``,
  ``single_task``) - the ``MTLModel`` subclass;
* ``head``: a ``HEADS`` name (``linear``, ``segnet``); None = the backbone's default;
  ``head_kwargs`` go to it;
* ``conv_unit``: None / ``"conv"`` (conv -> BN) or a unit the scheme accepts
  (:func:`~.registries.conv_units_for`): ``hard_sharing`` + ``nlp`` is the ``nlp`` scheme,
  ``hard_sharing`` + ``lbconv`` / ``shift`` / ``depthwise`` / ``ghost`` is ``conv_alt``, ``etr``
  + ``nlp`` is ``etr_nlp`` (:func:`~.registries.resolve_sharing`).

``kwargs`` are the scheme's keyword arguments (documented in each scheme's module) plus the
backbone's (``width_mult``, ``track_running_stats``, ``downsample_norm`` for ResNet18). Unknown
keywords raise ``TypeError``.
"""
from __future__ import annotations

from .backbones import BACKBONES, Backbone, StagedBackbone, StageTaps
from .heads import HEADS
from .interface import MTLModel, PerTask, TaskContext, UnitMTLModel, count_parameters
from .registries import SHARING, conv_units_for, resolve_sharing
from .units import ConvBN, ConvSpec
from . import sharing  # noqa: F401,E402  (registers the sharing schemes)

__all__ = ["build_model", "MTLModel", "UnitMTLModel", "BACKBONES", "HEADS", "SHARING", "Backbone",
           "StagedBackbone", "StageTaps", "ConvSpec", "ConvBN", "PerTask", "TaskContext",
           "count_parameters", "resolve_sharing", "conv_units_for"]


def build_model(backbone: str, sharing: str, out_dims: list[int], head: str | None = None,
                conv_unit: str | None = None, *, head_kwargs: dict | None = None,
                pretrained: str | None = None, **kwargs) -> MTLModel:
    """Build the ``sharing`` scheme (with ``conv_unit``) on ``backbone`` with one ``head`` per
    entry of ``out_dims`` (``head=None``: the backbone's default head). ``pretrained`` (e.g.
    ``"imagenet1k_v1"``) goes to the backbone builder, which loads those weights into every
    copy of the backbone (:mod:`.pretrained`); backbones without weights refuse it."""
    builder = BACKBONES.get(backbone)  # unknown names raise with suggestions before any work
    if pretrained is not None:
        known = getattr(builder, "pretrained_weights", ())
        if pretrained not in known:
            having = {n: BACKBONES.get(n).pretrained_weights for n in sorted(BACKBONES)
                      if getattr(BACKBONES.get(n), "pretrained_weights", ())}
            raise ValueError(f"backbone {backbone!r} has no pretrained weights {pretrained!r} "
                             f"({'it has ' + ', '.join(known) if known else 'it has none'}); "
                             f"backbones with weights: {having}")
        kwargs["pretrained"] = pretrained
    scheme, unit_kwargs = resolve_sharing(sharing, conv_unit)
    clash = sorted(set(unit_kwargs) & set(kwargs))
    if clash:
        raise TypeError(f"conv_unit={conv_unit!r} sets {clash}; do not pass them as well")
    if head is not None:
        HEADS.get(head)
        kwargs["head"] = head
    if head_kwargs:
        kwargs["head_kwargs"] = dict(head_kwargs)
    cls = SHARING.get(scheme)
    try:
        return cls(backbone=backbone, out_dims=list(out_dims), **unit_kwargs, **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise TypeError(f"{scheme} on {backbone}: {e}") from None
        raise
