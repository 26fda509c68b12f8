"""Faults of the machine, told apart from failures of the run.

A run *fails* when something of the run goes wrong (a non-finite loss, a method's own error): that
is a result, stored as a failed record. A full disk, a read-only results or cache folder, or an
unreadable checkpoint is a fault of the machine: nothing about the run is learnt from it, so it
must not be stored as a failed run (the next sweep would skip the job, "0 jobs to run"). Such a
fault raises :class:`EnvironmentFault`, naming the path; the sweep stops with that message and the
job stays runnable.

* :func:`check_writable` - before the first epoch: the checkpoint folder exists and takes a probe
  file, and has room for a checkpoint (``need_bytes``, an estimate from the model and optimizer
  state) with a margin;
* :func:`save_checkpoint` - atomic ``torch.save`` (tmp + ``os.replace``); torch reports a full
  disk as ``RuntimeError`` ("PytorchStreamWriter failed writing file ..."), not ``OSError``:
  both become an :class:`EnvironmentFault`, and the partial file is removed;
* :func:`load_checkpoint_or_set_aside` - a checkpoint that cannot be *read* (permissions) is an
  environment fault; one whose *content* is corrupt (truncated zip, missing keys) is renamed
  ``<name>.corrupt-<UTC time>`` (named in a warning, never deleted) and the run restarts from
  scratch (one checkpoint is kept per run: there is no older good one).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

__all__ = ["EnvironmentFault", "check_writable", "save_checkpoint", "load_checkpoint_or_set_aside",
           "state_bytes"]

#: a checkpoint needs this many times the estimated bytes free (torch.save's zip overhead, the
#: tmp copy next to the old checkpoint during the atomic replace)
SPACE_MARGIN = 2.5


class EnvironmentFault(RuntimeError):
    """A fault of the machine (disk, permissions) that the run is not to blame for."""

    def __init__(self, message: str, path: Path | str | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)


def state_bytes(*modules_or_optimizers) -> int:
    """Bytes of the tensors in the models' and optimizers' state dicts (a checkpoint's size)."""
    total = 0
    for m in modules_or_optimizers:
        sd = m.state_dict()
        stack = [sd]
        while stack:
            d = stack.pop()
            items = d.values() if isinstance(d, dict) else d if isinstance(d, (list, tuple)) else ()
            for v in items:
                if isinstance(v, torch.Tensor):
                    total += v.numel() * v.element_size()
                elif isinstance(v, (dict, list, tuple)):
                    stack.append(v)
    return total


def check_writable(folder: Path, need_bytes: int = 0) -> None:
    """Raise :class:`EnvironmentFault` unless ``folder`` can be created, written, and has room."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-", suffix=".tmp")
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            Path(probe).unlink(missing_ok=True)
    except OSError as e:
        raise EnvironmentFault(f"cannot write to {folder} ({e.strerror or e}): the run's checkpoints and record go "
                               f"there; make it writable or set MTLREPRO_RESULTS to another folder", folder) from None
    free = shutil.disk_usage(folder).free
    if need_bytes and free < SPACE_MARGIN * need_bytes:
        raise EnvironmentFault(f"not enough free space in {folder}: {free / 2**20:.0f} MiB free, a checkpoint of this "
                               f"run needs about {need_bytes / 2**20:.0f} MiB ({SPACE_MARGIN}x that to replace it "
                               f"safely); free some space or set MTLREPRO_RESULTS to another disk", folder)


def save_checkpoint(path: Path, state: dict, save: Callable[[dict, str], None] = torch.save) -> None:
    """Write ``state`` to ``path`` atomically; a failed write is an :class:`EnvironmentFault`."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EnvironmentFault(f"could not write the checkpoint {path} ({first}): is the disk full or the folder "
                               f"read-only? Nothing was stored for this run; re-run to resume from its last "
                               f"checkpoint", path) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint_or_set_aside(path: Path, required: tuple[str, ...] = ("model", "optimizer", "epochs")) -> dict | None:
    """The checkpoint's state (tensors on the CPU), or None after setting a corrupt one aside."""
    if not os.access(path, os.R_OK):
        raise EnvironmentFault(f"cannot read the checkpoint {path} (permission denied): fix its permissions, or move "
                               f"it away to restart the run from scratch", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        missing = [k for k in required if k not in state]
        if missing:
            raise ValueError(f"it has no {', '.join(missing)}")
        return state
    except PermissionError as e:
        raise EnvironmentFault(f"cannot read the checkpoint {path} ({e.strerror})", path) from None
    except Exception as e:  # noqa: BLE001 - any unreadable content: truncated zip, unpickling error, ...
        from ..store import aside_path
        aside = aside_path(path)
        try:
            os.replace(path, aside)
        except OSError as e2:
            raise EnvironmentFault(f"the checkpoint {path} is corrupt ({type(e).__name__}) and cannot be moved "
                                   f"aside ({e2.strerror})", path) from None
        print(f"mtlrepro: the checkpoint {path} is corrupt ({type(e).__name__}: {str(e)[:120]}); set aside as "
              f"{aside.name}, the run restarts from scratch", file=sys.stderr)
        return None
