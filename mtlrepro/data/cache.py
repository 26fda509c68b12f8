"""Generic one-time preprocessing cache: build tensors once, reuse them every run.

Why: decoding 200k JPEGs (CelebA) or thousands of PNGs takes minutes, while loading
one file of uint8 tensors takes seconds. The cache must never silently serve stale
data, so next to the tensor file ``<name>.pt`` sits a JSON manifest ``<name>.json``
recording

* ``fingerprint`` -- what the source looked like: the content hash of every small annotation
  file (split lists, attribute files), and for the per-sample files (JPEGs, ``.npy``, PNGs, ``.mat``)
  their names, sizes and mtimes plus the content hash of an evenly spaced sample of them
  (:func:`fingerprint_files`; hashing every file would cost as much as the decode the cache saves);
* ``params``      -- the preprocessing parameters (size, resize mode, ...);
* ``tensors``     -- shape and dtype of every tensor in the payload;
* ``sha256``      -- checksum of the tensor file.

The cache is rebuilt (and the reason printed on stderr) when the manifest is
missing, when fingerprint or params differ, when the checksum does not match or
when the file cannot be read. The payload is saved only after ``build()`` returned, i.e. after
a complete, successful read of every source file, and only if the source still looks as it did
before the read (``recheck``); a failed read leaves any older cache untouched but never serves it
(its fingerprint no longer matches). Both files are written to a temp file in the same
folder and moved into place with ``os.replace``, so a crash never leaves a
half-written cache behind; the data file is replaced before the manifest, and a
manifest that describes an older data file fails the checksum. Two processes
building the same cache at once only duplicate work.

What a run records (:attr:`CacheResult.sha256`, :attr:`CacheResult.source_sha256`): the sha256 of
the cache file it read and a sha256 of the source fingerprint, next to the trainer's own
``checksum`` of the tensors trained on (``record.data["checksum"]``).
"""
from __future__ import annotations

import errno
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
    sha256: str = ""         # sha256 of the cache file (its manifest's, verified unless verify=False)
    source_sha256: str = ""  # :func:`fingerprint_digest` of the source fingerprint


#: What every "split sizes are not the official ones" message tells the user to do.
SUBSET_HINT = ("pass --allow-subset (the same as --profile subset) to train on other split sizes; those runs are "
               "stored and reported apart from the full profile's (from Python: profile 'subset')")
#: How many per-sample files :func:`fingerprint_files` hashes by content (evenly spaced).
SAMPLE_FILES = 16


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


def fingerprint_digest(fingerprint: dict) -> str:
    """sha256 of a fingerprint's canonical JSON: one string a run can record for its source."""
    return hashlib.sha256(json.dumps(_jsonable(fingerprint), sort_keys=True).encode()).hexdigest()


def text_fingerprint(path: str | Path) -> dict:
    """An annotation file (split list, attribute table): its size and content hash. No mtime, so
    touching the file alone does not force a rebuild; any edit does."""
    path = Path(path)
    return {"name": path.name, "size": path.stat().st_size, "sha256": sha256_file(path)}


