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

from .compare import CellDiff, TableDiff, compare_table, flops_key, params_key
from .metrics.definitions import get_def
from .recipe import RecipeSet, recipe_sets
from .profiles import PROFILES
from .schema import PAPERS, Table
from .store import RESULTS_DIR, git_sha, write_text_atomic
from .verdict import TEST_NAME

SYMBOL = {"match": "✓ match", "within noise": "≈ noise", "better": "▲ better", "worse": "▼ worse",
          "differs": "≠ differs", "untested": "○ untested", "fitted": "◇ fitted", "incomparable": "⊘ incomparable",
          "missing": "· missing", "failed": "✗ failed", "not implemented": "n/i", "ambiguous": "? ambiguous"}
PARAMS_LABEL = {"params_active_task0": "one task's forward pass", "params_total": "whole model"}
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


def _speed_options(records) -> str:
    """Which stored runs used the non-default precision or speed options (bf16 autocast, TF32
    matmuls on a GPU, channels-last): they change float rounding, so a report says so whenever one
    was on. TF32 counts as on when the run's environment says it was in force."""
    used = {}
    for r in records:
        prec = (r.environment or {}).get("precision") or {}
        opts = [name for key, name in (("amp", "bf16 autocast"), ("channels_last", "channels-last"))
                if (r.recipe or {}).get(key)]
        if prec.get("tf32"):
            opts.append("TF32")
        if opts:
            used.setdefault(", ".join(opts), set()).add(r.recipe_id)
    if not used:
        return "float32 (no TF32), default memory layout in every run (amp, tf32 and channels_last off)"
    return "; ".join(f"**{opts}** in {', '.join(f'`{i}`' for i in sorted(ids))}"
                     for opts, ids in sorted(used.items()))


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


def _legend(td: TableDiff) -> list[str]:
    table = td.table
    tol = []
    for c in table.columns:
        if c.key in td.tolerances:
            tol.append(f"{c.label} {td.tolerances[c.key].text()}")
    compared = {d.column for d in td.cells}
    undeclared = [c.label for c in table.columns if c.key in compared and c.key not in td.tolerances]
    tol_text = "; ".join(tol) or "none declared"
    if undeclared:
        tol_text += f"; half a unit of the last printed digit for {', '.join(undeclared)}"
    where = sorted({t.source for t in td.tolerances.values()})
    return [
        "Each cell: published → measured (mean ± sample std over n seeds), the verdict and, when a test "
        "was run, its two-sided p.",
        "",
        f"- **Rule:** ✓ match when |measured − published| ≤ the declared tolerance. Otherwise **{TEST_NAME}** "
        f"on the means (t = (m_meas − m_pub) / √(s_pub²/n_pub + s_meas²/n_meas), Welch–Satterthwaite df, "
        f"two-sided, **α = {td.alpha:g}**), the published ± read as the std over the paper's "
        f"n_pub = {table.seeds or 'not stated'} seeds: ≈ noise when p ≥ α, else ▲ better / ▼ worse by the "
        "metric's direction. ○ untested when no test is possible (no published ±, or n < 2 on a side): the "
        "raw difference d is shown.",
        f"- **Tolerances:** {tol_text}" + (f" (declared in {', '.join(where)})" if where else "") + ".",
        "- ◇ fitted: the recipe chose a setting to reproduce this number, so agreement is no evidence; "
        "≠ differs: a count outside its tolerance; ⊘ incomparable: the runs hold this quantity under "
        "another metric definition only (never compared, never averaged into Δ); · missing: no run "
        "stored; ✗ failed: only failed runs; n/i: no recipe implemented; ? ambiguous: the row's "
        "configuration is not determined by the paper (not run).",
        "",
    ]


