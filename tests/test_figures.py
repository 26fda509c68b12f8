"""Figure sweeps (ETR-NLP Figure 6): recipes resolve, runs are collected per γ, the plot is written."""
from __future__ import annotations

from mtlrepro.figures import collect, figure_set, write_figure
from mtlrepro.launch import resolve_recipes
from mtlrepro.profiles import apply_profile

from .harness_utils import tiny_env  # noqa: F401 (fixture)


def test_figure6_sweep_is_a_gamma_grid_per_panel():
    rs = figure_set("etr_nlp/figure6")
    panels = rs.figure["panels"]
    assert [p["rows_prefix"] for p in panels] == ["celeba_gamma_", "cityscapes_gamma_"]
    for panel, dataset in zip(panels, ["celeba", "cityscapes"]):
        rows = [r for r in rs.recipes if r.row.startswith(panel["rows_prefix"])]
        assert {r.dataset for r in rows} == {dataset}
        gammas = [r.sharing_kwargs["gamma"] for r in rows]
        assert gammas == sorted(gammas) and {0.0, 0.9, 1.0} <= set(gammas)
    assert all(r.sharing == "etr" for r in rs.recipes)
    assert {r.update for r in rs.recipes if r.dataset == "cityscapes"} == {"synchronized"}
    assert [r.id for r in resolve_recipes("etr_nlp/figure6")] == [r.id for r in rs.recipes]


def test_figure_plot_from_stored_runs(tmp_path, tiny_env):
    from mtlrepro.train import train_run

    rs = figure_set("etr_nlp/figure6")
    picked = [r for r in rs.recipes if r.sharing_kwargs["gamma"] in (0.5, 1.0) and r.dataset == "celeba"]
    picked += [r for r in rs.recipes if r.row == "cityscapes_gamma_0.9"]
    for r in picked:
        train_run(apply_profile(r, "tiny"), 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    pts = collect(rs, "tiny", tmp_path)
    have = {(p["x"], p["metric"]) for p in pts if p["n"] == 1}
    assert {(0.5, "fscore"), (1.0, "fscore")} <= have
    assert (0.9, "miou_binary") in have and (0.9, "abs_err") in have  # the Cityscapes panel
    assert all(p["n"] == 0 for p in pts if p["x"] not in (0.5, 0.9, 1.0))
    png, md = write_figure("etr_nlp/figure6", "tiny", tmp_path)
    assert png.stat().st_size > 1000
    text = md.read_text()
    assert "SYNTHETIC DATA" in text and "shapes only" in text
