"""Cross-paper leaderboard, the data model: every paper's rows with their method identity and Δ.

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
measured baseline row). :func:`build` collects the :class:`Leaderboard`; :func:`find_method` resolves
a name (key, display name, printed label or registry alias) to its identity. The markdown page, the
naming notes and the JSON of one method are in :mod:`mtlrepro.leaderboard_page`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .profiles import PROFILES
from .recipe import Recipe, RecipeSet, get_recipe, recipe_sets
from .registry import UnknownKeyError
from .schema import Column, Row, Table
from .tables import TableFormatError, all_tables, get_table

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


# --- finding a method by name ---------------------------------------------------------------------

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
