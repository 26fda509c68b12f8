"""Figures the papers draw without printing numbers (ETR-NLP Figure 6): sweep, plot, note.

A figure is a recipe set with a ``figure`` block (``reproduce/recipes/<paper>/figureN.yaml``). The
plot is a pure function of the run store, like the reports; since there is nothing printed to
diff against, the page says that it compares shapes only.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from .profiles import PROFILES, apply_profile

from .recipe import RecipeSet, recipe_sets
from .store import RESULTS_DIR, find_run, write_text_atomic


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part] if isinstance(d, dict) else getattr(d, part)
    return d


def figure_set(figure_id: str) -> RecipeSet:
    rs = recipe_sets().get(figure_id)
    if rs is None or rs.figure is None:
        from .registry import UnknownKeyError
        raise UnknownKeyError("figure", figure_id, [k for k, v in recipe_sets().items() if v.figure])
    return rs


def figure_recipes(figure_id: str) -> list:
    """The recipes a figure runs: its own sweep, or, for a trade-off figure (``kind: tradeoff``), the
    recipes of every panel's table (:func:`mtlrepro.launch.resolve_recipes`)."""
    figure_set(figure_id)
    from .launch import resolve_recipes
    return resolve_recipes(figure_id)


def panel_metrics(panel: dict) -> list[str]:
    """A panel's metrics: ``metrics`` on the left axis, then ``secondary_metrics`` (another scale,
    e.g. depth errors next to mIoU) on a right-hand axis."""
    return list(panel["metrics"]) + list(panel.get("secondary_metrics", []))


def collect(rs: RecipeSet, profile: str, results_root=None) -> list[dict]:
    """One point per (panel, x): mean and std over the stored seeds, per metric."""
    points = []
    for panel in rs.figure["panels"]:
        for recipe in rs.recipes:
            if not recipe.row.startswith(panel["rows_prefix"]):
                continue
            eff = apply_profile(recipe, profile)
            runs = [find_run(profile, eff.id, eff.fingerprint, s, results_root) for s in eff.seeds]
            runs = [r for r in runs if r is not None and r.status == "finished"]
            x = _get(recipe.to_dict(), rs.figure["x"])
            for m in panel_metrics(panel):
                vals = [r.final["metrics"][m] for r in runs if m in r.final["metrics"]]
                points.append({"panel": panel["name"], "x": x, "metric": m, "n": len(vals),
                               "mean": statistics.fmean(vals) if vals else None,
                               "std": statistics.stdev(vals) if len(vals) > 1 else None})
    return points


def write_figure(figure_id: str, profile: str, results_root=None) -> tuple[Path, Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tabulate import tabulate

    rs = figure_set(figure_id)
    if rs.figure.get("kind") == "tradeoff":
        from .tradeoff_figure import write_tradeoff_figure
        return write_tradeoff_figure(figure_id, profile, results_root)
    pts = collect(rs, profile, results_root)
    root = (results_root or RESULTS_DIR) / ("" if profile == "full" else profile)
    paper, name = figure_id.split("/", 1)
    png = root / paper / f"{name}.png"
    md = root / paper / f"{name}.md"
    png.parent.mkdir(parents=True, exist_ok=True)
    panels = rs.figure["panels"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        ax2 = ax.twinx() if panel.get("secondary_metrics") else None
        handles = []
        for i, m in enumerate(panel_metrics(panel)):
            ps = sorted((p for p in pts if p["panel"] == panel["name"] and p["metric"] == m and p["mean"] is not None),
                        key=lambda p: p["x"])
            on = ax2 if m in panel.get("secondary_metrics", []) else ax
            if ps:
                handles.append(on.errorbar([p["x"] for p in ps], [p["mean"] for p in ps],
                                           yerr=[p["std"] or 0 for p in ps], marker="o", capsize=3,
                                           linestyle="--" if on is ax2 else "-", color=f"C{i}", label=m))
        ax.set_xlabel(rs.figure.get("x_label", rs.figure["x"]))
        ax.set_title(panel["name"])
        ax.grid(alpha=0.3)
        if ax2 is not None:
            ax2.set_ylabel(", ".join(panel["secondary_metrics"]) + " (dashed)")
        if handles:
            ax.legend(handles=handles, fontsize=7)
    caveat = PROFILES[profile].banner
    fig.suptitle(rs.figure["title"] + (f"\n{caveat} (profile {profile})" if caveat else ""),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    lines = [f"# {figure_id} — {rs.figure['title']}", ""]
    if caveat:
        lines += [f"> **{caveat}** (profile `{profile}`: {PROFILES[profile].description}).", ""]
    lines += [f"> {rs.figure['note']}", "", f"![{figure_id}]({png.name})", "",
              tabulate([[p["panel"], p["x"], p["metric"], p["n"], "—" if p["mean"] is None else f"{p['mean']:.3f}",
                         "—" if p["std"] is None else f"{p['std']:.3f}"] for p in pts],
                       headers=["panel", rs.figure.get("x_label", "x"), "metric", "n", "mean", "std"],
                       tablefmt="github"), "", "## Documented choices", ""]
    lines += [f"- **{c['field']}** = `{c.get('value')}` — {c.get('why', '')}" for c in rs.choices]
    write_text_atomic(md, "\n".join(lines) + "\n")
    return png, md
