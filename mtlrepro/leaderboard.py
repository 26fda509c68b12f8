"""Cross-paper leaderboard: every paper's rows of one method side by side, and a ranking per dataset.

A row's **method identity** comes from its recipe, never from its printed label::

    method(r) = (scheme(r.sharing, r.conv_unit), WEIGHTINGS[r.weighting].name, variant(r))

with the scheme from :func:`mtlrepro.models.resolve_sharing` and the weighting's canonical name
(``uncertainty`` -> ``uw``, ``rdw`` -> ``rlw``). ``variant`` is set only where the algorithm is an
option of the scheme: the search that exported a ``branched`` tree (``architecture_from``) and
``conv_alt``'s ``conv``. Fixed per-task loss weights (``loss_weights``, GatedMTL's ω_t) are a
setting, not a method: they show under the method options. A recipe marked ``not_implemented``
holds placeholder fields and gets no identity.

Published numbers come from the registry only; measured ones from the run store through
:func:`mtlrepro.compare.compare_table` (Δ recomputed per seed from the measured cells against the
measured baseline row). The page (:func:`render_page`) is a pure function of (registry, recipes,
store, profile): no time stamp, no machine, a fixed order.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import store
from .errors import UserError
from .recipe import PROFILES, Recipe, RecipeSet, get_recipe, recipe_sets
from .registry import UnknownKeyError
from .schema import Column, Row, Table
from .tables import TableFormatError, all_tables, get_table

PAPER_NAMES = {"etr_nlp": "ETR-NLP", "conal": "CoNAL", "gatedmtl": "GatedMTL"}
SYNTHETIC_LINE = "synthetic data, random initialisation: not comparable with the paper"

#: display names of the parts of an identity (a key not listed shows as itself)
SHARING_NAMES = {
    "hard_sharing": "HPS", "single_task": "STL", "mtan": "MTAN", "cross_stitch": "Cross-stitch",
    "max_roaming": "MaxRoam", "attentive": "Attentive HPS", "task_routing": "Task routing", "etr": "ETR",
    "etr_nlp": "ETR-NLP", "nlp": "NLP block", "conv_alt": "Conv alternative", "nddr_cnn": "NDDR-CNN",
    "afa": "AFA", "rotograd": "RotoGrad", "tsn": "TSN", "mtl_nas": "MTL-NAS", "branched": "Branched tree",
    "gatedmtl": "GatedMTL", "ltb_supernet": "LTB supernet", "conal_supernet": "CoNAL supernet",
    "bmtas_supernet": "BMTAS supernet", "conal_pro_supernet": "CoNAL-Pro supernet",
    "mtl_nas_supernet": "MTL-NAS supernet"}
WEIGHTING_NAMES = {
    "equal": "equal", "gradnorm": "GradNorm", "uw": "UW", "dwa": "DWA", "rlw": "RLW", "scalar": "Scalar",
    "auto_lambda": "Auto-λ", "mgda_ub": "MGDA-UB", "mgda": "MGDA", "pcgrad": "PCGrad", "cagrad": "CAGrad",
    "gradvac": "GradVac", "nash_mtl": "Nash-MTL", "pareto_mtl": "Pareto-MTL", "imtl": "IMTL",
    "rotograd": "RotoGrad", "conal_search": "CoNAL search", "conal_partial_search": "CoNAL partial search",
    "conal_pro_search": "CoNAL-Pro search", "ltb_search": "LTB search", "bmtas_search": "BMTAS search",
    "mtl_nas_search": "MTL-NAS search", "tag_affinity": "TAG affinity"}
#: the tree a search exports, by the search's weighting name (``branched`` variants)
TREE_NAMES = {"conal_search": "CoNAL", "conal_partial_search": "CoNAL (partial search)",
              "conal_pro_search": "CoNAL-Pro", "ltb_search": "LTB", "bmtas_search": "BMTAS",
              "tag_affinity": "TAG", "fixed": "Fixed"}
CONV_NAMES = {"conv": "Conv", "lbconv": "LBConv", "shift": "Shift", "depthwise": "Depth-wise conv",
              "ghost": "Ghost", "nlp": "NLPs"}
#: whole identities whose name is the method of a paper (CoNAL = its tree retrained with RLW, Eq. 3)
DISPLAY_OVERRIDES = {"branched[conal_search]+rlw": "CoNAL", "branched[conal_pro_search]+rlw": "CoNAL-Pro",
                     "rotograd+rotograd": "RotoGrad"}


@dataclass(frozen=True, order=True)
class MethodId:
    sharing: str
    weighting: str
    variant: str = ""

    @property
    def key(self) -> str:
        return f"{self.sharing}{f'[{self.variant}]' if self.variant else ''}+{self.weighting}"

    @property
    def display(self) -> str:
        if self.key in DISPLAY_OVERRIDES:
            return DISPLAY_OVERRIDES[self.key]
        s = SHARING_NAMES.get(self.sharing, self.sharing)
        if self.sharing == "branched" and self.variant:
            s = f"{TREE_NAMES.get(self.variant, self.variant)} tree"
        elif self.sharing == "conv_alt":
            s = CONV_NAMES.get(self.variant, self.variant)
        w = WEIGHTING_NAMES.get(self.weighting, self.weighting)
        if self.weighting == "equal":
            return s
        if self.sharing == "hard_sharing" or self.weighting.endswith("_search") and self.sharing.endswith("_supernet"):
            return w
        return f"{s} + {w}"


class Unresolved(ValueError):
    """A row whose recipe does not say which method it runs."""


def method_id(recipe: Recipe) -> MethodId:
    """The identity of the method ``recipe`` runs (module docstring); :class:`Unresolved` otherwise."""
    from .methods import WEIGHTINGS
    from .models import resolve_sharing

    if recipe.status == "not_implemented":
        raise Unresolved("recipe not implemented (its sharing and weighting fields are placeholders)")
    try:
        sharing = resolve_sharing(recipe.sharing, recipe.conv_unit)[0]
        weighting = WEIGHTINGS.get(recipe.weighting).name
    except (UnknownKeyError, ValueError) as e:
        raise Unresolved(str(e)) from None
    variant = ""
    if sharing == "branched":
        if recipe.architecture_from:
            up = recipe.architecture_from
            up = up if "/" in up else f"{recipe.table}/{up}"
            variant = WEIGHTINGS.get(get_recipe(up).weighting).name
        else:
            variant = "fixed" if "architecture" in recipe.sharing_kwargs else ""
    elif sharing == "conv_alt":
        variant = str(recipe.sharing_kwargs.get("conv", "conv"))
    return MethodId(sharing, weighting, variant)


@dataclass(frozen=True)
class Delta:
    """A row's relative-improvement cell: published (registry) and measured (store)."""

    column: str
    label: str
    formula: str
    stated: str
    convention: str
    higher_is_better: bool
    baseline: str                   # the row it is relative to, with its method
    published_text: str
    published: float | None
    decimals: int
    measured: float | None
    measured_std: float | None
    n_meas: int
    verdict: str
    note: str

    def measured_text(self) -> str:
        if self.measured is None:
            if self.verdict == "missing":
                return "not run" if not self.note else f"not computed ({self.note})"
            return self.verdict
        d = max(self.decimals, 2)
        std = f" ± {self.measured_std:.{d}f}" if self.measured_std is not None else ""
        return f"{self.measured:+.{d}f}{std} (n={self.n_meas})"


