"""Markdown reports: a pure function of the registry, the recipes and the run store.

Every number in a report comes from a run record or from the registry: the per-cell verdicts
from :func:`mtlrepro.compare.compare_table`, the parameter / FLOP counts from the records'
``complexity`` (measured by the trainer on the run's own model at the run's own input size; no
model is rebuilt here, so a tiny report shows the tiny models' counts, labelled with their input).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from tabulate import tabulate

from .compare import CellDiff, TableDiff, compare_table
from .recipe import RecipeSet, recipe_sets
from .schema import Table
from .store import RESULTS_DIR, write_text_atomic
from .report_header import header
from .report_sections import (architectures_section, complexity_section, conflicts_section, definitions_section,
                              legend)

SYMBOL = {"match": "✓ match", "within noise": "≈ noise", "better": "▲ better", "worse": "▼ worse",
          "differs": "≠ differs", "untested": "○ untested", "fitted": "◇ fitted", "incomparable": "⊘ incomparable",
          "missing": "· missing", "failed": "✗ failed", "not implemented": "n/i", "ambiguous": "? ambiguous"}
ORDER = ["match", "within noise", "better", "worse", "differs", "untested", "fitted", "incomparable", "missing",
         "failed", "not implemented", "ambiguous"]


def report_path(table: Table, profile: str, root: Path | None = None) -> Path:
    root = root or RESULTS_DIR
    sub = Path(table.paper) / f"{table.id.split('/', 1)[1]}.md"
    return root / sub if profile == "full" else root / profile / sub


def _fmt(x: float | None, std: float | None = None, digits: int = 4) -> str:
    if x is None:
        return "—"
    s = f"{x:.{digits}g}"
    if std is not None:
        s += f" ± {std:.2g}"
    return s


def _published_text(table, row, col) -> str:
    """The cell as printed; for a column printed as differences from a reference row (CoNAL Tables
    2/3) also the absolute value the diff compares with: ``-0.73 (= 67.40)``."""
    text = row.cells[col.key].text
    ref = col.printed_as.split(":", 1)[1] if col.printed_as.startswith("difference_from:") else None
    if ref is None or row.key == ref:
        return text
    value = table.absolute(row, col.key)
    return text if value is None else f"{text} (= {value:.6g})"


def _cell_text(text: str, d: CellDiff) -> str:
    """``published → measured (n) verdict`` plus p (tested) or the raw difference (untested)."""
    failed = f", {d.n_failed} failed" if d.n_failed and d.measured is not None else ""
    meas = "—" if d.measured is None else f"{_fmt(d.measured, d.measured_std)} (n={d.n_meas}{failed})"
    out = f"{text} → {meas} {SYMBOL.get(d.verdict, d.verdict)}"
    if d.p is not None:
        out += f" p={d.p:.2g}"
    elif d.verdict in ("untested", "differs", "fitted") and d.difference is not None:
        out += f" d={d.difference:+.3g}"
    return out


def render(td: TableDiff, recipe_set: RecipeSet | None = None, with_complexity: bool = True,
           plot_lines: list[str] | tuple[str, ...] = ()) -> str:
    """The markdown report; ``plot_lines``: the section linking the per-cell PNG (after the verdicts)."""
    table = td.table
    lines = header(td) + legend(td)
    by_cell = {(d.row, d.column): d for d in td.cells}
    from .timing import SPEEDUP_COLUMNS
    cols = [c for c in table.columns if c.kind in ("metric", "derived") or
            (c.kind == "complexity" and c.unit == "params") or (c.kind == "info" and c.key in SPEEDUP_COLUMNS)]
    body = []
    for row in table.rows:
        line = [row.label, row.group or ""]
        for c in cols:
            d = by_cell.get((row.key, c.key))
            line.append("" if d is None else _cell_text(_published_text(table, row, c), d))
        body.append(line)
    lines += ["## Published vs measured", "",
              tabulate(body, headers=["row", "group"] + [c.label for c in cols], tablefmt="github"), ""]
    counts = Counter(d.verdict for d in td.cells)
    lines += ["**Verdicts:** " + ", ".join(f"{k} {counts[k]}" for k in ORDER if counts[k]), ""]
    lines += list(plot_lines)
    for c in table.columns:
        formula = c.derived.formula if c.derived is not None else ""
        if formula == "mean_rank" and c.key in td.conventions:
            lines += [f"Measured {c.label} ranks the rows of each group on their measured means per input column "
                      f"({', '.join(c.derived.inputs)}), ties by the `{td.conventions[c.key]}` rule (the one "
                      "`mtlrepro audit` found to reproduce the printed column), and averages a row's ranks. It is "
                      "compared only when every printed row of the group is measured (otherwise incomparable: "
                      "another set of rows is another ranking).", ""]
        elif formula == "overall" and any(d.column == c.key and d.measured is not None for d in td.cells):
            lines += [f"Measured {c.label} is the mean of the row's measured {', '.join(c.derived.inputs)} per seed.", ""]
        elif c.key in td.conventions:
            ref = getattr(recipe_sets().get(table.id), "delta_reference", None) or {}
            base = (f"the measured row `{ref['row']}` of `{ref['table']}`, read under that table's metric columns "
                    f"(this table prints no per-task metrics)" if ref and not c.derived.inputs
                    else f"the measured row `{c.derived.baseline}`" if c.derived.baseline
                    else "each row's measured baseline row (`baseline` in the registry)")
            lines += [f"Measured {c.label} is recomputed per seed from the measured cells against the mean "
                      f"of {base}, with the `{td.conventions[c.key]}` convention (the one "
                      "`mtlrepro audit` found to reproduce the printed column), and judged like any cell. "
                      "It is not computed when an input is missing or incomparable.", ""]
    notes = [d for d in td.cells if d.note and d.verdict not in ("ambiguous", "not implemented", "failed")]
    if notes:
        labels = {c.key: c.label for c in table.columns}
        lines += ["## Cell notes", ""]
        lines += [f"- {d.label}{f' ({d.group})' if d.group else ''}, {labels[d.column]}: {d.verdict} — {d.note}"
                  for d in notes]
        lines.append("")
    lines += definitions_section(table)
    if with_complexity:
        lines += complexity_section(td)
    lines += conflicts_section(td)
    lines += architectures_section(td)
    failed = [(rr.recipe.id if rr.recipe else k, r) for k, rr in td.runs.items() for r in rr.failed]
    if failed:
        lines += ["## Failed runs", ""]
        lines += [f"- `{rid}` seed {r.seed}: {r.failure.splitlines()[0] if r.failure else 'unknown'}"
                  for rid, r in failed]
        lines.append("")
    rs = recipe_set if recipe_set is not None else recipe_sets().get(table.id)
    lines += ["## Documented choices", ""]
    choices = [c for c in (rs.choices if rs else ()) if isinstance(c, dict) and "field" in c
               and "tolerances" not in c]   # tolerances: stated in the legend
    lines += [f"- **{c['field']}** = `{c.get('value')}` — {c.get('why', '')}" for c in choices] or ["- none recorded"]
    lines += [f"- Registry note: {n}" for n in table.notes]
    ambiguous = sorted({d.label for d in td.cells if d.verdict == "ambiguous"})
    if ambiguous:
        lines += ["", "Rows whose configuration the paper text does not determine (not run, never guessed): "
                  + ", ".join(ambiguous)]
    not_impl = sorted({d.label for d in td.cells if d.verdict == "not implemented"})
    if not_impl:
        lines += ["", "Rows without an implemented recipe (reported as not implemented, never approximated): "
                  + ", ".join(not_impl)]
    lines.append("")
    return "\n".join(lines)


def write_report(table: Table, profile: str, seeds: list[int] | None = None, results_root=None,
                 with_complexity: bool = True, recipe_set: RecipeSet | None = None,
                 diff: TableDiff | None = None) -> Path:
    """Write the report of ``diff`` (computed here from the store when not given) and, next to it,
    its per-cell PNG (:mod:`mtlrepro.cell_plot`; none while no cell is measured)."""
    from .cell_plot import report_lines, write_cell_plot
    td = diff if diff is not None else compare_table(table, profile, seeds, results_root, recipe_set)
    path = report_path(table, profile, results_root)
    png = write_cell_plot(td, path.with_suffix(".png"))
    write_text_atomic(path, render(td, recipe_set, with_complexity, report_lines(td, png)))
    return path

