"""Where datasets are found: ``--data-root`` or ``MTLREPRO_DATA``; generated tiny data in a cache."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from ..data.errors import DataError

EXPECTED = {
    "celeba": (
        "CelebA (aligned faces) under DATA_ROOT, either torchvision's layout\n"
        "    DATA_ROOT/celeba/img_align_celeba/000001.jpg ... 202599.jpg\n"
        "    DATA_ROOT/celeba/list_attr_celeba.txt\n"
        "    DATA_ROOT/celeba/list_eval_partition.txt\n"
        "  or the official one\n"
        "    DATA_ROOT/Img/img_align_celeba/*.jpg\n"
        "    DATA_ROOT/Anno/list_attr_celeba.txt\n"
        "    DATA_ROOT/Eval/list_eval_partition.txt"
    ),
    "cityscapes": (
        "MTAN's preprocessed Cityscapes (128x256, cityscapes2.zip from github.com/lorenmt/mtan)\n"
        "    DATA_ROOT/cityscapes/{train,val}/image/<i>.npy     128x256x3 float in [0, 1]\n"
        "    DATA_ROOT/cityscapes/{train,val}/label_7/<i>.npy   128x256 float, 0..6, -1 = ignore\n"
        "    DATA_ROOT/cityscapes/{train,val}/depth/<i>.npy     128x256x1 float, 0 = invalid\n"
        "  (i = 0..2974 train, 0..499 val); DATA_ROOT/cityscapes/low_res/{train,val}/... and\n"
        "  DATA_ROOT/{train,val}/... (DATA_ROOT = that folder itself) are accepted too"
    ),
    "nyuv2": (
        "MTAN's preprocessed NYUv2 (288x384, nyuv2.zip from github.com/lorenmt/mtan)\n"
        "    DATA_ROOT/nyuv2/{train,val}/image/<i>.npy    288x384x3 float in [0, 1]\n"
        "    DATA_ROOT/nyuv2/{train,val}/label/<i>.npy    288x384 float, 0..12, -1 = ignore\n"
        "    DATA_ROOT/nyuv2/{train,val}/depth/<i>.npy    288x384x1 float metres, 0 = invalid\n"
        "    DATA_ROOT/nyuv2/{train,val}/normal/<i>.npy   288x384x3 float unit normals, all-zero = invalid\n"
        "  (i = 0..794 train, 0..653 val); DATA_ROOT/nyuv2/low_res/{train,val}/... and\n"
        "  DATA_ROOT/{train,val}/... (DATA_ROOT = that folder itself) are accepted too"
    ),
}


def data_root_or_explain(dataset: str, data_root: str | None) -> Path:
    root = data_root or os.environ.get("MTLREPRO_DATA")
    if not root:
        raise DataError(
            f"no dataset configured for {dataset}. Pass --data-root DIR (make: DATA_ROOT=DIR) or set "
            f"MTLREPRO_DATA=DIR, where DIR holds\n  {EXPECTED.get(dataset, dataset)}\n"
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
