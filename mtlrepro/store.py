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

Records are written atomically (temp file ``.<name>~<host>~<pid>~*.tmp``, fsync, ``os.replace``,
fsync of the folder), readable like any file the user creates (``0o666 & ~umask``: ``mkstemp``
alone makes them 0600), so an interrupted sweep never leaves a half-written record behind and
concurrent writers of the same record leave one whole file; a job is finished exactly when its
record exists. A killed writer's temp file is removed by the next sweep
(:func:`clean_leftover_tmp`: its pid is dead on this host, or it is over an hour old).

A record is trusted only if it is what its path says (:func:`_check`): valid JSON of the
record's fields with their types, this schema version, and the profile, fingerprint, device kind
and seed of the folder and name it is found at. Anything else is *set aside*, renamed
``<name>.<corrupt|misplaced|schema<v>>-<UTC time>`` (never deleted; a
:class:`StaleRecordWarning` names both files), and the job counts as not run, so the next sweep
reruns it; a copy under another seed's name is never counted as a second seed. A record that
cannot be read at all (permissions) is a fault of the machine
(:class:`~mtlrepro.train.faults.EnvironmentFault`), not a missing run.
"""
from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(os.environ.get("MTLREPRO_RESULTS", ROOT / "results"))
SCHEMA_VERSION = 2       # 2: content-addressed layout, resolved config, segments, task weights


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
    ``max_age`` seconds (a writer's file is modified as it writes). Returns what was removed."""
    from .claims import pid_alive

    root = root or RESULTS_DIR
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


def aside_path(path: Path, tag: str = "corrupt") -> Path:
    """A free name ``<name>.<tag>-<UTC time>[-n]`` beside ``path`` to move an untrusted file to."""
    import datetime as _dt
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.{tag}-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.{tag}-{stamp}-{n}")
    return aside


def set_aside(path: Path, why: str, tag: str = "corrupt") -> Path | None:
    """Rename an untrusted record to :func:`aside_path` (never deleted) and warn, naming both."""
    aside = aside_path(path, tag)
    try:
        os.replace(path, aside)
    except FileNotFoundError:     # another process set it aside first: it has warned
        return None
    except OSError:
        aside = None
    _warn(f"{path}: {why}; {'set aside as ' + aside.name if aside else 'could not be moved aside, left in place'}, "
          "the job counts as not run")
    return aside


def _warn(message: str) -> None:
    """One line on stderr (``mtlrepro store: StaleRecordWarning: ...``), as a filterable warning."""
    warnings.warn_explicit(message, StaleRecordWarning, filename="mtlrepro store", lineno=0)


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


def save_run(rec: RunRecord, root: Path | None = None) -> Path:
    kind = rec.environment.get("device_kind") or "unknown"
    path = run_path(rec.profile, rec.fingerprint, rec.seed, kind, root)
    write_text_atomic(path, rec.to_json())
    return path


def load_run(path: Path) -> RunRecord | None:
    """The record at ``path`` if it is a trusted record of the run its path names; None (the job
    counts as not run) after setting aside a file that is not (:func:`_check`)."""
    return _check(Path(path))


class StaleRecordWarning(UserWarning):
    """A stored record that is not trusted (broken, misplaced, another schema version); set aside."""


_NUMBER = (int, float)
#: the record's fields and their JSON types (None: the field may be null)
_FIELDS: dict[str, tuple] = {
    "recipe_id": (str,), "fingerprint": (str,), "seed": (int,), "profile": (str,), "status": (str,),
    "recipe": (dict,), "data": (dict,), "epochs": (list,), "final": (dict,), "complexity": (dict,),
    "environment": (dict,), "failure": (str,), "artifacts": (dict,), "seconds": _NUMBER, "schema_version": (int,),
}
_REQUIRED = ("recipe_id", "fingerprint", "seed", "profile", "status", "recipe", "data")
_EPOCH_FIELDS: dict[str, tuple] = {
    "epoch": (int,), "train_loss": _NUMBER, "metrics": (dict,), "seconds": _NUMBER,
    "task_weights": (list, type(None)), "weighting_logs": (dict,), "lr": (*_NUMBER, type(None)),
    "conflicts": (dict, type(None)),
}
_STATUSES = ("finished", "failed")


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _bad_fields(raw: dict, fields: dict[str, tuple], required: tuple[str, ...], where: str) -> str | None:
    missing = [k for k in required if k not in raw]
    if missing:
        return f"{where}has no {', '.join(missing)}"
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        return f"{where}has unknown field(s) {', '.join(unknown)}"
    for k, v in raw.items():
        types = fields[k]
        if not isinstance(v, types) or isinstance(v, bool):   # JSON true is no seed, epoch or loss
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            return f"{where}{k} is {_type_name(v)} {str(v)[:40]!r}, expected {want}"
    return None


