"""Published vs measured, cell by cell, with a verdict (the rule and its test: :mod:`mtlrepro.verdict`).

Verdicts (per cell):
- ``match``: |measured − published| ≤ the declared tolerance (the recipe file's ``tolerances:``,
  absolute in printed units or ``"N%"`` of the printed value; else half a unit of the cell's last
  printed digit);
- ``within noise`` / ``better`` / ``worse``: Welch's t-test of the measured seeds against the
  published mean ± std over the paper's seeds (two-sided, α = 0.05), by the metric's direction;
- ``untested``: no test is possible (no published ±, n < 2 on a side): the raw difference is shown;
- ``fitted``: the recipe chose something to reproduce this very number (``Recipe.fitted``), so a
  match is no evidence; ``differs``: a count (#P) that is not within its tolerance;
- ``incomparable``: the runs hold the column's quantity under another metric definition only
  (:mod:`mtlrepro.metrics.definitions`); never compared, never averaged into Δ;
- ``missing``: no finished run stored; ``failed`` when only failed runs are;
- ``not implemented``: no runnable recipe for the row;
- ``ambiguous``: the printed row cannot be mapped to one configuration, so it is not run.

A column's measured key is exactly ``col.metric or col.key``. Derived columns (Δ) are recomputed
per seed from the MEASURED cells against the mean of the measured baseline row, with the
convention the audit found for that table, and judged like any other cell. Reading the measured
values from the run records is :mod:`mtlrepro.measured`.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from .derived import recompute_mean_rank, recompute_overall
from .measured import (FLOPS_COUNTED, MACS_TO_UNIT, PARAMS_COUNTED, ReferenceDelta, RowRuns, audit_convention,
                       collect_runs, flops_key, measured_cells, measured_key, params_key, recompute_delta, unit_factor)
from .recipe import RecipeSet, recipe_sets
from .schema import Column, Table
from .store import RunRecord
from .verdict import ALPHA, TEST_NAME, VERDICTS, Tolerance, judge

__all__ = ["VERDICTS", "CellDiff", "RowRuns", "TableDiff", "collect_runs", "compare_table", "diff_table",
           "declared_tolerances", "measured_key", "params_key", "flops_key", "unit_factor", "FLOPS_COUNTED",
           "MACS_TO_UNIT", "PARAMS_COUNTED"]


@dataclass
class CellDiff:
    row: str
    label: str
    group: str | None
    column: str
    metric: str | None              # the run-record key compared (metric columns)
    published: float | None
    published_std: float | None
    n_pub: int | None               # the paper's number of seeds
    measured: float | None
    measured_std: float | None
    n_meas: int
    difference: float | None        # measured − published
    tolerance: float | None         # absolute, in printed units
    verdict: str
    test: str = ""                  # the test run ("" when none)
    t: float | None = None
    df: float | None = None
    p: float | None = None          # two-sided
    n_failed: int = 0               # the row's failed runs among the seeds judged
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TableDiff:
    """Everything a diff and a report need: the cells, the runs they came from and the rules used."""

    table: Table
    profile: str
    seeds: list[int] | None         # requested seeds (None: each recipe's own)
    cells: list[CellDiff]
    runs: dict[str, RowRuns]
    tolerances: dict[str, Tolerance]
    conventions: dict[str, str]     # Δ column -> convention used
    alpha: float = ALPHA

    def records(self) -> list[RunRecord]:
        return [r for rr in self.runs.values() for r in rr.runs + rr.failed]


def declared_tolerances(table: Table, rs: RecipeSet | None) -> dict[str, Tolerance]:
    """Column key -> declared tolerance: the recipe file's ``tolerances:`` (a legacy ``tolerances``
    dict inside a ``choices`` entry is honoured too) and the registry table's. A key declared twice
    with different values is an error: declare each tolerance once."""
    found: dict[str, tuple[object, str]] = {}
    sources: list[tuple[str, dict]] = []
    if rs is not None:
        where = f"reproduce/recipes/{table.id}.yaml"
        sources += [(f"{where} (choices)", c["tolerances"]) for c in rs.choices
                    if isinstance(c, dict) and isinstance(c.get("tolerances"), dict)]
        sources.append((where, dict(getattr(rs, "tolerances", None) or {})))
    sources.append((f"reproduce/{table.id}.yaml", dict(table.tolerances)))
    for where, tols in sources:
        for key, spec in tols.items():
            if key in found and found[key][0] != spec:
                raise ValueError(f"{table.id}: tolerance of {key!r} declared twice ({found[key][0]!r} in "
                                 f"{found[key][1]}, {spec!r} in {where})")
            found.setdefault(key, (spec, where))
    return {k: Tolerance.parse(spec, where) for k, (spec, where) in found.items()}


def _mean_std(xs: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def compare_table(table: Table, profile: str, seeds: list[int] | None = None, results_root=None,
                  recipe_set: RecipeSet | None = None, alpha: float = ALPHA) -> TableDiff:
    rs = recipe_set if recipe_set is not None else recipe_sets().get(table.id)
    rows_runs = collect_runs(table, profile, seeds, results_root, rs)
    tolerances = declared_tolerances(table, rs)
    measured, refused = {}, {}
    for r in table.rows:
        measured[r.key], refused[r.key] = measured_cells(table, r, rows_runs[r.key])
    conventions: dict[str, str] = {}
    unavailable: dict[str, dict[str, str]] = {r.key: {} for r in table.rows}   # why a Δ is missing
    reference = rs.delta_reference if rs is not None else None
    for col in table.columns:
        if col.kind == "derived" and col.derived is not None and col.derived.formula.startswith("delta"):
            conventions[col.key] = conv = audit_convention(table.id, col.key)
            if not col.derived.inputs and reference:   # Δ of rows whose metrics the table does not print
                ref_delta = ReferenceDelta(reference, col.key, profile, seeds, results_root)
                conventions[col.key] = conv = ref_delta.convention
            for row in table.rows:
                if rows_runs[row.key].recipe is None or row.cells.get(col.key) is None:
                    continue
                if not col.derived.inputs and reference:
                    vals, verdict, why = ref_delta.delta(row, rows_runs[row.key])
                else:
                    vals, verdict, why = recompute_delta(table, col, row, measured, refused, conv)
                if vals:
                    measured[row.key][col.key] = vals
                elif verdict == "incomparable":
                    refused[row.key][col.key] = why
                else:
                    unavailable[row.key][col.key] = why
    for col in table.columns:   # Overall and MR: from the measured cells (mtlrepro/derived.py)
        if col.kind != "derived" or col.derived is None or col.derived.formula not in ("overall", "mean_rank"):
            continue
        if col.derived.formula == "overall":
            vals, bad, why = recompute_overall(table, col, measured, refused)
        else:
            conventions[col.key] = conv = audit_convention(table.id, col.key)
            vals, bad, why = recompute_mean_rank(table, col, measured, refused, conv)
        for key, xs in vals.items():
            measured[key][col.key] = xs
        for key, reason in bad.items():
            refused[key][col.key] = reason
        for key, reason in why.items():
            unavailable[key][col.key] = reason
    from .timing import SPEEDUP_COLUMNS, speedups
    timed = [c for c in table.columns if c.kind == "info" and c.key in SPEEDUP_COLUMNS]
    for col in timed:   # measured from the records' training times, on one device kind
        vals, why = speedups(col.key, rows_runs, profile, results_root)
        for key, xs in vals.items():
            measured[key][col.key] = xs
        for key, reason in why.items():
            refused[key][col.key] = reason
    out: list[CellDiff] = []
    for row in table.rows:
        rr = rows_runs[row.key]
        for col in table.columns:
            cell = row.cells.get(col.key)
            if cell is None or cell.value is None or (col.kind == "info" and col not in timed):
                continue
            if col.kind == "complexity" and col.unit != "params":
                continue  # FLOPs and times: the report's complexity section, from the run records
            base = dict(row=row.key, label=row.label, group=row.group, column=col.key,
                        metric=measured_key(col) if col.kind == "metric" else None,
                        published=table.absolute(row, col.key), published_std=cell.std,
                        n_pub=None if col.kind == "complexity" else table.seeds)
            out.append(_cell(base, col, cell, rr, measured[row.key].get(col.key, {}), refused[row.key],
                             unavailable[row.key].get(col.key, ""), tolerances, alpha))
    return TableDiff(table, profile, seeds, out, rows_runs, tolerances, conventions, alpha)


def _cell(base: dict, col: Column, cell, rr: RowRuns, xs: dict[int, float], refused: dict[str, str],
          why_missing: str, tolerances: dict[str, Tolerance], alpha: float) -> CellDiff:
    base = dict(base, n_failed=len(rr.failed))
    none = dict(measured=None, measured_std=None, n_meas=0, difference=None, tolerance=None)
    if rr.recipe is None or rr.recipe.status != "ready":
        ambiguous = rr.recipe is not None and rr.recipe.status == "ambiguous"
        return CellDiff(**base, **none, verdict="ambiguous" if ambiguous else "not implemented",
                        note="" if rr.recipe is None else rr.recipe.notes)
    if col.key in refused:
        return CellDiff(**base, **none, verdict="incomparable", note=refused[col.key])
    if not xs:
        if rr.failed and not rr.runs:
            note = rr.failed[0].failure.splitlines()[0] if rr.failed[0].failure else "failed"
            return CellDiff(**base, **none, verdict="failed", note=note)
        why = why_missing if rr.runs else ""      # no run at all says it all
        if rr.runs and not why:
            why = ("the runs recorded no complexity" if col.kind == "complexity"
                   else f"the runs have no `{measured_key(col)}`")
        return CellDiff(**base, **none, verdict="missing", note=why)
    m, s = _mean_std([xs[k] for k in sorted(xs)])
    pub = base["published"]
    tol = tolerances.get(col.key) or Tolerance(cell.rounding, source="rounding")
    fitted = rr.fitted.get(col.key)
    if col.kind == "complexity":  # a count matches or it does not: no test, no direction
        j = judge(pub, None, None, m, None, len(xs), None, tol, alpha)
        verdict = "fitted" if fitted else ("match" if j.verdict == "match" else "differs")
        note = fitted or ("" if len(set(xs.values())) == 1 else "the runs' counts differ")
        return CellDiff(**base, measured=m, measured_std=s or None, n_meas=len(xs), difference=j.difference,
                        tolerance=j.tolerance, verdict=verdict, note=note)
    j = judge(pub, cell.std, base["n_pub"], m, s, len(xs), col.higher_is_better, tol, alpha)
    t = j.test
    note = f"fitted: {fitted}" if fitted else j.reason
    return CellDiff(**base, measured=m, measured_std=s, n_meas=len(xs), difference=j.difference,
                    tolerance=j.tolerance, verdict="fitted" if fitted else j.verdict,
                    test=TEST_NAME if t else "", t=t.t if t else None, df=t.df if t else None,
                    p=t.p if t else None, note=note)


def diff_table(table: Table, profile: str, seeds: list[int] | None = None, results_root=None,
               recipe_set: RecipeSet | None = None, alpha: float = ALPHA) -> list[CellDiff]:
    """The cells of :func:`compare_table`."""
    return compare_table(table, profile, seeds, results_root, recipe_set, alpha).cells