def _complexity_section(td: TableDiff) -> list[str]:
    table = td.table
    pub_cols = [c for c in table.columns if c.kind == "complexity"]
    rows = []
    for row in table.rows:
        rr = td.runs[row.key]
        recs = [r for r in rr.runs + rr.failed if r.complexity]
        pub = "; ".join(f"{c.label} {row.cells[c.key].text}" for c in pub_cols
                        if c.key in row.cells and row.cells[c.key].value is not None) or "—"
        fitted = "; ".join(f"{k}: {v}" for k, v in sorted(rr.fitted.items()))
        if not recs:
            why = ("not run" if rr.recipe is None or rr.recipe.status != "ready"
                   else "no run stored" if not rr.runs + rr.failed else "the runs recorded no complexity")
            rows.append([row.label, row.group or "", pub, "—", "—", "—", "—", why, fitted])
            continue
        c = recs[0].complexity
        counts = sorted({r.complexity.get(params_key(table)) for r in recs} - {None})
        params = ", ".join(f"{p / 1e6:.3f}M" for p in counts) or "—"
        flops = c.get(flops_key(table), c.get("flops"))
        scope = c.get("scope") or ""
        if flops_key(table) == "flops_all_tasks" and c.get("flops_all_tasks") is not None and "task 0" in scope:
            scope = "one image, every task's network (sum of the one-task passes)"
        rows.append([row.label, row.group or "", pub, params,
                     "—" if c.get("params_total") is None else f"{c['params_total'] / 1e6:.3f}M",
                     "—" if flops is None else f"{flops / 1e6:.1f}M {c.get('flops_unit', 'MAC')}",
                     "×".join(map(str, c.get("input_shape") or [])) or "—",
                     ", ".join(f"{k}×{v}" for k, v in (c.get("unsupported_ops") or {}).items())
                     + (f" (scope: {scope})" if scope else ""), fitted])
    shapes = sorted({"×".join(map(str, c.input_shape)) for c in pub_cols if c.input_shape})
    return ["## Parameters and FLOPs (from the run records)", "",
            "Counted by the trainer on each run's own model at the run's own input size (fvcore): "
            f"learnable parameters ({PARAMS_LABEL[params_key(table)]}: what this paper's #P counts, and what "
            "the #P cells above are compared with) and one image's multiply-accumulates (fvcore's unit; "
            "FLOPs = 2 × MACs)."
            + (f" The paper's counts are at {', '.join(shapes)}." if shapes else ""), "",
            tabulate(rows, headers=["row", "group", "published", f"params ({PARAMS_LABEL[params_key(table)]})",
                                    "params (all)", "compute",
                                    "input", "ops fvcore skips / scope", "fitted"], tablefmt="github"), ""]


def _definitions_section(table: Table) -> list[str]:
    lines = ["## Metric definitions", "",
             "A column is compared only with the run-record key of the same name: one key, one definition.", ""]
    for c in table.columns:
        if c.kind != "metric":
            continue
        key = c.metric or c.key
        d = get_def(key)
        lines.append(f"- {c.label}: `{key}` — " + (f"{d.quantity}: {d.definition}" if d else "undefined"))
    return lines + [""]


def _header(td: TableDiff) -> list[str]:
    table, profile = td.table, td.profile
    prof = PROFILES[profile]
    records = td.records()
    devices = sorted({str(r.environment.get("device") or r.environment.get("gpu") or "cpu") for r in records})
    torches = sorted({str(r.environment.get("torch")) for r in records})
    shas = sorted({str(r.environment.get("git_sha")) for r in records})
    found = sorted({r.seed for r in records})
    asked = "each recipe's own" if td.seeds is None else ", ".join(map(str, td.seeds))
    lines = [f"# {table.id} — {table.title}", ""]
    if prof.synthetic:
        lines += ["> **SYNTHETIC DATA — NOT COMPARABLE WITH THE PAPER.** These numbers come from the "
                  f"`{profile}` profile ({prof.description}). They show that the pipeline runs end to "
                  "end; they say nothing about whether the published numbers hold.", ""]
    elif prof.banner:
        lines += [f"> **{prof.banner}.** These numbers come from the `{profile}` profile ({prof.description}); "
                  "the split sizes each run trained and was evaluated on are under **Data** below.", ""]
    return lines + [
        f"- **Paper:** {PAPERS[table.paper]}",
        f"- **Caption:** {table.caption}",
        f"- **Dataset:** {table.dataset} — {table.dataset_variant}",
        f"- **Profile:** `{profile}` ({prof.description})",
        f"- **Seeds:** {asked}; runs found for {', '.join(map(str, found)) or 'none'} "
        f"(paper: {table.seeds or 'not stated'})",
        f"- **Devices:** {', '.join(devices) or '—'}; torch {', '.join(torches) or '—'}",
        f"- **Code:** runs from git {', '.join(shas) or '—'}; report from git {git_sha()}",
        f"- **Precision / layout:** {_speed_options(records)}",
        f"- **Epoch selection:** {_selection_rules(records)}",
        f"- **Data:** {_data_checksums(records)}",
        "",
    ]