@dataclass(frozen=True)
class Entry:
    """One printed row, its method and its setting (the full profile's recipe: the paper's)."""

    paper: str
    table: str
    row: str
    label: str
    method: MethodId | None
    unresolved: str
    dataset: str = ""
    task_set: str = ""
    backbone: str = ""
    image_size: int | None = None
    schedule: str = ""
    options: str = ""
    seeds: str = ""
    delta: Delta | None = None

    @property
    def clean_label(self) -> str:
        return re.sub(r"\s*\[\d+\]", "", self.label).strip()


def _backbone(r: Recipe) -> str:
    w = r.sharing_kwargs.get("width_mult")
    width = f" ×{w:g}" if isinstance(w, (int, float)) and w != 1 else ""
    return f"{r.backbone}{width} ({r.pretrained or 'scratch'})"


def _schedule(r: Recipe) -> str:
    parts = [f"{r.epochs} ep", f"{r.optimizer} lr {r.lr:g}"]
    parts += [r.lr_schedule] if r.lr_schedule else []
    parts += [f"wd {r.weight_decay:g}"] if r.weight_decay else []
    return ", ".join(parts + [f"batch {r.batch_size}"])


def _options(r: Recipe) -> str:
    kw = {k: v for k, v in r.sharing_kwargs.items() if k not in ("width_mult", "conv")}
    parts = [f"update {r.update}"] + [f"{k}={v}" for k, v in sorted({**kw, **r.weighting_kwargs}.items())]
    return "; ".join(parts + ([f"loss_weights={r.loss_weights}"] if r.loss_weights else []))


