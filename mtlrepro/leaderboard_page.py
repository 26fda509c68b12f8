"""Cross-paper leaderboard, the page: ``results/leaderboard.md`` and the view of one method.

Rendered from a :class:`mtlrepro.leaderboard.Leaderboard` (identities, settings, published and
measured Δ; collected by :func:`mtlrepro.leaderboard.build`): the names each paper prints and the
naming notes (:data:`NAMING`), the methods two or more papers report with their setting differences,
a ranking per (dataset, backbone) by each paper's own Δ column, and the rows without an identity.
The page (:func:`render_page`) is a pure function of (registry, recipes, store, profile): no time
stamp, no machine, a fixed order.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import store
from .leaderboard import Entry, Leaderboard, MethodId, build
from .profiles import PROFILES, SYNTHETIC_NOTE, caveat

PAPER_NAMES = {"etr_nlp": "ETR-NLP", "conal": "CoNAL", "gatedmtl": "GatedMTL"}
SYNTHETIC_LINE = SYNTHETIC_NOTE


# --- names ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NamingNote:
    """Names that differ between papers, the identities they resolve to, and whether they are one
    algorithm (``match``: fnmatch patterns over :attr:`MethodId.key`)."""

    title: str
    match: tuple[str, ...]
    same: bool
    why: str


NAMING = (
    NamingNote("MGDA-UB vs MGDA", ("hard_sharing+mgda_ub", "hard_sharing+mgda"), False,
               "MGDA-UB is Sener & Koltun's (NeurIPS 2018) upper-bound variant: the min-norm problem on the "
               "gradients w.r.t. the shared representation z, whose solution upper-bounds MGDA's "
               "(`methods/aggregators/mgda_ub.py`); CoNAL's MGDA (LibMTL) solves it on the Jacobian of every "
               "shared parameter (`mgda.py`, deliberately not an alias)."),
    NamingNote("UW vs Uncertainty", ("*+uw",), True,
               "Kendall, Gal & Cipolla (CVPR 2018) homoscedastic-uncertainty weighting; one class, registered "
               "as `uw` and `uncertainty`."),
    NamingNote("RLW vs RDW", ("*+rlw",), True,
               "Lin et al. (TMLR 2022) random loss weighting, registered as `rlw` and `rdw` "
               "(`methods/weightings/random.py`); CoNAL retrains its tree with it (Eq. 3, uniform draws), "
               "GatedMTL's RDW baseline is read as RLW(Normal); the draw distribution is a recipe option."),
    NamingNote("DWA", ("*+dwa",), True,
               "Liu, Johns & Davison (CVPR 2019, the MTAN paper) Dynamic Weight Average."),
    NamingNote("Hard sharing / HPS / MTL (uniform)", ("hard_sharing+equal",), True,
               "one shared encoder, one head per task, the plain sum of the task losses."),
    NamingNote("MTL (uniform) vs MTL (Scalar)", ("hard_sharing+equal",), True,
               "one algorithm (hard sharing, a fixed weighted sum of the task losses); GatedMTL's Scalar row sets "
               "Maninis et al.'s (2019) per-task loss weights, a setting shown under the method options."),
    NamingNote("Max roaming / MaxRoam", ("max_roaming+*",), True, "Pascal et al. (2021) Maximum Roaming."),
    NamingNote("STL / Single-task", ("single_task+*",), True, "one network per task."),
)


def note_methods(lb: Leaderboard, note: NamingNote) -> list[MethodId]:
    return [m for m in lb.methods() if any(fnmatch.fnmatchcase(m.key, p) for p in note.match)]


def printed_names(entries: list[Entry]) -> dict[str, list[str]]:
    """Paper -> the distinct labels its rows print (citation marks removed)."""
    out: dict[str, list[str]] = {}
    for e in entries:
        if e.clean_label not in out.setdefault(e.paper, []):
            out[e.paper].append(e.clean_label)
    return out


# --- settings ---------------------------------------------------------------------------------------

ASPECTS = (("dataset", "dataset"), ("tasks", "task_set"), ("backbone", "backbone"),
           ("resolution", "image_size"), ("schedule", "schedule"), ("method options", "options"))


def setting_differences(entries: list[Entry]) -> str:
    """Which aspects of the recipes differ between ``entries`` (with how many values), which agree."""
    diff, same = [], []
    for name, attr in ASPECTS:
        vals = list(dict.fromkeys(str(getattr(e, attr)) for e in entries if e.dataset))
        if len(vals) > 1:
            diff.append(f"{name} ({len(vals)} values)")
        elif vals:
            same.append(f"{name} {vals[0]}")
    return (f"differ: {', '.join(diff)}" if diff else "no setting differs") + \
        (f"; same: {'; '.join(same)}" if same else "") + "."


# --- rendering --------------------------------------------------------------------------------------

def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _few(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "") if names else "—"


def _paper(key: str) -> str:
    return PAPER_NAMES.get(key, key)


def _delta_cells(e: Entry) -> list[str]:
    d = e.delta
    if d is None:
        return ["no Δ column", "—", "—", "—"]
    verdict = d.verdict if d.measured is not None else ""
    return [d.label, d.published_text, d.measured_text(), verdict]


def method_section(lb: Leaderboard, mid: MethodId, level: str = "###") -> list[str]:
    es = lb.methods().get(mid, [])
    papers = ", ".join(_paper(p) for p in lb.papers_of(mid))
    lines = [f"{level} {mid.display} (`{mid.key}`) — {papers}", "",
             f"Setting differences: {setting_differences(es)}", "",
             "| paper | table | row | dataset | tasks | backbone (init) | image_size | schedule | method options "
             "| seeds | Δ column | published | measured | verdict | relative to |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in es:
        lines.append("| " + " | ".join(_md(x) for x in [
            _paper(e.paper), f"`{e.table}`", e.label, e.dataset, e.task_set, e.backbone, e.image_size, e.schedule,
            e.options, e.seeds, *_delta_cells(e), e.delta.baseline if e.delta else "—"]) + " |")
    return lines + [""]


def _header(lb: Leaderboard) -> list[str]:
    prof = PROFILES[lb.profile]
    lines = []
    if prof.synthetic:
        lines += [f"> **{SYNTHETIC_LINE}.** Measured values come from the `{lb.profile}` profile "
                  f"({prof.description}).", ""]
    elif prof.banner:
        lines += [f"> **{prof.banner}.** Measured values come from the `{lb.profile}` profile "
                  f"({prof.description}).", ""]
    return lines + ["# Cross-paper leaderboard", "",
        f"Generated by `mtlrepro leaderboard --all{' --profile ' + lb.profile if lb.profile != 'full' else ''}`. "
        "Published values: the registry (`reproduce/<paper>/<table>.yaml`), as printed. Measured values: the run "
        f"store (profile `{lb.profile}`), Δ recomputed per seed from the measured cells against the measured "
        "baseline row (`mtlrepro/compare.py`); \"not run\" where no run is stored.", "",
        "A method is what a row's recipe runs — (sharing scheme, weighting) resolved through their registries, "
        "plus the search behind a branched tree — never its printed label. Settings are the full profile's "
        "recipes (the paper's).", ""]


def _names_section(lb: Leaderboard) -> list[str]:
    papers = sorted({e.paper for e in lb.entries})
    lines = ["## Methods and the names the papers print", "",
             "| method | key | " + " | ".join(_paper(p) for p in papers) + " |",
             "|---|---|" + "---|" * len(papers)]
    for m, es in lb.methods().items():
        names = printed_names(es)
        lines.append(f"| {_md(m.display)} | `{m.key}` | " + " | ".join(_md(_few(names.get(p, []))) for p in papers)
                     + " |")
    lines += ["", "### Naming differences between papers", ""]
    for note in NAMING:
        ms = note_methods(lb, note)
        printed = "; ".join(f"{_paper(p)}: {', '.join(ns)}" for m in ms
                            for p, ns in printed_names(lb.methods()[m]).items())
        opts = sorted({f"{_paper(e.paper)}: {e.options}" for m in ms for e in lb.methods()[m]
                       if m.weighting == "rlw"})
        lines.append(f"- **{note.title}** — {'the same algorithm' if note.same else 'not the same algorithm'}: "
                     f"{note.why} Keys: {', '.join(f'`{m.key}`' for m in ms) or 'none in the registry'}. "
                     f"Printed as: {printed or '—'}." + (f" Recipe options: {'; '.join(opts)}." if opts else ""))
    return lines + [""]


def ranking_groups(lb: Leaderboard) -> dict[tuple[str, str], list[tuple[Entry, list[str]]]]:
    """(dataset, backbone) -> (row, the tables that print it) for every row with a published Δ, best
    first by its paper's Δ; a row of one paper repeated by another of its tables (same method, label,
    tasks, published and measured Δ, baseline) is listed once, with every table that prints it."""
    groups: dict[tuple[str, str], dict[tuple, tuple[Entry, list[str]]]] = {}
    for e in lb.entries:
        if e.method is None or e.delta is None or e.delta.published is None:
            continue
        k = (e.paper, e.method, e.task_set, e.label, e.delta.published_text, e.delta.measured, e.delta.baseline)
        groups.setdefault((e.dataset, e.backbone), {}).setdefault(k, (e, []))[1].append(e.table)
    return {g: sorted(d.values(), key=lambda x: (_sign(x[0]) * x[0].delta.published, x[0].paper, x[0].table,
                                                 x[0].row)) for g, d in sorted(groups.items())}


def _sign(e: Entry) -> float:
    """-1 for a Δ where higher is better (sorting ascending puts the best first)."""
    return -1.0 if e.delta.higher_is_better else 1.0


def _ranking_section(lb: Leaderboard) -> list[str]:
    lines = ["## Ranking per dataset and backbone", "",
             "Each row is ranked by its own paper's relative-improvement column; the columns differ in "
             "definition and baseline (stated per row), so ranks across papers compare numbers, not methods.", ""]
    for (ds, bb), rows in ranking_groups(lb).items():
        measured = sorted((e for e, _ in rows if e.delta.measured is not None),
                          key=lambda e: (_sign(e) * e.delta.measured, e.table, e.row))
        mrank = {id(e): i + 1 for i, e in enumerate(measured)}
        papers = ", ".join(_paper(p) for p in sorted({e.paper for e, _ in rows}))
        lines += [f"### {ds} · {bb} — {papers}", "",
                  "| rank | method | paper | tables | row | tasks | Δ column | published | measured | measured rank "
                  "| relative to |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for i, (e, tables) in enumerate(rows, 1):
            lines.append("| " + " | ".join(_md(x) for x in [
                i, e.method.display, _paper(e.paper), ", ".join(f"`{t}`" for t in tables), e.label, e.task_set,
                e.delta.label, e.delta.published_text, e.delta.measured_text(), mrank.get(id(e), "—"),
                e.delta.baseline]) + " |")
        lines.append("")
    return lines


def _footer(lb: Leaderboard) -> list[str]:
    lines = ["## Rows without a method identity", ""]
    by: dict[tuple[str, str], list[str]] = {}
    for e in lb.entries:
        if e.method is None:
            by.setdefault((e.table, e.unresolved), []).append(e.row)
    lines += [f"- `{t}` ({why}): {', '.join(rows)}" for (t, why), rows in sorted(by.items())] or ["- none"]
    lines += [f"- table file not read: {b}" for b in lb.broken]
    lines += ["", "## Δ columns and table settings", ""]
    for t in lb.tables:
        cols = [c for c in t.columns if c.derived is not None and c.derived.formula.startswith("delta")]
        conv = {e.delta.column: e.delta.convention for e in lb.entries if e.table == t.id and e.delta}
        desc = "; ".join(f"{c.label} = `{c.derived.formula}` (convention {conv.get(c.key) or '—'}"
                         f"{': ' + c.derived.stated if c.derived.stated else ''})" for c in cols)
        lines.append(f"- `{t.id}` — {_md(t.dataset_variant)}" + (f" **Δ:** {_md(desc)}" if desc else ""))
    return lines + [""]


def render_page(lb: Leaderboard) -> str:
    lines = _header(lb) + _names_section(lb) + ["## Methods reported by two or more papers", ""]
    for mid in lb.shared():
        lines += method_section(lb, mid)
    return "\n".join(lines + _ranking_section(lb) + _footer(lb))


def render_method(lb: Leaderboard, mid: MethodId) -> str:
    note = caveat(lb.profile)
    head = [f"> **{note}.**", ""] if note else []
    return "\n".join(head + method_section(lb, mid, level="#"))


def method_json(lb: Leaderboard, mid: MethodId) -> dict[str, Any]:
    es = lb.methods().get(mid, [])
    notes = [dataclasses.asdict(n) for n in NAMING if mid in note_methods(lb, n)]
    return {"profile": lb.profile, "synthetic": PROFILES[lb.profile].synthetic, "key": mid.key,
            "display": mid.display, "identity": dataclasses.asdict(mid), "papers": lb.papers_of(mid),
            "printed_names": printed_names(es), "naming_notes": notes,
            "setting_differences": setting_differences(es),
            "rows": [dict(dataclasses.asdict(e), method=mid.key) for e in es]}


def leaderboard_path(profile: str, root: Path | None = None) -> Path:
    root = root or store.RESULTS_DIR
    return root / "leaderboard.md" if profile == "full" else root / profile / "leaderboard.md"


def write_leaderboard(profile: str = "full", results_root: Path | str | None = None,
                      out: Path | str | None = None) -> Path:
    """Write the page to ``out`` (default ``results/leaderboard.md``; tiny: ``results/tiny/...``)."""
    root = Path(results_root) if results_root is not None else None
    path = Path(out) if out is not None else leaderboard_path(profile, root)
    store.write_text_atomic(path, render_page(build(profile, root)))
    return path
