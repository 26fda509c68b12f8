"""Where datasets are found: ``--data-root`` or ``MTLREPRO_DATA``; generated tiny data in a cache;
which split sizes a profile accepts (``subset``: ``--allow-subset``)."""
from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Callable

from ..data.errors import DataError

EXPECT_MODES = ("full", "any")


def data_expect(profile: str, expect: str | None = None) -> str:
    """The loaders' ``expect`` for a problem builder: ``expect`` when given, else ``"full"`` (the
    official split sizes) for the ``full`` profile and ``"any"`` for ``subset`` (``--allow-subset``:
    the runs are stored apart, under ``runs/subset/``) and ``tiny`` (generated data)."""
    if expect is not None:
        if expect not in EXPECT_MODES:
            raise ValueError(f"expect must be one of {', '.join(EXPECT_MODES)}, got {expect!r}")
        return "any" if profile == "tiny" else expect
    return "full" if profile == "full" else "any"


def source_info(**splits: Any) -> dict[str, Any]:
    """What a run records about where its tensors came from, per split (``train=..., eval=...``,
    each a loader's result): the sha256 of the cache file read and of the source fingerprint
    (:mod:`mtlrepro.data.cache`). The trainer's ``checksum`` of the tensors is recorded beside it."""
    return {"cache_sha256": {k: getattr(v, "cache_sha256", "") for k, v in splits.items()},
            "source_sha256": {k: getattr(v, "source_sha256", "") for k, v in splits.items()}}


def note_subset(title: str, expect: str, profile: str, sizes: dict[str, int],
                official: dict[str, int]) -> bool:
    """With ``--allow-subset`` (full profile, ``expect="any"``) and other sizes than the official
    ones, say so on stderr; returns whether the run trains on a subset."""
    if profile == "tiny" or expect != "any":
        return False
    differ = {k: v for k, v in sizes.items() if official.get(k) != v}
    if differ:
        got = ", ".join(f"{k} {v} (official {official.get(k)})" for k, v in differ.items())
        print(f"mtlrepro: --allow-subset: {title} {got}", file=sys.stderr, flush=True)
    return bool(differ)

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


def _marker_text(generate: Callable[..., Any], kwargs: dict) -> str:
    version = getattr(sys.modules.get(generate.__module__), "GENERATOR_VERSION", 1)
    return f"{generate.__module__}.{generate.__name__}({kwargs}) version {version}\n"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def ensure_tiny(dataset: str, generate: Callable[..., Any], **kwargs: Any) -> Path:
    """The generated tiny dataset's root, generating it once: into a temp folder, marked complete,
    then renamed into place - so a crashed or concurrent generation never leaves a half-written
    set that a later run would take as complete. The marker names the generator, its arguments and
    its module's ``GENERATOR_VERSION``: a copy made by other ones is stale and made again."""
    root = tiny_root(dataset)
    marker = root / ".generated"
    want = _marker_text(generate, kwargs)
    found = _read(marker)
    if found == want:
        return root
    if found is not None:
        print(f"mtlrepro: regenerating the tiny {dataset} data at {root} (made by "
              f"{found.strip()!r}, now {want.strip()!r})", file=sys.stderr, flush=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp = root.parent / f".{dataset}.{tag}.tmp"
    try:
        generate(tmp, **kwargs)
        (tmp / ".generated").write_text(want)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if root.exists() and _read(marker) != want:  # stale or incomplete: move it aside, then drop it
        old = root.parent / f".{dataset}.{tag}.old"
        try:
            os.rename(root, old)
        except OSError:
            pass  # another process moved it first
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if _read(marker) != want:  # not another process finishing first: a real failure
            raise
    return root


def cache_dir_override(root: str | Path, dataset: str) -> Path | None:
    """``$MTLREPRO_CACHE/<dataset>-<hash of root>`` when that variable is set, else None (the
    loader's default, :func:`mtlrepro.data.cache.default_cache_dir`)."""
    if not os.environ.get("MTLREPRO_CACHE"):
        return None
    from ..data.cache import root_tag
    return Path(os.environ["MTLREPRO_CACHE"]).expanduser() / f"{dataset}-{root_tag(root)}"
