"""Pretrained weights of timm models (HRNetV2-W18, the ViTs of DPT) from timm's own cache.

``create_timm(name, pretrained=None | "<tag or 'default'>", **kwargs)``:

* ``pretrained=None``: ``timm.create_model(name, pretrained=False, **kwargs)`` - random
  initialisation (the tiny profile; every report says so);
* otherwise the weights timm names for ``name`` (``"default"``: its default tag, e.g.
  ``vit_base_patch16_384.augreg_in21k_ft_in1k``) are loaded **offline** from the Hugging Face hub
  cache timm reads (``$HF_HOME/hub``, default ``~/.cache/huggingface/hub``), or, for the
  weights timm still serves from a URL, from torch hub's cache. Nothing is downloaded: when the
  file is missing, :class:`~mtlrepro.data.errors.DataError` names the weights, the cache folder
  and the one command that fills it on a machine with a network.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from torch import nn

from mtlrepro.data.errors import DataError

__all__ = ["create_timm", "timm_weights_name", "hf_cache_dir"]


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache timm downloads into (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def timm_weights_name(name: str, pretrained: str) -> str:
    """``arch.tag`` timm resolves ``name`` with tag ``pretrained`` ("default": timm's default)."""
    import timm

    full = name if pretrained == "default" else f"{name}.{pretrained}"
    cfg = timm.models.get_pretrained_cfg(full)
    if cfg is None:
        tags = [t for t in timm.list_pretrained(f"{name}.*")]
        raise ValueError(f"timm has no pretrained weights {full!r}; it has {', '.join(tags) or 'none'}")
    return full if pretrained != "default" else f"{name}.{cfg.tag}" if cfg.tag else name


@contextmanager
def _offline() -> Iterator[None]:
    """No network: the environment flag, and huggingface_hub's constant (read at its import)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - timm depends on it
        constants = None
    was = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = was
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def create_timm(name: str, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)``, with the weights ``pretrained`` from the local cache."""
    import timm

    if pretrained is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    full = timm_weights_name(name, pretrained)
    try:
        with _offline():
            return timm.create_model(full, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:   # huggingface_hub's offline miss is an OSError
        raise DataError(
            f"pretrained weights {full!r} (timm) are not in the local cache {hf_cache_dir()} "
            f"(set HF_HOME to use another one; timm's URL-served weights live in "
            f"$TORCH_HOME/hub/checkpoints). On a machine with a network run\n"
            f"  python -c \"import timm; timm.create_model('{full}', pretrained=True)\"\n"
            f"and copy the cache folder here. ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
            hf_cache_dir()) from None
