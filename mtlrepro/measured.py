"""Measured values of a table's cells, read from run records (never from the registry).

Which stored runs a row has (:func:`collect_runs`: its recipe with the profile applied, resolved
through its pipeline, one record per seed), what each run measured for each column in the
column's printed unit (:func:`measured_cells`: metric columns by their exact record key,
``#P`` columns from ``record.complexity``), and Δ columns recomputed per seed from the measured
cells against the measured baseline row (:func:`recompute_delta`, :class:`ReferenceDelta`), with the
averaging convention the audit found for that table. The verdicts are :mod:`mtlrepro.compare`'s.
"""
from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .audit import audit_table, summarize
from .delta import MetricValue, delta
from .metrics.definitions import get_def, incomparable_reason, same_quantity
from .pipeline import Waiting, resolve_upstream
from .profiles import apply_profile
from .recipe import Recipe, RecipeSet, recipe_sets
from .schema import SCALE_SUFFIX, Column, Row, Table
from .store import RunRecord, find_run


@dataclass
class RowRuns:
    recipe: Recipe | None           # with the profile applied
    runs: list[RunRecord]
    failed: list[RunRecord]
    fitted: dict[str, str] = field(default_factory=dict)   # column -> why it was fitted



#: The recorded count a #P column is compared with: ETR-NLP counts the learnable parameters one
#: task's forward pass uses, CoNAL and GatedMTL the whole model (``COMPLEXITY_UNITS["params"]`` in
#: :mod:`mtlrepro.metrics.definitions`).
PARAMS_COUNTED = {"etr_nlp": "params_active_task0", "conal": "params_total", "gatedmtl": "params_total"}


def params_key(table: Table) -> str:
    return PARAMS_COUNTED.get(table.paper, "params_active_task0")


#: The recorded compute a FLOPs column is compared with: ETR-NLP one task's pass; CoNAL and GatedMTL
#: every task of one image (their STL rows cost T networks) - ``complexity.Complexity.flops_all_tasks``.
FLOPS_COUNTED = {"etr_nlp": "flops", "conal": "flops_all_tasks", "gatedmtl": "flops_all_tasks"}
#: multiply-accumulates (fvcore) -> the table's unit; "FLOPs-as-printed": the paper's convention is unknown
MACS_TO_UNIT = {"MACs": 1.0, "FLOPs": 2.0}


def flops_key(table: Table) -> str:
    return FLOPS_COUNTED.get(table.paper, "flops")


def measured_key(col: Column) -> str:
    """The one run-record key a column is compared with (no fallbacks)."""
    return col.metric or col.key


def _scale(col: Column, cell_suffix: str) -> float:
    return SCALE_SUFFIX.get((cell_suffix or col.scale or "").upper(), 1.0)


@lru_cache(maxsize=None)
def audit_convention(table_id: str, column: str) -> str:
    from .tables import get_table
    for v in summarize(audit_table(get_table(table_id))):
        if v.column == column and v.best:
            return v.best
    return "per_task"


def collect_runs(table: Table, profile: str, seeds: list[int] | None = None, results_root=None,
                 recipe_set: RecipeSet | None = None) -> dict[str, RowRuns]:
    rs = recipe_set if recipe_set is not None else recipe_sets().get(table.id)
    by_row = {r.row: r for r in rs.recipes} if rs else {}
    results_root = Path(results_root) if results_root is not None else None
    out: dict[str, RowRuns] = {}
    for row in table.rows:
        recipe = by_row.get(row.key)
        fitted = dict(getattr(recipe, "fitted", None) or {})
        if recipe is None or recipe.status != "ready":
            out[row.key] = RowRuns(recipe, [], [], fitted)
            continue
        eff = apply_profile(recipe, profile)
        try:
            eff = resolve_upstream(eff, profile, results_root)
        except Waiting:   # its search has not run: no retraining run can exist
            out[row.key] = RowRuns(eff, [], [], fitted)
            continue
        runs, failed = [], []
        for s in (seeds if seeds is not None else eff.seeds):
            rec = find_run(profile, eff.id, eff.fingerprint, s, results_root)
            if rec is not None:
                (runs if rec.status == "finished" else failed).append(rec)
        out[row.key] = RowRuns(eff, runs, failed, fitted)
    return out