def _selection_rules(records) -> str:
    """Which epoch each run reports (``record.final["selection"]``); a rule that picks the epoch by
    its score on the test set is named test-set selection, in bold."""
    from .train.selection import is_test_set_selection, selection_label
    used: dict[str, set[str]] = {}
    for r in records:
        rule = str((r.final or {}).get("selection") or (r.recipe or {}).get("selection") or "last")
        ds, split = (r.recipe or {}).get("dataset", ""), (r.recipe or {}).get("eval_split", "")
        label = selection_label(rule, ds, split) if ds else rule
        if ds and is_test_set_selection(rule, ds, split):
            label = f"**{label}**"
        used.setdefault(label, set()).add(r.recipe_id)
    if not used:
        return "—"
    if len(used) == 1:
        return f"{next(iter(used))} in every run"
    return "; ".join(f"{label} in {', '.join(f'`{i}`' for i in sorted(ids))}" for label, ids in sorted(used.items()))


def _data_checksums(records) -> str:
    """The checksums of the tensors the runs trained and evaluated on (``record.data``)."""
    seen: dict[str, int] = {}
    for r in records:
        key = str((r.data or {}).get("checksum") or "not recorded")
        seen[key] = seen.get(key, 0) + 1
    if not seen:
        return "—"
    parts = [f"`{k[:12]}` ({n} run{'s' if n > 1 else ''})" for k, n in sorted(seen.items())]
    if len(seen) == 1:
        return f"checksum {parts[0]} of the tensors trained and evaluated on"
    return (f"{len(seen)} different data checksums: " + ", ".join(parts) +
            " (rows at different input sizes, or data that changed between runs)")


def _architectures_section(td: TableDiff) -> list[str]:
    """Rows that retrain a searched architecture: which search run it came from, the tree, and the
    search's own time (``record.seconds``) and device; rows whose search is not stored say so."""
    from .pipeline import upstream_recipe
    from .search.architecture import BranchedArchitecture
    lines = []
    for key, rr in td.runs.items():
        r = rr.recipe
        if r is None or not r.architecture_from:
            continue
        if not r.upstream:
            up = upstream_recipe(r)
            lines.append(f"- `{key}`: waiting for `{up.id if up else r.architecture_from}` seed "
                         f"{r.architecture_seed} (not stored): no architecture to retrain yet")
            continue
        arch = r.sharing_kwargs.get("architecture") or {}
        try:
            tree = BranchedArchitecture.from_dict(arch).describe()
        except (KeyError, ValueError, TypeError):
            tree = f"`{arch}`"
        lines.append(f"- `{key}`: from `{r.upstream['recipe']}` seed {r.upstream['seed']} "
                     f"(run `{r.upstream['fingerprint'][:12]}`): {tree}")
    if not lines:
        return []
    return ["## Searched architectures", "",
            "Each retraining row runs the architecture its search run exported (modules: stem, layer1..layer4; "
            "`{a,b}`: tasks sharing that module's copy). The search time is in the search's run record.", "",
            *lines, ""]


def _conflicts_section(td: TableDiff) -> list[str]:
    """CoNAL Table 1's shape for every run that measured gradient conflicts (recipe field
    ``measure_conflicts``): the last measurement of each run, one row per run."""
    from .conflicts import conflict_table, paper_label

    rows = []
    for rr in td.runs.values():
        for rec in rr.runs:
            last = next((e.conflicts for e in reversed(rec.epochs) if e.conflicts), None)
            if last:
                label = paper_label(rec.recipe.get("sharing", "?"), rec.recipe.get("weighting", "equal"))
                rows.append((f"{label} seed {rec.seed}", last))
    if not rows:
        return []
    return ["## Gradient conflict (shape of CoNAL Table 1)", "",
            "Share (%) of (training batch, task pair) whose task gradients on the module's shared "
            "parameters have negative cosine similarity, at the last measured epoch (`mtlrepro.conflicts`).",
            "", conflict_table(rows), ""]


def render(td: TableDiff, recipe_set: RecipeSet | None = None, with_complexity: bool = True,
           plot_lines: list[str] | tuple[str, ...] = ()) -> str:
    """The markdown report; ``plot_lines``: the section linking the per-cell PNG (after the verdicts)."""
    table = td.table
    lines = _header(td) + _legend(td)
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
    lines += _definitions_section(table)
    if with_complexity:
        lines += _complexity_section(td)
    lines += _conflicts_section(td)
    lines += _architectures_section(td)
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

