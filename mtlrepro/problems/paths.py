"""Where datasets are found: ``--data-root`` or ``MTLREPRO_DATA``; generated tiny data in a cache."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from ..data.errors import DataError

def expected_layout(dataset: str) -> str:
    """What a user must put where under DATA_ROOT for ``dataset`` (its registry entry's text)."""
    from ..data.datasets import get_dataset
    return get_dataset(dataset).expected_layout


def ensure_tiny_dataset(dataset: str) -> Path:
    """The generated tiny copy of ``dataset`` (its registry entry's generator and sizes)."""
    from ..data.datasets import get_dataset
    from ..registry import load_target
    spec = get_dataset(dataset)
    return ensure_tiny(dataset, load_target(spec.tiny_generator), seed=0, **spec.tiny_kwargs)


def data_root_or_explain(dataset: str, data_root: str | None) -> Path:
    root = data_root or os.environ.get("MTLREPRO_DATA")
    if not root:
        raise DataError(
            f"no dataset configured for {dataset}. Pass --data-root DIR (make: DATA_ROOT=DIR) or set "
            f"MTLREPRO_DATA=DIR, where DIR holds\n  {expected_layout(dataset)}\n"
            f"To try the whole pipeline on generated data instead: PROFILE=tiny (make) or --profile tiny.")
    return Path(root).expanduser()


def cache_root() -> Path:
    return Path(os.environ.get("MTLREPRO_CACHE", Path.home() / ".cache" / "mtlrepro")).expanduser()


def tiny_root(dataset: str) -> Path:
    """Generated tiny datasets live in the cache, never beside real data."""
    return cache_root() / "tiny" / dataset


def ensure_tiny(dataset: str, generate: Callable[..., Any], **kwargs: Any) -> Path:
    """The generated tiny dataset's root, generating it once: into a temp folder, marked complete,
    then renamed into place - so a crashed or concurrent generation never leaves a half-written
    set that a later run would take as complete."""
    root = tiny_root(dataset)
    marker = root / ".generated"
    if marker.is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{dataset}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    generate(tmp, **kwargs)
    (tmp / ".generated").write_text(f"{generate.__name__}({kwargs})\n")
    if root.exists() and not marker.is_file():
        shutil.rmtree(root, ignore_errors=True)  # a stale, incomplete earlier attempt
    try:
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not marker.is_file():  # not another process finishing first: a real failure
            raise
    return root


def cache_dir_override(root: str | Path, dataset: str) -> Path | None:
    """``$MTLREPRO_CACHE/<dataset>-<hash of root>`` when that variable is set, else None (the
    loader's default, :func:`mtlrepro.data.cache.default_cache_dir`)."""
    if not os.environ.get("MTLREPRO_CACHE"):
        return None
    from ..data.cache import root_tag
    return Path(os.environ["MTLREPRO_CACHE"]).expanduser() / f"{dataset}-{root_tag(root)}"
