"""Published vs measured, per cell, as one PNG per table report (``results/<paper>/<table>.png``).

The points are the cells of :func:`mtlrepro.compare.compare_table` that hold a measured mean: x is
the published value (``Table.absolute``, ± the paper's std), y the measured mean (± the sample std
over the seeds), the colour the cell's verdict. Each panel draws the identity y = x and the tolerance
band |y − x| ≤ tol(x) the verdict used (``CellDiff.tolerance``: the declared tolerance, absolute or
a fraction of the printed value, else half a unit of the last printed digit). A point inside the
band is a match; outside it Welch's test decided (:mod:`mtlrepro.verdict`).

One panel per compared column; a table with more than :data:`MAX_PANELS` such columns (CelebA's 40
attributes) gets one panel per (block, kind, unit) instead. The PNG is a pure function of the
diff: points in table order, fixed size and dpi, no date or software in the PNG metadata, so the
same store gives the same bytes.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

from .compare import TableDiff
from .profiles import PROFILES, SYNTHETIC_NOTE, caveat
from .schema import Column, Table
from .store import write_bytes_atomic
from .verdict import VERDICTS, Tolerance

#: the label of anything not from the full profile (PNG title and the report's plot section)

#: more compared columns than this: one panel per column group sharing a unit
MAX_PANELS = 12
#: points carry their row's number (1-based, table order; the report lists them) in a panel of at most
#: this many points
LABEL_MAX = 16
PANEL_IN, DPI, NCOLS = 3.3, 100, 4
COLOURS = {"match": "#2ca02c", "within noise": "#17becf", "better": "#1f77b4", "worse": "#d62728",
           "differs": "#ff7f0e", "untested": "#7f7f7f", "fitted": "#9467bd"}


@dataclass(frozen=True)
class CellPoint:
    """One measured cell: (published ± std, measured mean ± std over n seeds), its tolerance and verdict."""

    row: str
    label: str
    group: str | None
    column: str
    published: float
    published_std: float | None
    measured: float
    measured_std: float | None
    n_meas: int
    tolerance: float | None        # absolute, in printed units (as judged)
    verdict: str


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    columns: tuple[str, ...]
    points: tuple[CellPoint, ...]
    band: Tolerance | None         # one band for the panel; None: each point's own tolerance


def points(td: TableDiff) -> list[CellPoint]:
    """The cells with both a published value and a measured mean, in table order (row, then column)."""
    return [CellPoint(d.row, d.label, d.group, d.column, d.published, d.published_std, d.measured,
                      d.measured_std, d.n_meas, d.tolerance, d.verdict)
            for d in td.cells if d.published is not None and d.measured is not None]


def unit_text(col: Column) -> str:
    if col.unit == "params":
        return f"{col.scale or ''} params".strip()
    return col.unit or ""


def _band(cols: list[Column], pts: list[CellPoint], declared: dict[str, Tolerance]) -> Tolerance | None:
    """The panel's one tolerance when every point has the same: the columns' common declared one, or
    one absolute value (e.g. half a unit of the same printed digit); else None."""
    tols = {(declared[c.key].value, declared[c.key].relative) if c.key in declared else None for c in cols}
    if len(tols) == 1 and None not in tols:
        value, relative = tols.pop()
        return Tolerance(value, relative)
    if all(c.key not in declared for c in cols):
        values = {p.tolerance for p in pts}
        if len(values) == 1 and None not in values:
            return Tolerance(values.pop())
    return None


def panels(td: TableDiff, pts: list[CellPoint] | None = None, max_panels: int = MAX_PANELS) -> list[Panel]:
    """One panel per column with a point, or per (block, kind, unit) when there are more than ``max_panels``."""
    pts = points(td) if pts is None else pts
    cols = [c for c in td.table.columns if any(p.column == c.key for p in pts)]
    if len(cols) <= max_panels:
        groups = [[c] for c in cols]
    else:
        by: dict[tuple, list[Column]] = {}
        for c in cols:
            by.setdefault((c.block or "", c.kind, unit_text(c)), []).append(c)
        groups = list(by.values())
    out = []
    for g in groups:
        keys = tuple(c.key for c in g)
        mine = [p for p in pts if p.column in keys]
        block = f" [{g[0].block}]" if g[0].block else ""
        name = (g[0].label if len(g) == 1 else f"{len(g)} columns ({unit_text(g[0]) or 'no unit'})") + block
        out.append(Panel(name, unit_text(g[0]), keys, tuple(mine), _band(g, mine, td.tolerances)))
    return out


def title(td: TableDiff) -> str:
    """The PNG's title; any profile but ``full`` says it is synthetic."""
    text = f"{td.table.id}: published vs measured per cell (profile {td.profile})"
    return text + (f"\n{caveat(td.profile)}" if caveat(td.profile) else "")


def row_numbers(table: Table) -> dict[str, int]:
    """Row key -> its number on the plot: its 1-based position in the table."""
    return {r.key: i for i, r in enumerate(table.rows, 1)}


