"""The result store: immutable run records, content-addressed by fingerprint.

Layout (all under ``results/``, so runs from many machines merge by copying files)::

    results/runs/<profile>/<fingerprint[:16]>/<device kind>/seed<k>.json
    results/checkpoints/...   (same layout, ``.pt``; not versioned, deleted when a run finishes)

The fingerprint (:attr:`mtlrepro.recipe.Recipe.fingerprint`) covers the resolved configuration and
the implementation versions, not the recipe id: the same configuration used by several tables
(hard sharing on CelebA-8 is a row of four) is one directory, trained once, and every table
reports the same record. The device kind (``cpu``, ``cuda-nvidia-h100-80gb-hbm3``, ...) is a
level of its own, so a GPU run never stands in for a CPU one. The precision policy (``amp``,
``tf32``) is part of the configuration.

Records are written atomically (temp file + ``os.replace``), so an interrupted sweep never
leaves a half-written record behind, and concurrent writers of the same record leave one whole
file; a job is finished exactly when its record exists. :func:`find_run` checks the record's
fingerprint and schema version before trusting it.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(os.environ.get("MTLREPRO_RESULTS", ROOT / "results"))
SCHEMA_VERSION = 2       # 2: content-addressed layout, resolved config, segments, task weights


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())     # mkstemp makes 0600: records are as readable as other files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def set_aside(path: Path, why: str) -> Path | None:
    """Rename an untrusted file ``<name>.corrupt-<UTC time>`` (never deleted) and warn, naming both."""
    import datetime as _dt
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, aside)
    except OSError:
        aside = None
    warnings.warn(f"{path}: {why}; {'set aside as ' + aside.name if aside else 'left in place'}, the job counts "
                  "as not run", StaleRecordWarning)
    return aside


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


def save_run(rec: RunRecord, root: Path | None = None) -> Path:
    kind = rec.environment.get("device_kind") or "unknown"
    path = run_path(rec.profile, rec.fingerprint, rec.seed, kind, root)
    write_text_atomic(path, rec.to_json())
    return path


def load_run(path: Path) -> RunRecord:
    return RunRecord.from_dict(json.loads(path.read_text()))


def _load_trusted(path: Path) -> RunRecord | None:
    """A record, or None after setting aside a file that is not one (truncated, malformed)."""
    try:
        return RunRecord.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        set_aside(path, f"not a run record (invalid JSON: {e})")
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        set_aside(path, f"malformed run record ({type(e).__name__}: {e})")
    return None


class StaleRecordWarning(UserWarning):
    """A stored record that is not trusted (another schema version or fingerprint)."""


def _check(path: Path, fingerprint: str, seed: int) -> RunRecord | None:
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        warnings.warn(f"{path}: unreadable run record ({e}); treated as missing", StaleRecordWarning)
        return None
    except json.JSONDecodeError as e:
        set_aside(path, f"not a run record (invalid JSON: {e})")
        return None
    if not isinstance(raw, dict):
        set_aside(path, f"not a run record (a JSON {type(raw).__name__})")
        return None
    if raw.get("schema_version") != SCHEMA_VERSION:
        warnings.warn(f"{path}: schema version {raw.get('schema_version')} != {SCHEMA_VERSION}; treated as "
                      "missing (re-run it)", StaleRecordWarning)
        return None
    if raw.get("fingerprint") != fingerprint or raw.get("seed") != seed:
        warnings.warn(f"{path}: holds fingerprint {str(raw.get('fingerprint'))[:16]} seed {raw.get('seed')}, "
                      f"expected {fingerprint[:16]} seed {seed}; treated as missing", StaleRecordWarning)
        return None
    try:
        return RunRecord.from_dict(raw)
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        set_aside(path, f"malformed run record ({type(e).__name__}: {e})")
        return None


def find_run(profile: str, recipe_id: str | None, fingerprint: str, seed: int, root: Path | None = None,
             device_kind: str | None = None) -> RunRecord | None:
    """The stored record of (fingerprint, seed) on ``device_kind`` (any kind when None: a finished
    record is preferred over a failed one, then the kinds in name order). ``recipe_id`` is not part
    of the address (kept for the callers' readability)."""
    base = _run_dir(profile, fingerprint, root)
    kinds = [device_kind_slug(device_kind)] if device_kind else \
        sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    found = [r for k in kinds if (base / k / f"seed{seed}.json").exists()
             for r in [_check(base / k / f"seed{seed}.json", fingerprint, seed)] if r is not None]
    if not found:
        return None
    return next((r for r in found if r.status == "finished"), found[0])


def iter_runs(profile: str | None = None, root: Path | None = None) -> Iterator[RunRecord]:
    base = (root or RESULTS_DIR) / "runs"
    pattern = f"{profile}/*/*/seed*.json" if profile else "*/*/*/seed*.json"
    for path in sorted(base.glob(pattern)):
        rec = _load_trusted(path)
        if rec is not None:
            yield rec


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=5)
        sha = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_kind(dev: "torch.device | str") -> str:
    """What kind of device ``dev`` is: "cpu", or "cuda:<device name>" (the name of *that* GPU)."""
    import torch

    dev = torch.device(dev)
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    return dev.type


def environment(dev: "torch.device | str | None" = None) -> dict[str, Any]:
    """The software and hardware of this process, for the device ``dev`` actually used."""
    import torch

    dev = torch.device(dev) if dev is not None else torch.device("cpu")
    env: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "git_sha": git_sha(),
        "cpu_threads": torch.get_num_threads(), "hostname": platform.node(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device_kind": device_kind(dev),
    }
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        env["gpu"] = torch.cuda.get_device_name(index)
        env["device"] = f"{env['gpu']} (cuda:{index})"
        env["cudnn"] = torch.backends.cudnn.version()
    else:
        env["gpu"] = None
        env["device"] = dev.type
    return env