def _delta_column(table: Table, row: Row) -> Column | None:
    for c in table.columns:
        if c.derived is not None and c.derived.formula.startswith("delta") and row.cells.get(c.key) is not None \
                and row.cells[c.key].value is not None:
            return c
    return None


def _baseline(table: Table, col: Column, row: Row, rs: RecipeSet | None) -> str:
    """The row a Δ is relative to, as :func:`mtlrepro.compare.compare_table` takes it."""
    ref = rs.delta_reference if rs is not None else None
    if not col.derived.inputs and ref:
        t = get_table(ref["table"])
        b = t.row(ref["row"])
    else:
        key = row.baseline or col.derived.baseline
        if key is None:
            return "no baseline row"
        t, b = table, table.row(key)
    brs = recipe_sets().get(t.id)
    rec = next((r for r in brs.recipes if r.row == b.key), None) if brs else None
    try:
        name = method_id(rec).display if rec else ""
    except Unresolved:
        name = ""
    return f"{b.label} (`{t.id}/{b.key}`{f', {name}' if name and name != b.label else ''})"


def _table_entries(table: Table, profile: str, results_root: Path | None) -> list[Entry]:
    from .compare import compare_table

    rs = recipe_sets().get(table.id)
    by_row = {r.row: r for r in rs.recipes} if rs else {}
    cells, conventions, why = {}, {}, ""
    if any(_delta_column(table, r) for r in table.rows):
        try:
            td = compare_table(table, profile, results_root=results_root, recipe_set=rs)
            cells, conventions = {(c.row, c.column): c for c in td.cells}, td.conventions
        except (UserError, TableFormatError) as e:
            why = f"not compared: {e}"
    out = []
    for row in table.rows:
        rec = by_row.get(row.key)
        try:
            mid, unresolved = (method_id(rec), "") if rec else (None, "no recipe")
        except Unresolved as e:
            mid, unresolved = None, str(e)
        col = _delta_column(table, row)
        delta = None
        if col is not None:
            cd, cell = cells.get((row.key, col.key)), row.cells[col.key]
            delta = Delta(col.key, col.label, col.derived.formula, col.derived.stated, conventions.get(col.key, ""),
                          col.higher_is_better is not False, _baseline(table, col, row, rs), cell.text,
                          table.absolute(row, col.key), cell.decimals, cd.measured if cd else None,
                          cd.measured_std if cd else None, cd.n_meas if cd else 0,
                          cd.verdict if cd else "missing", (cd.note if cd else why) or "")
        setting: dict[str, Any] = {}
        if rec is not None:
            setting = dict(dataset=rec.dataset, task_set=rec.task_set, backbone=_backbone(rec),
                           image_size=rec.image_size, schedule=_schedule(rec), options=_options(rec),
                           seeds=f"{','.join(map(str, rec.seeds))} (paper: {table.seeds or 'not stated'})")
        out.append(Entry(table.paper, table.id, row.key, row.label, mid, unresolved, delta=delta, **setting))
    return out


