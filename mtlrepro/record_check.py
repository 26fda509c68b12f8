"""Whether a stored run record is trusted, and what happens to one that is not.

A record is trusted only if it is what its path says (:func:`check_record`): valid JSON of the
record's fields with their types, this schema version, and the profile, fingerprint, device kind
and seed of the folder and name it is found at. Anything else is *set aside* (:func:`set_aside`):
renamed ``<name>.<corrupt|misplaced|schema<v>|otherdata>-<UTC time>``, never deleted, with a
:class:`StaleRecordWarning` naming both files, and the job counts as not run, so the next sweep
reruns it; a copy under another seed's name is never counted as a second seed. A record that
cannot be read at all (permissions) is a fault of the machine
(:class:`~mtlrepro.train.faults.EnvironmentFault`), not a missing run.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import RunRecord

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


def check_record(path: Path, fingerprint: str | None = None, seed: int | None = None) -> "RunRecord | None":
    """The record at ``path`` if it is trusted: valid JSON of the record's fields and types, this
    schema version, and the profile, fingerprint (prefix; the whole ``fingerprint`` when given),
    device kind and seed its path names. Otherwise the file is set aside and None returned."""
    from .store import SCHEMA_VERSION, RunRecord, device_kind_slug, run_path   # the store imports this module
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


