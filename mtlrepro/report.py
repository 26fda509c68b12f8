"""Markdown reports: a pure function of the registry, the recipes and the run store."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from tabulate import tabulate

from .compare import CellDiff, collect_runs, diff_table, _audit_convention
from .recipe import PROFILES, recipe_sets
from .schema import PAPERS, Table
from .store import RESULTS_DIR, git_sha, write_text_atomic

SYMBOL = {"match": "✓ match", "within noise": "≈ noise", "better": "▲ better", "worse": "▼ worse",
          "missing": "· missing", "failed": "✗ failed", "not implemented": "n/i", "differs": "≠ differs",
          "ambiguous": "? ambiguous"}


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
    """Which stored runs used the non-default speed options (bf16 autocast, channels-last):
    they change float rounding, so a report says so whenever one was on."""
    used = {}
    for r in records:
        opts = [name for key, name in (("amp", "bf16 autocast"), ("channels_last", "channels-last"))
                if (r.recipe or {}).get(key)]
        if opts:
            used.setdefault(", ".join(opts), set()).add(r.recipe_id)
    if not used:
        return "float32, default memory layout in every run (amp and channels_last off)"
    return "; ".join(f"**{opts}** in {', '.join(f'`{i}`' for i in sorted(ids))}"
                     for opts, ids in sorted(used.items()))


def render(table: Table, profile: str, diffs: list[CellDiff], profiles=None, results_root=None) -> str:
    prof = PROFILES[profile]
    runs = collect_runs(table, profile, results_root=results_root)
    records = [r for rr in runs.values() for r in rr.runs + rr.failed]
    gpus = sorted({str(r.environment.get("gpu") or "CPU") for r in records})
    torches = sorted({str(r.environment.get("torch")) for r in records})
    shas = sorted({str(r.environment.get("git_sha")) for r in records})
    seeds = sorted({r.seed for r in records})
    lines = [f"# {table.id} — {table.title}", ""]
    if prof.synthetic:
        lines += ["> **SYNTHETIC DATA — NOT COMPARABLE WITH THE PAPER.** These numbers come from the "
                  f"`{profile}` profile ({prof.description}). They show that the pipeline runs end to "
                  "end; they say nothing about whether the published numbers hold.", ""]
    lines += [
        f"- **Paper:** {PAPERS[table.paper]}",
        f"- **Caption:** {table.caption}",
        f"- **Dataset:** {table.dataset} — {table.dataset_variant}",
        f"- **Profile:** `{profile}` ({prof.description})",
        f"- **Seeds in store:** {', '.join(map(str, seeds)) or 'none'} (paper: {table.seeds or 'not stated'})",
        f"- **Hardware:** {', '.join(gpus) or '—'}; torch {', '.join(torches) or '—'}",
        f"- **Code:** runs from git {', '.join(shas) or '—'}; report from git {git_sha()}",
        f"- **Precision / layout:** {_speed_options(records)}",
        "",
        "Each cell: published → measured (mean ± std over n seeds) and the verdict. "
        "Verdicts: match (within the declared tolerance), ≈ noise (within 2σ of the two seed "
        "spreads), ▲ better / ▼ worse, · missing (no run stored yet), n/i (no recipe implemented).", "",
    ]
    by_cell = {(d.row, d.column): d for d in diffs}
    cols = [c for c in table.columns if c.kind in ("metric", "derived") or
            (c.kind == "complexity" and c.unit == "params")]
    body = []
    for row in table.rows:
        line = [row.label, row.group or ""]
        for c in cols:
            d = by_cell.get((row.key, c.key))
            if d is None:
                line.append("")
                continue
            meas = "—" if d.measured is None else f"{_fmt(d.measured, d.measured_std)} (n={d.n})"
            line.append(f"{row.cells[c.key].text} → {meas} {SYMBOL.get(d.verdict, d.verdict)}")
        body.append(line)
    lines += ["## Published vs measured", "",
              tabulate(body, headers=["row", "group"] + [c.label for c in cols], tablefmt="github"), ""]
    counts = Counter(d.verdict for d in diffs)
    lines += ["**Verdicts:** " + ", ".join(f"{k} {counts[k]}" for k in
                                           ["match", "within noise", "better", "worse", "differs", "missing",
                                            "failed", "not implemented", "ambiguous"] if counts[k]), ""]
    for c in table.columns:
        if c.kind == "derived" and c.derived and c.derived.formula.startswith("delta"):
            base = c.derived.baseline or "each row's baseline (`baseline` in the registry)"
            lines += [f"Measured {c.label} is recomputed from the measured cells against the measured "
                      f"{base} with the `{_audit_convention(table.id, c.key)}` convention, the one "
                      "`mtlrepro audit` found to reproduce the printed column.", ""]
    if profiles:
        prow = []
        for p in profiles:
            pub = "; ".join(f"{v['text']} ({v['unit']})" for v in p.published.values()) or "—"
            prow.append([p.label, p.group or "", pub,
                         "—" if p.params is None else f"{p.params / 1e6:.3f}M",
                         "—" if p.flops is None else f"{p.flops / 1e6:.1f}M {p.flops_unit}",
                         "×".join(map(str, p.input_shape or [])) or "—",
                         ", ".join(f"{k}×{v}" for k, v in p.unsupported_ops.items()) or ""])
        lines += ["## Parameters and FLOPs", "",
                  "Measured with fvcore: learnable parameters used by one task's forward pass (the "
                  "scope the papers' #P needs for task-routing models) and one image's multiply-"
                  "accumulates (fvcore's unit; FLOPs = 2 × MACs).", "",
                  tabulate(prow, headers=["row", "group", "published", "params (measured)",
                                          "compute (measured)", "input", "ops fvcore skips (not in the count)"],
                           tablefmt="github"), ""]
    failed = [(rr.recipe.id if rr.recipe else k, r) for k, rr in runs.items() for r in rr.failed]
    if failed:
        lines += ["## Failed runs", ""]
        lines += [f"- `{rid}` seed {r.seed}: {r.failure.splitlines()[0] if r.failure else 'unknown'}"
                  for rid, r in failed]
        lines.append("")
    rs = recipe_sets().get(table.id)
    lines += ["## Documented choices", ""]
    if rs and rs.choices:
        for c in rs.choices:
            if isinstance(c, dict) and "field" in c:
                lines.append(f"- **{c['field']}** = `{c.get('value')}` — {c.get('why', '')}")
    else:
        lines.append("- none recorded")
    for n in table.notes:
        lines.append(f"- Registry note: {n}")
    ambiguous = sorted({d.label for d in diffs if d.verdict == "ambiguous"})
    if ambiguous:
        lines += ["", "Rows whose configuration the paper text does not determine (not run, never guessed): "
                  + ", ".join(ambiguous)]
    not_impl = sorted({d.label for d in diffs if d.verdict == "not implemented"})
    if not_impl:
        lines += ["", "Rows without an implemented recipe (reported as not implemented, never approximated): "
                  + ", ".join(not_impl)]
    lines.append("")
    return "\n".join(lines)


def write_report(table: Table, profile: str, with_profile: bool = True, results_root=None) -> Path:
    from .profile import profile_table

    diffs = diff_table(table, profile, results_root=results_root)
    profiles = profile_table(table) if with_profile else None
    path = report_path(table, profile, results_root)
    write_text_atomic(path, render(table, profile, diffs, profiles, results_root))
    return path
