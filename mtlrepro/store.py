"""The result store: immutable run records, content-addressed by fingerprint.

Layout (all under ``results/``, so runs from many machines merge by copying files)::

    results/runs/<profile>/<fingerprint[:16]>/<device kind>/seed<k>.json
    results/runs/.../seed<k>.json.lock   (a sweep's claim while the job runs: mtlrepro/claims.py)
    results/checkpoints/...   (same layout, ``.pt``; not versioned, deleted when a run finishes)

The fingerprint (:attr:`mtlrepro.recipe.Recipe.fingerprint`) covers the resolved configuration and
the implementation versions, not the recipe id: the same configuration used by several tables
(hard sharing on CelebA-8 is a row of four) is one directory, trained once, and every table
reports the same record. The device kind (``cpu``, ``cuda-nvidia-h100-80gb-hbm3``, ...) is a
level of its own, so a GPU run never stands in for a CPU one. The precision policy (``amp``,
``tf32``) is part of the configuration.

Records are written atomically (:mod:`mtlrepro.atomic_io`): an interrupted sweep never leaves a
half-written record behind, and a job is finished exactly when its record exists. A record is
trusted only if it is what its path says (:mod:`mtlrepro.record_check`); anything else is set aside,
never deleted, and its job counts as not run. A sweep also checks that a stored run saw the data it
has now (:mod:`mtlrepro.data_check`). Machine facts recorded with each run: :mod:`mtlrepro.run_environment`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(os.environ.get("MTLREPRO_RESULTS", ROOT / "results"))
SCHEMA_VERSION = 2       # 2: content-addressed layout, resolved config, segments, task weights


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    metrics: dict[str, float]
    seconds: float
    task_weights: list[float] | None = None   # the weighting's coefficients, mean over the epoch's steps
    weighting_logs: dict[str, Any] = field(default_factory=dict)   # its other per-step logs, epoch means
    lr: float | None = None                   # the model optimizer's learning rate during the epoch
    conflicts: dict[str, Any] | None = None   # gradient-conflict ratios per shared module (mtlrepro.conflicts)


@dataclass
class RunRecord:
    """What one (recipe, seed) run produced. ``status`` is "finished" or "failed"."""

    recipe_id: str
    fingerprint: str
    seed: int
    profile: str
    status: str
    recipe: dict[str, Any]
    data: dict[str, Any]                      # root, split evaluated, synthetic flag, sizes
    epochs: list[EpochRecord] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)   # metrics + selection rule + epoch
    complexity: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    failure: str = ""
    artifacts: dict[str, Any] = field(default_factory=dict)   # what a run exports (a search's architecture)
    seconds: float = 0.0                      # training time summed over every segment of the run
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=False, allow_nan=True)

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        d = dict(d)
        d["epochs"] = [EpochRecord(**e) for e in d.get("epochs", [])]
        return cls(**d)


def device_kind_slug(kind: str) -> str:
    """A directory name for a device kind ("cpu", "cuda:NVIDIA H100 80GB HBM3" -> "cuda-nvidia-h100-80gb-hbm3")."""
    return re.sub(r"[^a-z0-9.]+", "-", kind.lower()).strip("-") or "unknown"


def _run_dir(profile: str, fingerprint: str, root: Path | None) -> Path:
    return (root or RESULTS_DIR) / "runs" / profile / fingerprint[:16]


def run_path(profile: str, fingerprint: str, seed: int, device_kind: str, root: Path | None = None) -> Path:
    return _run_dir(profile, fingerprint, root) / device_kind_slug(device_kind) / f"seed{seed}.json"


def checkpoint_path(profile: str, fingerprint: str, seed: int, device_kind: str, root: Path | None = None) -> Path:
    return ((root or RESULTS_DIR) / "checkpoints" / profile / fingerprint[:16] / device_kind_slug(device_kind)
            / f"seed{seed}.pt")


def weights_path(profile: str, fingerprint: str, seed: int, device_kind: str, root: Path | None = None) -> Path:
    """The final weights of a run another recipe is initialised from (``keep_weights``), written
    atomically before its record: ``results/weights/<profile>/<fingerprint[:16]>/<device>/seed<k>.pt``."""
    return ((root or RESULTS_DIR) / "weights" / profile / fingerprint[:16] / device_kind_slug(device_kind)
            / f"seed{seed}.pt")


def tidy(root: Path | None = None) -> None:
    """What a sweep does first: remove the temp files of killed writers and the stale job claims
    of killed sweeps (:func:`~mtlrepro.atomic_io.clean_leftover_tmp`, :func:`mtlrepro.claims.remove_stale`)."""
    from .claims import remove_stale
    root = root or RESULTS_DIR
    clean_leftover_tmp(root)
    remove_stale(root)


def save_run(rec: RunRecord, root: Path | None = None) -> Path:
    kind = rec.environment.get("device_kind") or "unknown"
    path = run_path(rec.profile, rec.fingerprint, rec.seed, kind, root)
    write_text_atomic(path, rec.to_json())
    return path


def load_run(path: Path) -> RunRecord | None:
    """The record at ``path`` if it is a trusted record of the run its path names; None (the job
    counts as not run) after setting aside a file that is not (:func:`~mtlrepro.record_check.check_record`)."""
    from .record_check import check_record
    return check_record(Path(path))


def find_run(profile: str, recipe_id: str | None, fingerprint: str, seed: int, root: Path | None = None,
             device_kind: str | None = None) -> RunRecord | None:
    """The stored record of (fingerprint, seed) on ``device_kind`` (any kind when None: a finished
    record is preferred over a failed one, then the kinds in name order). ``recipe_id`` is not part
    of the address (kept for the callers' readability)."""
    from .record_check import check_record

    base = _run_dir(profile, fingerprint, root)
    kinds = [device_kind_slug(device_kind)] if device_kind else \
        sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    found = [r for k in kinds if (base / k / f"seed{seed}.json").exists()
             for r in [check_record(base / k / f"seed{seed}.json", fingerprint, seed)] if r is not None]
    if not found:
        return None
    return next((r for r in found if r.status == "finished"), found[0])


def iter_runs(profile: str | None = None, root: Path | None = None) -> Iterator[RunRecord]:
    """Every trusted record in the store (broken or misplaced files are set aside, not yielded)."""
    from .record_check import check_record

    base = (root or RESULTS_DIR) / "runs"
    pattern = f"{profile}/*/*/seed*.json" if profile else "*/*/*/seed*.json"
    for path in sorted(base.glob(pattern)):
        rec = check_record(path)
        if rec is not None:
            yield rec


# the store's API in one place (defined in the modules named above; imported last, they import this one)
from .atomic_io import clean_leftover_tmp, write_bytes_atomic, write_text_atomic  # noqa: E402
from .record_check import StaleRecordWarning, aside_path, check_record, record_problem, set_aside  # noqa: E402
from .run_environment import device_kind, environment, git_sha  # noqa: E402

__all__ = ["ROOT", "RESULTS_DIR", "SCHEMA_VERSION", "EpochRecord", "RunRecord", "device_kind_slug", "run_path",
           "checkpoint_path", "weights_path", "save_run", "load_run", "find_run", "iter_runs", "tidy",
           "clean_leftover_tmp", "write_bytes_atomic", "write_text_atomic", "StaleRecordWarning", "aside_path",
           "check_record", "record_problem", "set_aside", "device_kind", "environment", "git_sha"]
