"""Generic one-time preprocessing cache: build tensors once, reuse them every run.

Why: decoding 200k JPEGs (CelebA) or thousands of PNGs takes minutes, while loading
one file of uint8 tensors takes seconds. The cache must never silently serve stale
data, so next to the tensor file ``<name>.pt`` sits a JSON manifest ``<name>.json``
recording

* ``fingerprint`` -- what the source looked like (file sizes, mtimes, counts);
* ``params``      -- the preprocessing parameters (size, resize mode, ...);
* ``tensors``     -- shape and dtype of every tensor in the payload;
* ``sha256``      -- checksum of the tensor file.

The cache is rebuilt (and the reason printed on stderr) when the manifest is
missing, when fingerprint or params differ, when the checksum does not match or
when the file cannot be read. Both files are written to a temp file in the same
folder and moved into place with ``os.replace``, so a crash never leaves a
half-written cache behind; the data file is replaced before the manifest, and a
manifest that describes an older data file fails the checksum. Two processes
building the same cache at once only duplicate work.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from mtlrepro.data.errors import DataError

#: Bump when the layout of cache files changes; older caches are then rebuilt.
CACHE_FORMAT = 1

Payload = dict[str, Any]  # tensors plus small picklable-by-weights_only values (str, int, lists)


@dataclass(frozen=True)
class CacheResult:
    """What :func:`load_or_build` returns: the payload and whether it was (re)built."""

    payload: Payload
    built: bool
    data_path: Path
    manifest_path: Path
    reason: str | None  # why it was (re)built; None when the cache was reused


def root_tag(root: str | Path) -> str:
    """A short, stable name for a dataset root (its resolved path's hash): caches of different
    roots never collide."""
    return hashlib.sha1(str(Path(root).expanduser().resolve()).encode()).hexdigest()[:10]


def default_cache_dir(root: str | Path, dataset: str) -> Path:
    """``<root>/.mtlrepro_cache`` if it can be written, else ``~/.cache/mtlrepro/<dataset>-<hash>``."""
    root = Path(root).expanduser()
    local = root / ".mtlrepro_cache"
    rwx = os.W_OK | os.X_OK
    if (local.is_dir() and os.access(local, rwx)) or (not local.exists() and os.access(root, rwx)):
        return local
    base = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return base / "mtlrepro" / f"{dataset}-{root_tag(root)}"


def cache_paths(cache_dir: str | Path, name: str) -> tuple[Path, Path]:
    """``(<cache_dir>/<name>.pt, <cache_dir>/<name>.json)``."""
    cache_dir = Path(cache_dir)
    return cache_dir / f"{name}.pt", cache_dir / f"{name}.json"


def sha256_file(path: str | Path, chunk: int = 1 << 24) -> str:
    """Hex sha256 of a file, read in 16 MiB chunks (a full CelebA cache is ~2.5 GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _jsonable(x: Any) -> Any:
    """Normalise through JSON so tuples and lists compare equal to what was stored."""
    return json.loads(json.dumps(x, sort_keys=True))


def _tensor_specs(payload: Payload) -> dict[str, dict[str, Any]]:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
            for k, v in payload.items() if isinstance(v, torch.Tensor)}


def _diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    parts = [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
             for k in keys if old.get(k) != new.get(k)]
    return "; ".join(parts[:6]) + (" ..." if len(parts) > 6 else "")


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` a sibling temp file, then ``os.replace`` it onto ``path``.

    The temp name is unique per process and call (not ``mkstemp``, whose 0600 mode would
    ignore the umask and make a shared cache unreadable to other users).
    """
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def try_load(cache_dir: str | Path, name: str, *, fingerprint: dict, params: dict,
             verify: bool = True, mmap: bool = True) -> tuple[Payload | None, str | None]:
    """Return ``(payload, None)`` for a valid cache, else ``(None, reason)``.

    ``mmap=True`` maps the tensors from the file instead of reading them, so a
    caller that needs one split of a large cache only pages in that split.
    """
    data_path, manifest_path = cache_paths(cache_dir, name)
    if not manifest_path.is_file() or not data_path.is_file():
        return None, f"no cache at {data_path}"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        return None, f"manifest {manifest_path} is unreadable ({e})"
    if manifest.get("format") != CACHE_FORMAT:
        return None, f"cache format {manifest.get('format')!r} -> {CACHE_FORMAT}"
    if manifest.get("params") != _jsonable(params):
        return None, "preprocessing parameters changed (" + _diff(manifest.get("params") or {}, _jsonable(params)) + ")"
    if manifest.get("fingerprint") != _jsonable(fingerprint):
        return None, "source data changed (" + _diff(manifest.get("fingerprint") or {}, _jsonable(fingerprint)) + ")"
    if data_path.stat().st_size != manifest.get("bytes"):
        return None, f"{data_path} has {data_path.stat().st_size} bytes, manifest says {manifest.get('bytes')}"
    if verify:
        digest = sha256_file(data_path)
        if digest != manifest.get("sha256"):
            return None, f"checksum mismatch for {data_path} (file is corrupted or was modified)"
    try:
        payload = torch.load(data_path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 -- any unreadable cache is simply rebuilt
        return None, f"{data_path} is unreadable ({type(e).__name__}: {e})"
    if not isinstance(payload, dict) or _tensor_specs(payload) != manifest.get("tensors"):
        return None, f"{data_path} does not hold the tensors its manifest lists"
    return payload, None


def save(cache_dir: str | Path, name: str, payload: Payload, *, fingerprint: dict,
         params: dict) -> dict[str, Any]:
    """Write payload and manifest atomically; return the manifest."""
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the cache folder {cache_dir} ({e}); pass a writable "
                        "cache_dir.", cache_dir) from e
    data_path, manifest_path = cache_paths(cache_dir, name)
    digest: dict[str, str] = {}

    def write_data(tmp: str) -> None:
        torch.save(payload, tmp)
        digest["sha256"] = sha256_file(tmp)

    try:
        _atomic_write(data_path, write_data)
        manifest = {
            "format": CACHE_FORMAT,
            "file": data_path.name,
            "bytes": data_path.stat().st_size,
            "sha256": digest["sha256"],
            "fingerprint": _jsonable(fingerprint),
            "params": _jsonable(params),
            "tensors": _tensor_specs(payload),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
        }
        _atomic_write(manifest_path,
                      lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1, sort_keys=True)))
    except OSError as e:
        raise DataError(f"cannot write the cache {data_path} ({e}); free some disk space or pass "
                        "another cache_dir.", data_path) from e
    return manifest


def load_or_build(cache_dir: str | Path, name: str, *, fingerprint: dict, params: dict,
                  build: Callable[[], Payload], verify: bool = True, mmap: bool = True,
                  quiet: bool = False) -> CacheResult:
    """Load ``<cache_dir>/<name>.pt`` if its manifest matches, else ``build()`` and save it.

    ``fingerprint`` and ``params`` must be JSON-serialisable; ``build`` returns a dict
    of tensors (and small str/int/list values). The reason for every (re)build goes to
    stderr unless ``quiet``.
    """
    data_path, manifest_path = cache_paths(cache_dir, name)
    payload, reason = try_load(cache_dir, name, fingerprint=fingerprint, params=params,
                               verify=verify, mmap=mmap)
    if payload is not None:
        return CacheResult(payload, False, data_path, manifest_path, None)
    if not quiet:
        verb = "building" if reason and reason.startswith("no cache") else "rebuilding"
        print(f"mtlrepro: {verb} cache {data_path}: {reason}", file=sys.stderr, flush=True)
    payload = build()
    save(cache_dir, name, payload, fingerprint=fingerprint, params=params)
    if mmap:  # hand back the same (file-backed) tensors a later run would get
        payload = torch.load(data_path, map_location="cpu", weights_only=True, mmap=True)
    return CacheResult(payload, True, data_path, manifest_path, reason)


def fill_in_chunks(n: int, work, *, chunk: int, num_workers: int, desc: str, unit: str,
                   progress: bool) -> None:
    """Run ``work(lo, hi)`` over ``range(n)`` in chunks on a thread pool, with a progress bar.

    Threads, not processes: the builders' per-item work (JPEG decode, ``np.load``, numpy checks)
    releases the GIL and writes rows of preallocated tensors in place. ``work`` returns the number
    of items done. The first error cancels the chunks not yet started and is re-raised.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm.auto import tqdm

    bounds = [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool, \
            tqdm(total=n, desc=desc, unit=unit, disable=not progress) as bar:
        futures = [pool.submit(work, lo, hi) for lo, hi in bounds]
        try:
            for fut in as_completed(futures):
                bar.update(fut.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise
