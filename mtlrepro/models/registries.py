"""The model registries: backbones, heads, sharing schemes, and which conv units a scheme takes.

``build_model(backbone, sharing, out_dims, head=None, conv_unit=None, **kwargs)`` picks one entry
of each; they combine freely because each sees the others only through small interfaces:

* ``BACKBONES``: name -> builder ``f(make_unit, **backbone_kwargs) -> Backbone``
  (:mod:`mtlrepro.models.backbones`): the topology, every conv of it built by the sharing
  scheme's conv-unit factory ``make_unit(ConvSpec)``. Encoders that implement
  :class:`~mtlrepro.models.backbones.protocol.StagedBackbone` also run the stage-wise schemes.
* ``HEADS``: name -> builder ``f(in_features, out_dim, **head_kwargs) -> nn.Module``
  (:mod:`mtlrepro.models.heads`): one task's head on the backbone's representation. Every
  backbone names a default head; ``head=`` replaces it.
* ``SHARING``: name -> ``MTLModel`` subclass, constructed as
  ``cls(backbone=..., out_dims=..., **kwargs)`` (:mod:`mtlrepro.models.sharing`).
* conv units: ``(sharing, conv_unit) -> (registered scheme, its kwargs)``
  (:func:`register_conv_unit`, :func:`resolve_sharing`): e.g. hard sharing whose convs are NLP
  blocks is the ``nlp`` scheme, ETR whose shared branch is an NLP block is ``etr_nlp``. The
  standard unit ``"conv"`` (conv -> BN) goes with every scheme.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from mtlrepro.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from .backbones.protocol import Backbone
    from .interface import MTLModel

__all__ = ["BACKBONES", "HEADS", "SHARING", "STANDARD_CONV_UNIT", "register_conv_unit",
           "resolve_sharing", "conv_units_for"]

BACKBONES: Registry[Callable[..., "Backbone"]] = Registry("backbone")
HEADS: Registry[Callable[..., "nn.Module"]] = Registry("head")
SHARING: Registry[type["MTLModel"]] = Registry("sharing scheme")

STANDARD_CONV_UNIT = "conv"   # conv -> BN, what every scheme builds when no conv unit is named
_CONV_UNITS: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}


def register_conv_unit(sharing: str, conv_unit: str, scheme: str, **scheme_kwargs: Any) -> None:
    """Declare that ``sharing`` with conv unit ``conv_unit`` is the registered ``scheme`` built
    with ``scheme_kwargs`` (called by the module that implements it)."""
    key = (sharing, conv_unit)
    value = (scheme, dict(scheme_kwargs))
    if _CONV_UNITS.get(key, value) != value:
        raise ValueError(f"conv unit {conv_unit!r} of {sharing!r} is registered twice")
    _CONV_UNITS[key] = value


def conv_units_for(sharing: str) -> list[str]:
    """The conv units ``sharing`` accepts (always including ``"conv"``)."""
    return sorted({STANDARD_CONV_UNIT} | {u for s, u in _CONV_UNITS if s == sharing})


def resolve_sharing(sharing: str, conv_unit: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(registered scheme, kwargs it adds)`` for ``sharing`` built with ``conv_unit``.

    ``None`` or ``"conv"``: the scheme itself, no kwargs. Raises ``ValueError`` listing the
    accepted units when the pair is not registered."""
    SHARING.get(sharing)  # unknown names raise with suggestions
    if conv_unit is None or conv_unit == STANDARD_CONV_UNIT:
        return sharing, {}
    if (sharing, conv_unit) not in _CONV_UNITS:
        raise ValueError(f"sharing {sharing!r} has no conv unit {conv_unit!r}; it accepts "
                         f"{', '.join(conv_units_for(sharing))}")
    scheme, kwargs = _CONV_UNITS[(sharing, conv_unit)]
    return scheme, dict(kwargs)
