"""Where the whole reproduction stands: per table, its rows, runs, verdicts and what is left to run.

For every registered table (:func:`mtlrepro.tables.table_registry`) and profile:

- **rows**: printed rows; **ready**: rows whose recipe has ``status: ready``; **not implemented**
  (no recipe, or ``status: not_implemented``; the recipe's ``notes`` are the reason) and
  **ambiguous** (``status: ambiguous``);
- **runs**: finished records of the ready rows over the seeds their recipes ask for (profile
  applied), failed ones apart, and how many rows have every seed (the paper's count ``table.seeds``
  beside it);
- **verdicts**: the cells of :func:`mtlrepro.compare.compare_table` tallied by verdict
  (:data:`mtlrepro.verdict.VERDICTS`);
- **to run**: the (recipe, seed) jobs of the table's recipe file (searches that feed a retraining,
  the row another table's Δ is measured against included) from :func:`mtlrepro.launch.plan_jobs`
  that have no record on any device kind (what the report counts), plus the jobs waiting for an
  upstream run; their estimated GPU-hours from :func:`mtlrepro.cost.job_seconds` (``None``: no
  calibration for any of them). Failed jobs are not "to run" (``mtlrepro run --retry-failed``).

Nothing is built or trained: planning hashes configurations (fingerprints) and reads records.
A table whose files cannot be read (or whose diff or plan raises) carries the error on its
line; the other tables are still reported.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .profiles import PROFILES

from .recipe import Recipe, RecipeSet, recipe_sets
from .verdict import VERDICTS

__all__ = ["RowNote", "ProfileStatus", "TableStatus", "Status", "table_status", "collect_status",
           "profiles_of", "verdict_text", "hours_text", "runs_text", "seeds_text"]


@dataclass(frozen=True)
class RowNote:
    """A row that is not run, and why (its recipe's notes)."""
    row: str
    label: str
    reason: str


@dataclass
class ProfileStatus:
    profile: str
    synthetic: bool
    runs: int = 0                 # finished records of the ready rows (requested seeds)
    failed: int = 0               # seeds of ready rows with only a failed record
    expected: int = 0             # Σ over ready rows of their recipe's seeds
    rows_with_runs: int = 0
    rows_complete: int = 0        # ready rows with every seed finished
    recipe_seeds: list[int] = field(default_factory=list)   # distinct seed counts of the ready rows
    verdicts: dict[str, int] = field(default_factory=dict)
    jobs_stored: int = 0          # jobs of the recipe file with a finished record (searches included)
    jobs_failed: int = 0
    to_run: int = 0               # jobs with no record, waiting ones included
    waiting: int = 0              # of which wait for an upstream run
    gpu_hours: float | None = None   # estimate for the to-run jobs with a calibration; None: for none
    hours_known: int = 0          # to-run jobs with an estimate
    error: str = ""
    _jobs: dict = field(default_factory=dict, repr=False)      # job key -> seconds | None (totals)
    _records: set = field(default_factory=set, repr=False)     # (fingerprint, seed, kind, status)
    _diff: Any = field(default=None, repr=False)               # the TableDiff (report --all)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass
class TableStatus:
    id: str
    paper: str
    title: str = ""
    in_scope: bool = True
    out_of_scope_reason: str = ""
    rows: int = 0
    ready: int = 0
    not_implemented: list[RowNote] = field(default_factory=list)
    ambiguous: list[RowNote] = field(default_factory=list)
    paper_seeds: int | None = None
    profiles: dict[str, ProfileStatus] = field(default_factory=dict)
    error: str = ""               # the table's or recipe file's error, or a profile's ("tiny: ...")
    _table: Any = field(default=None, repr=False)
    _recipe_set: RecipeSet | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        d["not_implemented"] = [n.__dict__ for n in self.not_implemented]
        d["ambiguous"] = [n.__dict__ for n in self.ambiguous]
        d["profiles"] = {p: s.to_dict() for p, s in self.profiles.items()}
        return d


@dataclass
class Status:
    tables: list[TableStatus]
    profiles: tuple[str, ...]
    calibration: str              # the calibration file's name under reproduce/calibration/
    device: str                   # the device it was measured on
    seeds: list[int] | None = None

    def totals(self, profile: str) -> dict:
        """Sums over the tables; runs and jobs shared by several tables counted once."""
        per = [t.profiles[profile] for t in self.tables if profile in t.profiles]
        jobs: dict = {}
        records: set = set()
        for p in per:
            jobs.update(p._jobs)
            records |= p._records
        known = [s for s in jobs.values() if s is not None]
        verdicts = Counter()
        for p in per:
            verdicts.update(p.verdicts)
        return {"tables": len(self.tables), "in_scope": sum(t.in_scope for t in self.tables),
                "errors": sum(bool(t.error) for t in self.tables), "rows": sum(t.rows for t in self.tables),
                "ready": sum(t.ready for t in self.tables),
                "not_implemented": sum(len(t.not_implemented) for t in self.tables),
                "ambiguous": sum(len(t.ambiguous) for t in self.tables),
                "runs": sum(1 for r in records if r[3] == "finished"),
                "failed": sum(1 for r in records if r[3] != "finished"),
                "verdicts": {v: verdicts[v] for v in VERDICTS},
                "to_run": len(jobs), "waiting": sum(1 for k in jobs if k[0] == "waiting"),
                "gpu_hours": sum(known) / 3600 if known else (0.0 if not jobs else None),
                "hours_known": len(known)}

    def to_dict(self) -> dict:
        return {"profiles": list(self.profiles), "calibration": self.calibration, "device": self.device,
                "seeds": self.seeds, "tables": [t.to_dict() for t in self.tables],
                "totals": {p: self.totals(p) for p in self.profiles}}


def profiles_of(name: str) -> tuple[str, ...]:
    """``all`` -> every profile (full first); else the one named."""
    return tuple(PROFILES) if name == "all" else (name,)


def _message(e: BaseException) -> str:
    from .errors import UserError
    return one_line(str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}")


def _classify(st: TableStatus, table, rs: RecipeSet | None) -> None:
    by_row = {r.row: r for r in rs.recipes} if rs else {}
    for row in table.rows:
        r = by_row.get(row.key)
        if r is not None and r.status == "ready":
            st.ready += 1
        elif r is not None and r.status == "ambiguous":
            st.ambiguous.append(RowNote(row.key, row.label, r.notes or "ambiguous"))
        else:
            why = (r.notes or r.status.replace("_", " ")) if r is not None else \
                (table.out_of_scope_reason if not table.in_scope and table.out_of_scope_reason else "no recipe")
            st.not_implemented.append(RowNote(row.key, row.label, why))


def _reference_recipe(rs: RecipeSet, recipe_files: Mapping) -> list[Recipe]:
    """The row another table's Δ is measured against (``delta_reference``), as ``mtlrepro run`` adds it."""
    ref = rs.delta_reference
    if not ref:
        return []
    other = recipe_files.get(ref["table"])
    return [r for r in (other.recipes if other else ()) if r.row == ref["row"]]


def _plan(ps: ProfileStatus, recipes: list[Recipe], profile: str, seeds, root, calibration: str) -> None:
    """Fill the job counts of ``ps`` from the planner (see the module docstring)."""
    from .cost import job_seconds
    from .launch import plan_jobs
    from .pipeline import init_waiting
    from .store import device_kind, find_run
    from .train.trainer import pick_device

    todo, done, skipped = plan_jobs(recipes, profile, seeds, results_root=root)
    for _job, rec in done:
        ps.jobs_stored += rec.status == "finished"
        ps.jobs_failed += rec.status != "finished"
    for j in todo:
        if not j.recipe.keep_weights:      # a source rerun to keep its weights stays to run
            rec = find_run(profile, j.recipe.id, j.recipe.fingerprint, j.seed, root)   # any device kind
            if rec is not None:
                ps.jobs_stored += rec.status == "finished"
                ps.jobs_failed += rec.status != "finished"
                continue
        ps._jobs[("run", profile, j.recipe.fingerprint, j.seed)] = job_seconds(j.recipe, calibration).seconds
    kind = device_kind(pick_device(None))
    for r in skipped:
        if not r.status.startswith("waiting"):
            continue
        wanted = list(seeds) if seeds is not None else list(r.seeds)
        if not (r.architecture_from and not r.upstream) and r.init_weights:   # waits for its init weights
            wanted = [s for s in wanted if init_waiting(r, s, profile, kind, root) is not None] or wanted[:1]
        for s in wanted:
            ps._jobs[("waiting", profile, r.id, s)] = job_seconds(r, calibration).seconds
    ps.to_run = len(ps._jobs)
    ps.waiting = sum(1 for k in ps._jobs if k[0] == "waiting")
    known = [s for s in ps._jobs.values() if s is not None]
    ps.hours_known = len(known)
    ps.gpu_hours = sum(known) / 3600 if known else (0.0 if not ps._jobs else None)


def _profile_status(table, rs: RecipeSet | None, recipe_files: Mapping, profile: str, seeds, root,
                    calibration: str) -> ProfileStatus:
    from .compare import compare_table

    ps = ProfileStatus(profile, PROFILES[profile].synthetic)
    td = compare_table(table, profile, seeds, root, rs)
    ps._diff = td
    counts = Counter(d.verdict for d in td.cells)
    ps.verdicts = {v: counts[v] for v in VERDICTS}
    n_seeds = set()
    for rr in td.runs.values():
        r = rr.recipe
        if r is None or r.status != "ready":
            continue
        want = len(seeds) if seeds is not None else len(r.seeds)
        n_seeds.add(want)
        ps.expected += want
        ps.runs += len(rr.runs)
        ps.failed += len(rr.failed)
        ps.rows_with_runs += bool(rr.runs or rr.failed)
        ps.rows_complete += len(rr.runs) >= want
        ps._records |= {(x.fingerprint, x.seed, x.environment.get("device_kind"), x.status)
                        for x in rr.runs + rr.failed}
    ps.recipe_seeds = sorted(n_seeds)
    if rs is not None:
        _plan(ps, list(rs.recipes) + _reference_recipe(rs, recipe_files), profile, seeds, root, calibration)
    return ps


def table_status(table_id: str, profiles: tuple[str, ...] = ("full",), results_root: Path | None = None,
                 recipe_files: Mapping[str, RecipeSet] | None = None, seeds: list[int] | None = None,
                 calibration: str = "h100") -> TableStatus:
    """The status of one table; errors are caught into ``error`` (a fault of the machine, e.g. an
    unreadable record, is not: it propagates)."""
    from .tables import table_registry
    from .train.faults import EnvironmentFault

    recipe_files = recipe_sets() if recipe_files is None else recipe_files
    st = TableStatus(table_id, table_id.split("/", 1)[0])
    try:
        table = table_registry().get(table_id)
    except EnvironmentFault:
        raise
    except Exception as e:  # noqa: BLE001 - a broken table file is shown on its line
        st.error = _message(e)
        return st
    st.title, st.in_scope, st.out_of_scope_reason = table.title, table.in_scope, table.out_of_scope_reason
    st.rows, st.paper_seeds, st._table = len(table.rows), table.seeds, table
    try:
        rs = recipe_files.get(table_id)
    except EnvironmentFault:
        raise
    except Exception as e:  # noqa: BLE001 - a broken recipe file is shown on its line
        st.error = _message(e)
        return st
    st._recipe_set = rs
    _classify(st, table, rs)
    for profile in profiles:
        try:
            st.profiles[profile] = _profile_status(table, rs, recipe_files, profile, seeds, results_root,
                                                   calibration)
        except EnvironmentFault:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. a tolerance declared twice, an unsupported pair
            st.profiles[profile] = ProfileStatus(profile, PROFILES[profile].synthetic, error=_message(e))
            st.error = st.error or (f"{profile}: " if len(profiles) > 1 else "") + _message(e)
    return st


def collect_status(profiles: tuple[str, ...] = ("full",), results_root: Path | None = None,
                   table_ids: list[str] | None = None, recipe_files: Mapping[str, RecipeSet] | None = None,
                   seeds: list[int] | None = None, calibration: str = "h100") -> Status:
    """The status of every registered table (or of ``table_ids``), in id order."""
    from .cost import calibration as load_calibration
    from .tables import table_paths

    ids = sorted(table_paths() if table_ids is None else table_ids)
    tables = [table_status(t, profiles, results_root, recipe_files, seeds, calibration) for t in ids]
    device = str(load_calibration(calibration).get("device") or calibration)
    return Status(tables, tuple(profiles), calibration, device, seeds)


# -- text shared by the CLI and the index page ---------------------------------------------------

SHORT = {"within noise": "noise", "not implemented": "n/i"}


def verdict_text(verdicts: Mapping[str, int]) -> str:
    """``match 9, missing 55`` (non-zero verdicts in :data:`VERDICTS` order)."""
    return ", ".join(f"{SHORT.get(v, v)} {verdicts[v]}" for v in VERDICTS if verdicts.get(v)) or "no cells"


def hours_text(hours: float | None, known: int, total: int) -> str:
    """Estimated GPU-hours of the to-run jobs: ``12.3``, ``12.3 (5 of 49 jobs)`` or ``unknown``."""
    if hours is None:
        return "unknown"
    text = f"{hours:.1f}" if hours >= 0.1 or hours == 0 else f"{hours:.2f}" if hours >= 0.01 else "<0.01"
    return text if known == total else f"{text} ({known} of {total} jobs)"


def runs_text(ps: ProfileStatus) -> str:
    """``10/60`` finished of the runs the recipes ask for, ``+1 failed`` when some failed."""
    return f"{ps.runs}/{ps.expected}" + (f" +{ps.failed} failed" if ps.failed else "")


def seeds_text(ps: ProfileStatus, ready: int, paper_seeds: int | None) -> str:
    """``2/12 × 5 (paper 5)``: ready rows with every seed finished, the recipes' seed counts, the paper's."""
    n = "/".join(map(str, ps.recipe_seeds)) or "-"
    return f"{ps.rows_complete}/{ready} × {n} (paper {paper_seeds if paper_seeds else '?'})"


def group_notes(notes: list[RowNote]) -> list[tuple[str, list[RowNote]]]:
    """Rows grouped by their reason, in first-seen order."""
    out: dict[str, list[RowNote]] = {}
    for n in notes:
        out.setdefault(n.reason, []).append(n)
    return list(out.items())


_WS = re.compile(r"\s+")


def one_line(text: str) -> str:
    return _WS.sub(" ", str(text)).strip()
