"""Atomic, durable file writes, and the clean-up of what a killed writer leaves.

A file is written to a temp file beside it (``.<name>~<host>~<pid>~*.tmp``), flushed and fsynced,
given the mode ``0o666 & ~umask`` (``mkstemp`` alone makes 0600: records are as readable as any file
the user creates), moved into place with ``os.replace`` and the folder fsynced. Readers see the old
file or the new one, never half of one; of concurrent writers of one file, one whole file remains.
:func:`clean_leftover_tmp` removes the temp files of writers that were killed (this host and a dead
pid, or over an hour old).
"""
from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path


def _host_tag() -> str:
    """This host's name as temp-file names carry it (what :func:`clean_leftover_tmp` matches)."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode ``0o666 & ~umask``, flushed to the disk."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode ``0o666 & ~umask``, flushed to the disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}~{_host_tag()}~{os.getpid()}~", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())     # mkstemp makes 0600: records are as readable as other files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (``os.umask`` sets it
    for a moment, which a thread creating a file at that moment would see)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: a temp file of a writer that is not known dead is removed when it is older than this
TMP_MAX_AGE = 3600.0
_TMP_OWNER = re.compile(r"~(?P<host>[A-Za-z0-9.-]*)~(?P<pid>\d+)~[^~]*\.tmp$")


def clean_leftover_tmp(root: Path | None = None, max_age: float = TMP_MAX_AGE) -> list[Path]:
    """Remove the temp files (``*.tmp``) that killed writers left under ``runs/`` and
    ``checkpoints/``: those whose name says this host and a dead pid, and any older than
    ``max_age`` seconds (a writer's file is modified as it writes); then the stale job claims
    (:func:`mtlrepro.claims.remove_stale`). Returns the temp files removed."""
    from .claims import pid_alive

    if root is None:
        from .store import RESULTS_DIR
        root = RESULTS_DIR
    host = _host_tag()
    now, removed = time.time(), []
    for sub in ("runs", "checkpoints"):
        base = root / sub
        if not base.is_dir():
            continue
        for tmp in base.rglob("*.tmp"):
            m = _TMP_OWNER.search(tmp.name)
            try:
                old = now - tmp.stat().st_mtime > max_age
                dead = m is not None and m["host"] == host and not pid_alive(int(m["pid"]))
                if (old or dead) and tmp.is_file():
                    tmp.unlink()
                    removed.append(tmp)
            except OSError:
                continue        # gone meanwhile, or not ours to remove: left alone
    if removed:
        print(f"mtlrepro: removed {len(removed)} temporary file(s) left by interrupted writers under {root} "
              f"(e.g. {removed[0].relative_to(root)})", file=sys.stderr)
    return removed


