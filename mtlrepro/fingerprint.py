"""What a run's fingerprint covers: the resolved configuration and the implementation versions.

A run is a pure function of

* the **resolved configuration**: every recipe field that can change the result, with the
  keyword defaults of the sharing scheme, its backbone and the weighting written out
  (:func:`resolve`), so that changing an in-code default changes the fingerprint;
* the **implementation versions** (:func:`implementation_versions`): an integer ``version`` per
  model class, backbone builder, weighting class, update scheme and data pipeline, bumped by hand
  whenever a change alters behaviour (a refactor that keeps results bit-identical keeps it);
* the **device kind** and the **precision policy** (``amp``, ``tf32`` are recipe fields; the
  device kind is a directory level of the store, see :mod:`mtlrepro.store`);
* the **data**: the checksum of the tensors trained and evaluated on is recorded in every run
  (``record.data["checksum"]``).

Components declare ``version = N`` (class attribute, or module attribute ``VERSION`` for a
function); a component without one is version 1.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

#: The training loop's own version (trainer + evaluation protocol), bumped on behaviour changes.
TRAINER_VERSION = 1

_SKIP = {"self", "backbone", "out_dims", "n_tasks", "make_unit"}


def _defaults(fn: Callable) -> tuple[dict[str, Any], bool]:
    """(keyword defaults of ``fn``, whether it takes ``**kwargs``)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}, True
    out, var_kw = {}, False
    for name, p in sig.parameters.items():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif name not in _SKIP and p.default is not p.empty and p.kind is not p.VAR_POSITIONAL:
            out[name] = p.default
    return out, var_kw


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def resolve_kwargs(given: dict[str, Any], *fns: Callable) -> dict[str, Any]:
    """``given`` completed with the defaults of ``fns`` (first wins; e.g. scheme, then backbone)."""
    out: dict[str, Any] = {}
    for fn in fns:
        defaults, _ = _defaults(fn)
        for k, v in defaults.items():
            out.setdefault(k, v)
    out.update(given)
    return {k: _jsonable(v) for k, v in sorted(out.items())}


def resolve(recipe) -> dict[str, Any]:
    """The recipe's result fields with the model's and weighting's in-code defaults written out."""
    from .methods import WEIGHTINGS
    from .models import BACKBONES, SHARING, resolve_sharing

    d = recipe.result_dict()
    scheme, unit_kwargs = resolve_sharing(recipe.sharing, recipe.conv_unit)
    # one configuration, one fingerprint: aliases and (scheme, conv unit) spellings resolve
    d["sharing"] = scheme
    d.pop("conv_unit", None)
    d["weighting"] = WEIGHTINGS.get(recipe.weighting).name
    d["sharing_kwargs"] = resolve_kwargs({**unit_kwargs, **recipe.sharing_kwargs}, SHARING.get(scheme).__init__,
                                         BACKBONES.get(recipe.backbone))
    d["weighting_kwargs"] = resolve_kwargs(dict(recipe.weighting_kwargs), WEIGHTINGS.get(recipe.weighting).__init__)
    return {k: _jsonable(v) for k, v in d.items()}


def _version(obj: Any) -> int:
    return int(getattr(obj, "version", getattr(inspect.getmodule(obj), "VERSION", 1)))


def implementation_versions(recipe) -> dict[str, int]:
    """``{component: version}`` for every component the recipe's run executes."""
    from .data.datasets import get_dataset
    from .methods import WEIGHTINGS
    from .models import BACKBONES, HEADS, SHARING, resolve_sharing
    from .train.steps import STEPS

    scheme, _ = resolve_sharing(recipe.sharing, recipe.conv_unit)
    heads = {f"head:{recipe.head}": _version(HEADS.get(recipe.head))} if recipe.head else {}
    return {**heads,
        "trainer": TRAINER_VERSION,
        f"backbone:{recipe.backbone}": _version(BACKBONES.get(recipe.backbone)),
        f"sharing:{scheme}": _version(SHARING.get(scheme)),
        f"weighting:{WEIGHTINGS.get(recipe.weighting).name}": _version(WEIGHTINGS.get(recipe.weighting)),
        f"update:{recipe.update}": _version(STEPS.get(recipe.update)),
        f"data:{recipe.dataset}": get_dataset(recipe.dataset).version,
    }