def record_problem(raw: Any) -> str | None:
    """Why the decoded JSON ``raw`` is not a run record of this schema version (None: it is one)."""
    if not isinstance(raw, dict):
        return f"not a run record (a JSON {_type_name(raw)})"
    why = _bad_fields(raw, _FIELDS, _REQUIRED, "")
    if why is None and raw.get("status") not in _STATUSES:
        why = f"status is {raw['status']!r}, expected one of {', '.join(_STATUSES)}"
    for i, e in enumerate(raw.get("epochs") or []):
        if why is not None:
            break
        why = (f"epochs[{i}] is {_type_name(e)}, expected an object" if not isinstance(e, dict) else
               _bad_fields(e, _EPOCH_FIELDS, ("epoch", "train_loss", "metrics", "seconds"), f"epochs[{i}]."))
    if why is None and "metrics" in raw.get("final", {}):
        metrics = raw["final"]["metrics"]
        if not isinstance(metrics, dict):
            why = f"final.metrics is {_type_name(metrics)}, expected an object"
        else:
            bad = [k for k, v in metrics.items() if v is not None and (isinstance(v, bool) or not isinstance(v, _NUMBER))]
            if bad:
                why = f"final.metrics[{bad[0]!r}] is {_type_name(metrics[bad[0]])}, expected a number"
    return None if why is None else f"malformed run record ({why})"


_SEED_NAME = re.compile(r"^seed(-?\d+)\.json$")


def path_identity(path: Path) -> dict[str, Any] | None:
    """What a record's path says it holds: profile, fingerprint prefix, device kind slug, seed
    (``runs/<profile>/<fp16>/<kind>/seed<k>.json``); None for a path of another shape."""
    m = _SEED_NAME.match(path.name)
    if m is None:
        return None
    return {"profile": path.parent.parent.parent.name, "fingerprint": path.parent.parent.name,
            "kind": path.parent.name, "seed": int(m.group(1))}


def _check(path: Path, fingerprint: str | None = None, seed: int | None = None) -> RunRecord | None:
    """The record at ``path`` if it is trusted: valid JSON of the record's fields and types, this
    schema version, and the profile, fingerprint (prefix; the whole ``fingerprint`` when given),
    device kind and seed its path names. Otherwise the file is set aside and None returned."""
    from .train.faults import EnvironmentFault

    try:
        text = path.read_text()
    except FileNotFoundError:     # set aside by another process meanwhile
        return None
    except (OSError, UnicodeDecodeError) as e:
        if isinstance(e, UnicodeDecodeError):
            set_aside(path, f"not a run record (not UTF-8 text: {e.reason})")
            return None
        raise EnvironmentFault(f"cannot read the run record {path} ({e.strerror or e}): fix its permissions "
                               "(or move it away to rerun the job)", path) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        set_aside(path, f"not a run record (invalid JSON: {e}{'; truncated?' if e.pos >= len(text) - 1 else ''})")
        return None
    if isinstance(raw, dict) and raw.get("schema_version") != SCHEMA_VERSION:
        v = raw.get("schema_version")
        newer = isinstance(v, int) and v > SCHEMA_VERSION
        set_aside(path, f"schema version {v!r} != {SCHEMA_VERSION} "
                        f"({'written by a newer mtlrepro' if newer else 'an older layout'}; rerun it)",
                  tag=f"schema{v if isinstance(v, int) else 'x'}")
        return None
    why = record_problem(raw)
    if why is not None:
        set_aside(path, why)
        return None
    where = path_identity(path)
    kind = raw.get("environment", {}).get("device_kind") or "unknown"
    held = {"profile": raw["profile"], "fingerprint": raw["fingerprint"][:16], "kind": device_kind_slug(kind),
            "seed": raw["seed"]}
    expected = dict(where or held)
    if seed is not None:
        expected["seed"] = seed
    wrong = [k for k in ("profile", "fingerprint", "kind", "seed") if held[k] != expected[k]]
    if fingerprint is not None and raw["fingerprint"] != fingerprint and "fingerprint" not in wrong:
        wrong.append("fingerprint")
    if wrong:
        own = run_path(raw["profile"], raw["fingerprint"], raw["seed"], kind,
                       path.parents[4] if where and len(path.parents) > 4 else None)
        says = ", ".join(f"{k} {held[k]}" for k in wrong)
        wants = ", ".join(f"{k} {expected[k] if k != 'fingerprint' else (fingerprint or expected[k])[:16]}"
                          for k in wrong)
        set_aside(path, f"holds {says} but its path says {wants} (a copy of {own.relative_to(own.parents[4])}?); "
                        f"not counted as {path.name}", tag="misplaced")
        return None
    try:
        return RunRecord.from_dict(raw)
    except (TypeError, KeyError, ValueError, AttributeError) as e:   # a case record_problem() missed
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
    """Every trusted record in the store (broken or misplaced files are set aside, not yielded)."""
    base = (root or RESULTS_DIR) / "runs"
    pattern = f"{profile}/*/*/seed*.json" if profile else "*/*/*/seed*.json"
    for path in sorted(base.glob(pattern)):
        rec = _check(path)
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