def measured_cells(table: Table, row: Row, rr: RowRuns) -> tuple[dict[str, dict[int, float]], dict[str, str]]:
    """(column -> {seed: value in printed units}, column -> why it is refused) for metric and #P columns."""
    vals: dict[str, dict[int, float]] = {}
    refused: dict[str, str] = {}
    for col in table.columns:
        if col.kind == "metric":
            key = measured_key(col)
            factor = unit_factor(key, col.unit)
            others: dict[str, list[int]] = {}
            for rec in rr.runs:
                metrics = rec.final.get("metrics", {})
                if key in metrics:
                    vals.setdefault(col.key, {})[rec.seed] = float(metrics[key]) * factor
                    continue
                for k in same_quantity(key):
                    if k in metrics:
                        others.setdefault(k, []).append(rec.seed)
                        break
            if others:
                refused[col.key] = "; ".join(
                    f"seed{'s' if len(ss) > 1 else ''} {', '.join(map(str, ss))} recorded `{k}`, not `{key}`: "
                    f"{incomparable_reason(key, k)}" for k, ss in sorted(others.items()))
        elif col.kind == "complexity" and col.unit == "params":
            cell = row.cells.get(col.key)
            scale = _scale(col, cell.suffix if cell else "")
            for rec in rr.runs:
                p = (rec.complexity or {}).get(params_key(table))
                if p is not None:
                    vals.setdefault(col.key, {})[rec.seed] = p / scale
    return vals, refused


#: (unit the code reports, unit the table prints) -> factor; equal units and unit-less pairs are 1
_UNIT_FACTORS = {("%", "fraction"): 0.01, ("fraction", "%"): 100.0}


def unit_factor(metric_key: str, printed_unit: str | None) -> float:
    """What a measured ``metric_key`` is multiplied by to be in the column's printed unit (GatedMTL
    prints mIoU in % for semseg and as a fraction for human parts and saliency, Table 5)."""
    d = get_def(metric_key)
    return 1.0 if d is None else _UNIT_FACTORS.get((d.unit, printed_unit), 1.0)


def recompute_delta(table: Table, col: Column, row: Row, measured: dict, refused: dict,
                     convention: str) -> tuple[dict[int, float], str, str]:
    """Per-seed measured Δ of ``row`` against the mean of its measured baseline; else
    ({}, "incomparable" or "missing", why it was not computed)."""
    base_key = row.baseline or col.derived.baseline
    if base_key is None:
        return {}, "missing", "Δ not computed: no baseline row"
    inputs = [k for k in col.derived.inputs if k in row.cells]
    for k in inputs:
        for rk in (row.key, base_key):
            if k in refused[rk]:
                return {}, "incomparable", (f"Δ not computed: its input `{k}` is incomparable in row `{rk}` "
                                            "(see that cell)")
    for k in inputs:
        if not measured[base_key].get(k):
            return {}, "missing", f"Δ not computed: baseline `{base_key}` has no measured `{k}`"
        if not measured[row.key].get(k):
            return {}, "missing", f"Δ not computed: no measured `{k}`"
    b = {k: statistics.fmean(measured[base_key][k].values()) for k in inputs}
    zero = [k for k in inputs if b[k] == 0]
    if zero:
        return {}, "missing", (f"Δ not computed: baseline `{base_key}` measured {', '.join(f'`{k}`' for k in zero)} = 0 "
                               "(a relative gain over 0 is undefined)")
    seeds = sorted(set.intersection(*(set(measured[row.key][k]) for k in inputs)))
    cols = {k: table.column(k) for k in inputs}
    return {s: delta([MetricValue(cols[k].task or k, measured[row.key][k][s], b[k],
                                  bool(cols[k].higher_is_better)) for k in inputs], convention)
            for s in seeds}, "", ""


class ReferenceDelta:
    """Δ of a row whose table prints no per-task metrics (CoNAL Tables 4 and 7 print only Δ_I): the
    row's runs are read under the reference table's metric columns and compared with its measured
    baseline row (recipe file ``delta_reference: {table, row}``), with that table's convention."""

    def __init__(self, reference: dict, column: str, profile: str, seeds, results_root):
        from .tables import get_table
        self.table = get_table(reference["table"])
        self.base = next(r for r in self.table.rows if r.key == reference["row"])
        self.col = self.table.column(column)
        self.convention = audit_convention(self.table.id, column)
        base_runs = collect_runs(self.table, profile, seeds, results_root)[self.base.key]
        self.base_measured, self.base_refused = measured_cells(self.table, self.base, base_runs)

    def delta(self, row: Row, rr: RowRuns) -> tuple[dict[int, float], str, str]:
        vals, refused = measured_cells(self.table, self.base, rr)
        probe = dataclasses.replace(self.base, key=row.key, baseline=self.base.key)
        where = f"{self.table.id} row `{self.base.key}`"
        out, verdict, why = recompute_delta(self.table, self.col, probe,
                                             {row.key: vals, self.base.key: self.base_measured},
                                             {row.key: refused, self.base.key: self.base_refused}, self.convention)
        return out, verdict, why.replace(f"baseline `{self.base.key}`", f"baseline {where}")