@dataclass(frozen=True)
class Leaderboard:
    profile: str
    entries: tuple[Entry, ...]
    tables: tuple[Table, ...]
    broken: tuple[str, ...] = ()

    def methods(self) -> dict[MethodId, list[Entry]]:
        out: dict[MethodId, list[Entry]] = {}
        for e in self.entries:
            if e.method is not None:
                out.setdefault(e.method, []).append(e)
        return dict(sorted(out.items()))

    def papers_of(self, mid: MethodId) -> list[str]:
        return sorted({e.paper for e in self.methods().get(mid, [])})

    def shared(self) -> dict[MethodId, list[Entry]]:
        """The methods that two or more papers report."""
        return {m: es for m, es in self.methods().items() if len({e.paper for e in es}) >= 2}


def build(profile: str = "full", results_root: Path | str | None = None) -> Leaderboard:
    """Every row of every table with its method, setting, published and measured Δ."""
    if profile not in PROFILES:
        raise UnknownKeyError("profile", profile, list(PROFILES))
    root = Path(results_root) if results_root is not None else None
    broken: list[TableFormatError] = []
    tables = all_tables(broken)
    entries = [e for t in tables for e in _table_entries(t, profile, root)]
    return Leaderboard(profile, tuple(entries), tuple(tables), tuple(str(b) for b in broken))


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


def _norm(name: str) -> str:
    return re.sub(r"[^\w+λ]|_", "", name.lower())


class UnknownMethodError(UnknownKeyError):
    """A METHOD that names no method of the leaderboard; the message suggests the closest."""

    def __init__(self, key: str, suggestions: list[str], known: list[str]):
        self.kind, self.key, self.known = "method", key, known
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        listing = f" Known: {', '.join(known)}." if len(known) <= 40 else \
            f" ({len(known)} methods: the page of `mtlrepro leaderboard --all` names them all.)"
        KeyError.__init__(self, f"unknown method {key!r}.{hint}{listing}")


def _names(lb: Leaderboard) -> tuple[dict[str, set[MethodId]], dict[str, set[MethodId]]]:
    """Normalised name -> identities: (keys and display names, printed labels and registry names)."""
    from .methods import WEIGHTINGS

    own: dict[str, set[MethodId]] = {}
    other: dict[str, set[MethodId]] = {}
    for m, es in lb.methods().items():
        for n in (m.key, m.display):
            own.setdefault(_norm(n), set()).add(m)
        for e in es:
            other.setdefault(_norm(e.clean_label), set()).add(m)
        if m.sharing == "hard_sharing" and not m.variant and m.weighting != "equal":   # a bare weighting key
            for w in WEIGHTINGS.names():
                if WEIGHTINGS.get(w).name == m.weighting:
                    other.setdefault(_norm(w), set()).add(m)
        if m.weighting == "equal" and not m.variant:         # a bare sharing key: it with equal weights
            other.setdefault(_norm(m.sharing), set()).add(m)
    return own, other


def find_method(lb: Leaderboard, name: str) -> MethodId:
    """The method ``name`` means (case-insensitive): a key or display name first, else a printed name
    or a registry key; ambiguous names and unknown ones raise a :class:`UserError` naming candidates."""
    import difflib

    own, other = _names(lb)
    for names in (own, other):
        hit = names.get(_norm(name))
        if hit and len(hit) == 1:
            return next(iter(hit))
        if hit:
            raise UserError(f"method {name!r} is several methods: "
                            f"{', '.join(f'{m.display} ({m.key})' for m in sorted(hit))}; give one of their keys")
    pool = {**other, **own}
    close = difflib.get_close_matches(_norm(name), list(pool), n=8, cutoff=0.5)
    sugg = list(dict.fromkeys(f"{m.display} ({m.key})" for c in close for m in sorted(pool[c])))[:5]
    raise UnknownMethodError(name, sugg, [m.display for m in lb.methods()])


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
    head = [f"> **{SYNTHETIC_LINE}.**", ""] if PROFILES[lb.profile].synthetic else []
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