def stat_files(paths: list[Path], base: Path) -> list[tuple[str, int, int]]:
    """``(path relative to base, size, mtime_ns)`` of every file, in the given order."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((os.path.relpath(p, base), st.st_size, st.st_mtime_ns))
    return out


def empty_files(stats: list[tuple[str, int, int]]) -> list[str]:
    """The names among :func:`stat_files` entries that have 0 bytes (an interrupted copy)."""
    return [name for name, size, _ in stats if size == 0]


def fingerprint_files(stats: list[tuple[str, int, int]], base: Path,
                      sample: int = SAMPLE_FILES) -> dict:
    """Per-sample source files: count, bytes, a hash of every (name, size, mtime) and the content
    sha256 of ``sample`` evenly spaced files (so a copy that keeps sizes and mtimes but not the
    bytes, e.g. ``cp -p`` of other files, is still caught where the sample falls)."""
    n, m = len(stats), min(sample, len(stats))
    pick = sorted({round(k * (n - 1) / max(m - 1, 1)) for k in range(m)})  # m distinct, first and last
    h = hashlib.sha256()
    for k in pick:
        name = stats[k][0]
        h.update(name.encode() + b"\0")
        h.update(bytes.fromhex(sha256_file(Path(base) / name)))
    return {"files": n, "bytes": sum(s for _, s, _ in stats),
            "stat_sha1": hashlib.sha1(repr(stats).encode()).hexdigest(),
            "sample": len(pick), "sample_sha256": h.hexdigest()}


def _jsonable(x: Any) -> Any:
    """Normalise through JSON so tuples and lists compare equal to what was stored."""
    return json.loads(json.dumps(x, sort_keys=True))


def _tensor_specs(payload: Payload) -> dict[str, dict[str, Any]]:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
            for k, v in payload.items() if isinstance(v, torch.Tensor)}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _diff(old: dict, new: dict) -> str:
    """``key: old -> new`` for every differing (nested keys dotted: ``images.bytes``) entry."""
    old, new = _flat(old), _flat(new)
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
    payload, reason, _ = _try_load(cache_dir, name, fingerprint=fingerprint, params=params,
                                   verify=verify, mmap=mmap)
    return payload, reason


def _try_load(cache_dir: str | Path, name: str, *, fingerprint: dict, params: dict, verify: bool,
              mmap: bool) -> tuple[Payload | None, str | None, dict]:
    payload, reason, manifest = None, None, {}
    try:
        payload, reason, manifest = _try_load_unchecked(cache_dir, name, fingerprint, params, verify, mmap)
    except OSError as e:  # an unreadable cache is rebuilt (and a failing write then says why)
        reason = f"cache {cache_paths(cache_dir, name)[0]} is unreadable ({e})"
    return payload, reason, manifest


def _try_load_unchecked(cache_dir: str | Path, name: str, fingerprint: dict, params: dict, verify: bool,
                        mmap: bool) -> tuple[Payload | None, str | None, dict]:
    data_path, manifest_path = cache_paths(cache_dir, name)
    if not manifest_path.is_file() or not data_path.is_file():
        return None, f"no cache at {data_path}", {}
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        return None, f"manifest {manifest_path} is unreadable ({e})", {}
    if not isinstance(manifest, dict):
        return None, f"manifest {manifest_path} is not a JSON object", {}
    if manifest.get("format") != CACHE_FORMAT:
        return None, f"cache format {manifest.get('format')!r} -> {CACHE_FORMAT}", {}
    if manifest.get("params") != _jsonable(params):
        return None, "preprocessing parameters changed (" + _diff(manifest.get("params") or {}, _jsonable(params)) + ")", {}
    if manifest.get("fingerprint") != _jsonable(fingerprint):
        return None, "source data changed (" + _diff(manifest.get("fingerprint") or {}, _jsonable(fingerprint)) + ")", {}
    if data_path.stat().st_size != manifest.get("bytes"):
        return None, f"{data_path} has {data_path.stat().st_size} bytes, manifest says {manifest.get('bytes')}", {}
    if verify:
        digest = sha256_file(data_path)
        if digest != manifest.get("sha256"):
            return None, f"checksum mismatch for {data_path} (file is corrupted or was modified)", {}
    try:
        payload = torch.load(data_path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 -- any unreadable cache is simply rebuilt
        return None, f"{data_path} is unreadable ({type(e).__name__}: {e})", {}
    if not isinstance(payload, dict) or _tensor_specs(payload) != manifest.get("tensors"):
        return None, f"{data_path} does not hold the tensors its manifest lists", {}
    return payload, None, manifest


#: errno values of a cache write that are the machine's fault, not the data's
_MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


#: what torch.save's RuntimeError says when the file cannot be written (a full disk)
_TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")


def _write_fault(e: OSError, message: str, path: Path) -> Exception:
    """A full disk, a read-only or forbidden folder is an ``EnvironmentFault`` (the sweep stops,
    exit 3, nothing stored); any other failure (e.g. the cache path runs through a file) a
    :class:`DataError` about the path given."""
    if e.errno in _MACHINE_ERRNOS:
        from mtlrepro.train.faults import EnvironmentFault
        return EnvironmentFault(message, path)
    return DataError(message, path)


def save(cache_dir: str | Path, name: str, payload: Payload, *, fingerprint: dict,
         params: dict) -> dict[str, Any]:
    """Write payload and manifest atomically; return the manifest."""
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_fault(e, f"cannot create the cache folder {cache_dir} ({e}); pass a writable "
                           "cache_dir (or set MTLREPRO_CACHE).", cache_dir) from e
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
        raise _write_fault(e, f"cannot write the cache {data_path} ({e}); free some disk space or pass "
                           "another cache_dir (or set MTLREPRO_CACHE).", data_path) from e
    except RuntimeError as e:  # torch.save on a full disk: "PytorchStreamWriter failed writing file"
        if not any(k in str(e) for k in _TORCH_WRITE_FAILURES):
            raise
        from mtlrepro.train.faults import EnvironmentFault
        first = str(e).splitlines()[-1]
        raise EnvironmentFault(f"cannot write the cache {data_path} ({first}): is the disk full? Free some "
                               "space or set MTLREPRO_CACHE to another folder; nothing was cached.",
                               data_path) from e
    return manifest


def load_or_build(cache_dir: str | Path, name: str, *, fingerprint: dict, params: dict,
                  build: Callable[[], Payload], verify: bool = True, mmap: bool = True,
                  quiet: bool = False, recheck: Callable[[], dict] | None = None,
                  source: str | Path | None = None) -> CacheResult:
    """Load ``<cache_dir>/<name>.pt`` if its manifest matches, else ``build()`` and save it.

    ``fingerprint`` and ``params`` must be JSON-serialisable; ``build`` returns a dict
    of tensors (and small str/int/list values). The reason for every (re)build goes to
    stderr unless ``quiet``. ``recheck()`` (the function that made ``fingerprint``) runs again
    after ``build()``: if the source changed during the read, nothing is saved and a
    :class:`DataError` naming ``source`` says so (the tensors may mix old and new files).
    """
    data_path, manifest_path = cache_paths(cache_dir, name)
    digest = fingerprint_digest(fingerprint)
    payload, reason, manifest = _try_load(cache_dir, name, fingerprint=fingerprint, params=params,
                                          verify=verify, mmap=mmap)
    if payload is not None:
        return CacheResult(payload, False, data_path, manifest_path, None,
                           str(manifest.get("sha256", "")), digest)
    if not quiet:
        verb = "building" if reason and reason.startswith("no cache") else "rebuilding"
        print(f"mtlrepro: {verb} cache {data_path}: {reason}", file=sys.stderr, flush=True)
    payload = build()
    if recheck is not None:
        after = recheck()
        if _jsonable(after) != _jsonable(fingerprint):
            where = f" under {source}" if source is not None else ""
            raise DataError(f"the source files{where} changed while the cache {data_path} was being "
                            f"built ({_diff(_jsonable(fingerprint), _jsonable(after))}); nothing was "
                            "cached. Run again once the copy is complete.", source or data_path)
    manifest = save(cache_dir, name, payload, fingerprint=fingerprint, params=params)
    if mmap:  # hand back the same (file-backed) tensors a later run would get
        payload = torch.load(data_path, map_location="cpu", weights_only=True, mmap=True)
    return CacheResult(payload, True, data_path, manifest_path, reason, manifest["sha256"], digest)


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
