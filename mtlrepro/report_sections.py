"""A report's sections after the verdict table: the legend (verdict rules, tolerances, test),
parameter and FLOP counts, metric definitions, searched architectures, gradient conflicts."""
from __future__ import annotations

from tabulate import tabulate

from .compare import TableDiff, flops_key, params_key
from .metrics.definitions import get_def
from .schema import Table
from .verdict import TEST_NAME

PARAMS_LABEL = {"params_active_task0": "one task's forward pass", "params_total": "whole model"}


def legend(td: TableDiff) -> list[str]:
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


def complexity_section(td: TableDiff) -> list[str]:
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


def definitions_section(table: Table) -> list[str]:
    lines = ["## Metric definitions", "",
             "A column is compared only with the run-record key of the same name: one key, one definition.", ""]
    for c in table.columns:
        if c.kind != "metric":
            continue
        key = c.metric or c.key
        d = get_def(key)
        lines.append(f"- {c.label}: `{key}` — " + (f"{d.quantity}: {d.definition}" if d else "undefined"))
    return lines + [""]


def architectures_section(td: TableDiff) -> list[str]:
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


def conflicts_section(td: TableDiff) -> list[str]:
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