def _limits(panel: Panel) -> tuple[float, float]:
    """One range for both axes: every point with its bars and its tolerance, padded by 6 %."""
    vals = []
    for p in panel.points:
        tol = p.tolerance or 0.0
        vals += [p.published - (p.published_std or 0.0), p.published + (p.published_std or 0.0),
                 p.measured - (p.measured_std or 0.0), p.measured + (p.measured_std or 0.0),
                 p.published - tol, p.published + tol]
    lo, hi = min(vals), max(vals)
    pad = 0.06 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 0.5)
    return lo - pad, hi + pad


def _draw(ax, table: Table, panel: Panel) -> None:
    lo, hi = _limits(panel)
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, zorder=1)
    if panel.band is not None:
        xs = [lo, 0.0, hi] if panel.band.relative and lo < 0.0 < hi else [lo, hi]
        tol = [panel.band.absolute(x) for x in xs]
        ax.fill_between(xs, [x - t for x, t in zip(xs, tol)], [x + t for x, t in zip(xs, tol)],
                        color="0.6", alpha=0.25, lw=0, zorder=0)
    else:
        pts = [p for p in panel.points if p.tolerance is not None]
        ax.vlines([p.published for p in pts], [p.published - p.tolerance for p in pts],
                  [p.published + p.tolerance for p in pts], color="0.6", alpha=0.4, lw=4, zorder=0)
    for verdict in VERDICTS:
        pts = [p for p in panel.points if p.verdict == verdict]
        if pts:
            ax.errorbar([p.published for p in pts], [p.measured for p in pts],
                        xerr=[p.published_std or 0.0 for p in pts], yerr=[p.measured_std or 0.0 for p in pts],
                        fmt="o", ms=4, color=COLOURS.get(verdict, "black"), elinewidth=0.8, capsize=0, zorder=2)
    if len(panel.points) <= LABEL_MAX:
        number = row_numbers(table)
        for p in panel.points:
            ann = ax.annotate(str(number[p.row]), (p.published, p.measured), textcoords="offset points",
                              xytext=(3, 2), fontsize=6)
            ann.set_in_layout(False)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_box_aspect(1)
    unit = f" ({panel.unit})" if panel.unit else ""
    ax.set_xlabel(f"published{unit}", fontsize=7)
    ax.set_ylabel(f"measured{unit}", fontsize=7)
    ax.set_title(panel.title, fontsize=8)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)


def render_png(td: TableDiff, pts: list[CellPoint] | None = None) -> bytes:
    """The PNG's bytes (Agg backend, fixed size and dpi, no date or software metadata)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ps = panels(td, pts)
    ncols = min(NCOLS, len(ps))
    nrows = math.ceil(len(ps) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PANEL_IN * ncols, PANEL_IN * nrows + 1.0), squeeze=False,
                             layout="constrained")
    for i, ax in enumerate(axes.flat):
        if i < len(ps):
            _draw(ax, td.table, ps[i])
        else:
            ax.set_axis_off()
    shown = [v for v in VERDICTS if any(p.verdict == v for panel in ps for p in panel.points)]
    handles = [Line2D([], [], color=COLOURS.get(v, "black"), marker="o", ls="none", ms=4, label=v) for v in shown]
    handles += [Line2D([], [], color="black", lw=0.8, label="published = measured"),
                Patch(color="0.6", alpha=0.4, label="tolerance")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=7, frameon=False)
    fig.suptitle(title(td), fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_cell_plot(td: TableDiff, path: Path) -> Path | None:
    """Write the PNG of ``td`` to ``path``; with no measured cell, write none (and remove a stale one)."""
    pts = points(td)
    if not pts:
        path.unlink(missing_ok=True)
        return None
    write_bytes_atomic(path, render_png(td, pts))
    return path


def report_lines(td: TableDiff, png: Path | None) -> list[str]:
    """The report's section linking the PNG (relative link: it lies next to the report)."""
    lines = ["## Published vs measured, per cell (plot)", ""]
    if png is None:
        return lines + ["None yet: no cell has a measured value.", ""]
    pts = points(td)
    grouped = len(panels(td, pts)) < len({p.column for p in pts})
    lines += [f"![{td.table.id}: published vs measured per cell]({png.name})", "",
              f"[`{png.name}`]({png.name}): {len(pts)} measured cell{'s' if len(pts) != 1 else ''}, one panel "
              f"per column{' group sharing a unit' if grouped else ''}. x: published "
              "(± the paper's std), y: measured mean (± sample std over the seeds); the line is y = x, the grey "
              "band the tolerance each cell was judged with; colour: the verdict."]
    number = row_numbers(td.table)
    rows = dict.fromkeys((p.row, p.label, p.group) for p in pts)
    lines += ["", "Points are numbered by row (panels of at most "
              f"{LABEL_MAX} points): " + "; ".join(f"{number[k]} {label}{f' ({group})' if group else ''}"
                                                   for k, label, group in rows) + "."]
    if PROFILES[td.profile].synthetic:
        lines += ["", f"**SYNTHETIC** ({SYNTHETIC_NOTE})."]
    elif caveat(td.profile):
        lines += ["", f"**{caveat(td.profile)}** (profile `{td.profile}`)."]
    return lines + [""]
