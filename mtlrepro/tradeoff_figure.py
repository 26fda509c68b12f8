"""Accuracy-vs-FLOPs trade-off figures (GatedMTL Figure 2): published and measured on the same axes.

A trade-off figure is a recipe set whose ``figure`` block has ``kind: tradeoff`` and ``panels: [{name,
table, x, y}]``: each panel plots one registry table's rows at (x, y) = (a complexity column, a
metric or derived column). Two sources per panel, never mixed:

* **published**: the registry cells (``Table.absolute``), hollow markers;
* **measured**: the run store through :func:`mtlrepro.compare.compare_table`: y is the measured mean
  ± sample std over seeds (a Δ or Overall recomputed from the measured cells against the measured
  baseline row), x the records' complexity (``compare.flops_key``: every task of one image, fvcore
  MACs at the run's own input size) converted to the column's printed unit,
  x = MACs · f / scale with f = 2 for ``FLOPs``, 1 for ``MACs`` and 1 for ``FLOPs-as-printed``
  (the paper's convention is not established: the count is plotted as it is), filled markers.

Rows of ``sweep_method`` (GatedMTL's λ_s sweep) are one connected line per row group and source;
the other rows are labelled points. A row without a measured point is listed on the page with its
verdict. The PNG and the page are pure functions of the store (no clock, sorted inputs).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .compare import MACS_TO_UNIT, RowRuns, compare_table, flops_key
from .profiles import PROFILES, SYNTHETIC_NOTE, caveat
from .recipe import RecipeSet
from .schema import SCALE_SUFFIX, Column, Row, Table
from .store import RESULTS_DIR, write_text_atomic
from .tables import TableFormatError, get_table

#: the label of anything not from the full profile (PNG title and top of the page)
#: MACs -> printed unit when the paper's convention is unknown ("FLOPs-as-printed"): as counted
AS_PRINTED_FACTOR = 1.0
_MARKERS = "s^vDPX<>h*p"


@dataclass(frozen=True)
class Point:
    """One row at (x, y) from one source; ``n``: measured seeds (None for published)."""

    row: str
    label: str
    group: str | None
    method: str | None
    sweep: bool
    x: float
    y: float
    x_std: float | None = None
    y_std: float | None = None
    n: int | None = None
    verdict: str = ""               # the y cell's verdict (measured points)


@dataclass(frozen=True)
class Missing:
    row: str
    label: str
    group: str | None
    verdict: str
    why: str


@dataclass
class Panel:
    name: str
    table: Table
    x: Column
    y: Column
    x_factor: float
    x_scale: str = "log"
    sweep_method: str = "gatedmtl"
    published: list[Point] = field(default_factory=list)
    measured: list[Point] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    flags: dict[str, tuple[str, ...]] = field(default_factory=dict)


def x_factor(col: Column) -> float:
    """MACs -> the column's unit (before its K/M/G scale)."""
    return MACS_TO_UNIT.get(col.unit or "", AS_PRINTED_FACTOR)


def _stats(xs: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def measured_x(table: Table, col: Column, row: Row, rr: RowRuns) -> tuple[float, float | None] | str:
    """(mean, std) of the finished runs' compute in the column's printed unit, or why there is none."""
    if not rr.runs:
        return "no finished run"
    key = flops_key(table)
    counts = [rec.complexity[key] for rec in sorted(rr.runs, key=lambda r: r.seed)
              if (rec.complexity or {}).get(key) is not None]
    if not counts:
        return f"the runs recorded no complexity `{key}`"
    cell = row.cells.get(col.key)
    scale = SCALE_SUFFIX.get(((cell.suffix if cell else "") or col.scale or "").upper(), 1.0)
    return _stats([c * x_factor(col) / scale for c in counts])


def _check_spec(spec: dict, table: Table, where: str) -> None:
    keys = [c.key for c in table.columns]
    for axis in ("x", "y"):
        if spec.get(axis) not in keys:
            raise TableFormatError(f"{where}: panel {spec.get('name')!r}: {axis} = {spec.get(axis)!r} is no column "
                                   f"of {table.id} (columns: {', '.join(keys)})")
    if table.column(spec["x"]).kind != "complexity":
        raise TableFormatError(f"{where}: panel {spec.get('name')!r}: x must be a complexity column")


def collect_panel(spec: dict, profile: str, sweep_method: str, seeds: list[int] | None = None,
                  results_root=None, recipe_set: RecipeSet | None = None, where: str = "figure") -> Panel:
    """The published and measured points of one panel (``recipe_set``: the table's recipes, for tests)."""
    table = get_table(spec["table"])
    _check_spec(spec, table, where)
    xcol, ycol = table.column(spec["x"]), table.column(spec["y"])
    td = compare_table(table, profile, seeds, results_root, recipe_set)
    ycells = {d.row: d for d in td.cells if d.column == ycol.key}
    p = Panel(spec["name"], table, xcol, ycol, x_factor(xcol), spec.get("x_scale", "log"), sweep_method)
    for row in table.rows:
        sweep = row.method == sweep_method
        p.flags[row.key] = row.flags
        px, py = table.absolute(row, xcol.key), table.absolute(row, ycol.key)
        if px is not None and py is not None:
            p.published.append(Point(row.key, row.label, row.group, row.method, sweep, px, py,
                                     y_std=row.cells[ycol.key].std))
        d = ycells.get(row.key)
        if d is None:
            p.missing.append(Missing(row.key, row.label, row.group, "—", f"the table prints no {ycol.label}"))
            continue
        if d.measured is None:
            p.missing.append(Missing(row.key, row.label, row.group, d.verdict, d.note or "no run stored"))
            continue
        mx = measured_x(table, xcol, row, td.runs[row.key])
        if isinstance(mx, str):
            p.missing.append(Missing(row.key, row.label, row.group, "missing", f"{xcol.label}: {mx}"))
            continue
        p.measured.append(Point(row.key, row.label, row.group, row.method, sweep, mx[0], d.measured, mx[1],
                                d.measured_std, d.n_meas, d.verdict))
    return p


def figure_paths(figure_id: str, profile: str, results_root=None) -> tuple[Path, Path]:
    """Same layout as :func:`mtlrepro.figures.write_figure`: results/[<profile>/]<paper>/<name>.{png,md}."""
    root = Path(results_root or RESULTS_DIR) / ("" if profile == "full" else profile)
    paper, name = figure_id.split("/", 1)
    return root / paper / f"{name}.png", root / paper / f"{name}.md"


def collect(rs: RecipeSet, profile: str, seeds: list[int] | None = None, results_root=None,
            recipe_sets: dict[str, RecipeSet] | None = None) -> list[Panel]:
    """Every panel of a trade-off figure (``recipe_sets``: table id -> recipes, overriding the files)."""
    fig = rs.figure or {}
    if fig.get("kind") != "tradeoff" or not fig.get("panels"):
        raise TableFormatError(f"{rs.path}: figure: expected kind: tradeoff with a list of panels")
    sweep = fig.get("sweep_method", "gatedmtl")
    return [collect_panel(spec, profile, sweep, seeds, results_root, (recipe_sets or {}).get(spec.get("table")),
                          where=str(rs.path)) for spec in fig["panels"]]


def _draw(ax, p: Panel, profile: str) -> None:
    """One panel: per source a line per sweep group and labelled baseline points."""
    from matplotlib.lines import Line2D

    groups = list(dict.fromkeys(r.group for r in p.table.rows))
    grouped = groups != [None]
    base = list(dict.fromkeys(q.method for q in p.published + p.measured if not q.sweep))

    def color(q: Point) -> str:
        if grouped:
            return f"C{groups.index(q.group) % 10}"
        return "C0" if q.sweep else f"C{(base.index(q.method) + 1) % 10}"

    def bars(qs: list[Point], attr: str):
        vals = [getattr(q, attr) for q in qs]
        return None if all(v is None for v in vals) else [v or 0.0 for v in vals]

    sweep_label = next((q.label for q in p.published + p.measured if q.sweep), "sweep")
    handles = [Line2D([], [], color="k", marker="o", mfc="none", linestyle="--", label="published"),
               Line2D([], [], color="k", marker="o", linestyle="-", label=f"measured ({profile})")]
    for source, pts, filled in (("published", p.published, False), ("measured", p.measured, True)):
        for g in groups:
            line = sorted((q for q in pts if q.sweep and q.group == g), key=lambda q: (q.x, q.row))
            if not line:
                continue
            c = color(line[0])
            ax.errorbar([q.x for q in line], [q.y for q in line], xerr=bars(line, "x_std"), yerr=bars(line, "y_std"),
                        marker="o", color=c, mfc=c if filled else "none", linestyle="-" if filled else "--",
                        capsize=2, ms=5)
            name = f"{sweep_label} ({g})" if grouped else sweep_label
            if name not in [h.get_label() for h in handles]:
                handles.append(Line2D([], [], color=c, marker="o", label=name))
        for q in (q for q in pts if not q.sweep):
            c = color(q)
            ax.errorbar([q.x], [q.y], xerr=bars([q], "x_std"), yerr=bars([q], "y_std"), linestyle="none",
                        marker=_MARKERS[base.index(q.method) % len(_MARKERS)], color=c,
                        mfc=c if filled else "none", capsize=2, ms=6)
            ax.annotate(q.label, (q.x, q.y), textcoords="offset points", xytext=(4, 3), fontsize=6, color=c)
    xs = [q.x for q in p.published + p.measured]
    if p.x_scale == "log" and xs and min(xs) > 0:
        ax.set_xscale("log")
    if not p.measured:
        ax.text(0.5, 0.02, "no measured point (see the page)", transform=ax.transAxes, ha="center", fontsize=7)
    ax.set_xlabel(f"{p.x.label} (measured: fvcore MACs × {p.x_factor:g})", fontsize=8)
    ax.set_ylabel(p.y.label, fontsize=8)
    ax.set_title(f"{p.name}\n{p.table.id}", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=6)


def png_title(rs: RecipeSet, profile: str) -> str:
    """The PNG's title: the figure's, with the synthetic label for any profile but ``full``."""
    title = rs.figure["title"]
    if not caveat(profile):
        return title
    return title + (f"\nSYNTHETIC: {SYNTHETIC_NOTE}" if PROFILES[profile].synthetic else f"\n{caveat(profile)}") + \
        f" (profile {profile})"


def render_png(rs: RecipeSet, panels: list[Panel], profile: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    for ax, p in zip(axes[0], panels):
        _draw(ax, p, profile)
    fig.suptitle(png_title(rs, profile), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)


def _num(v: float | None, std: float | None = None) -> str:
    if v is None:
        return "—"
    return f"{v:.4g}" + (f" ± {std:.2g}" if std is not None else "")


def _panel_lines(p: Panel, profile: str) -> list[str]:
    from tabulate import tabulate

    meas = {q.row: q for q in p.measured}
    rows = []
    for r in p.table.rows:
        m = meas.get(r.key)
        rows.append([f"`{r.key}`", r.label, r.group or "", "sweep" if r.method == p.sweep_method else "baseline", *(r.cells[k].text if k in r.cells else "—" for k in (p.x.key, p.y.key)),
            _num(m.x, m.x_std) if m else "—", _num(m.y, m.y_std) if m else "—", m.n if m else 0,
            m.verdict if m else "—", ", ".join(p.flags.get(r.key, ()))])
    out = [f"## {p.name}", "",
           f"Table `{p.table.id}`: y = `{p.y.key}` ({p.y.label}), x = `{p.x.key}` ({p.x.label}, unit "
           f"{p.x.unit}; measured: the records' `{flops_key(p.table)}` × {p.x_factor:g}). "
           f"{len(p.measured)} of {len(p.table.rows)} rows measured (profile `{profile}`).", "",
           tabulate(rows, headers=["row", "label", "group", "series", f"{p.x.key} published", f"{p.y.key} published",
                                   f"{p.x.key} measured", f"{p.y.key} measured", "n", "verdict (y)", "flags"],
                    tablefmt="github", disable_numparse=True), "", "### Rows without a measured point", ""]
    out += [f"- `{m.row}` ({m.label}{', ' + m.group if m.group else ''}): **{m.verdict}** — "
            f"{' '.join(m.why.split())}" for m in p.missing] or ["Every row has a measured point."]
    return out + [""]


def render_page(figure_id: str, rs: RecipeSet, panels: list[Panel], profile: str, png_name: str) -> str:
    """The markdown page: a function of the panels alone (no clock, no paths outside the figure)."""
    fig = rs.figure
    lines = [f"# {figure_id} — {fig['title']}", ""]
    if caveat(profile):
        head = f"**SYNTHETIC** — {SYNTHETIC_NOTE}" if PROFILES[profile].synthetic else f"**{caveat(profile)}**"
        lines += [f"> {head} (profile `{profile}`: {PROFILES[profile].description}).", ""]
    if fig.get("note"):
        lines += [f"> {' '.join(str(fig['note']).split())}", ""]
    lines += [f"![{figure_id}]({png_name})", "", "## How the points are made", "",
              "- **published** (hollow markers, dashed lines): the registry's cells (`reproduce/<paper>/<table>.yaml`), "
              "as printed.",
              f"- **measured ({profile})** (filled markers, solid lines): the run store, through "
              "`mtlrepro.compare.compare_table`: y is the mean ± sample std over the stored seeds (Δ and Overall "
              "recomputed per seed from the measured cells, against the measured baseline row); x is the run "
              "records' compute (fvcore multiply-accumulates for every task of one image, at the run's own input "
              "size) × f / the column's scale, f = 2 for FLOPs columns, 1 for MACs and for FLOPs-as-printed "
              "(convention not established: the count as it is). Error bars: sample std (none for n = 1).",
              f"- The {fig.get('sweep_method', 'gatedmtl')} rows are one line per row group and source; the other "
              "rows are labelled points. Rows without a measured point are absent from the measured series and "
              "listed per panel.", ""]
    for p in panels:
        lines += _panel_lines(p, profile)
    lines += ["## Documented choices", ""]
    lines += [f"- **{c['field']}** = `{c.get('value')}` — {' '.join(str(c.get('why', '')).split())}" for c in rs.choices]
    return "\n".join(lines) + "\n"


def write_tradeoff_figure(figure_id: str, profile: str, results_root=None, seeds: list[int] | None = None,
                          recipe_sets: dict[str, RecipeSet] | None = None) -> tuple[Path, Path]:
    from .figures import figure_set

    rs = figure_set(figure_id)
    panels = collect(rs, profile, seeds, results_root, recipe_sets)
    png, md = figure_paths(figure_id, profile, results_root)
    png.parent.mkdir(parents=True, exist_ok=True)
    render_png(rs, panels, profile, png)
    write_text_atomic(md, render_page(figure_id, rs, panels, profile, png.name))
    return png, md
