"""GatedMTL Figure 2 (trade-off curves): measured points from hand-written stores, published from the
registry, the synthetic label, purity and the list of rows without a measured point."""
from __future__ import annotations

import dataclasses
import math

import pytest

from mtlrepro.figures import figure_recipes, figure_set, write_figure
from mtlrepro.launch import resolve_recipes
from mtlrepro.pipeline import resolve_upstream
from mtlrepro.profiles import apply_profile
from mtlrepro.recipe import recipe_sets
from mtlrepro.store import RunRecord, save_run
from mtlrepro.tables import TableFormatError, get_table
from mtlrepro.tradeoff_figure import SYNTHETIC_NOTE, collect, collect_panel, png_title, write_tradeoff_figure

FIG = "gatedmtl/figure2"


def _save(root, table: str, row: str, per_seed: dict[int, dict[str, float]], flops: dict[int, int],
          profile: str = "full", rs=None) -> None:
    """Finished records of one row (``flops``: seed -> the record's ``flops_all_tasks``, fvcore MACs)."""
    rs = rs or recipe_sets()[table]
    r = resolve_upstream(apply_profile(next(x for x in rs.recipes if x.row == row), profile), profile, root)
    for seed, metrics in per_seed.items():
        save_run(RunRecord(recipe_id=r.id, fingerprint=r.fingerprint, seed=seed, profile=profile, status="finished",
                           recipe={}, data={}, final={"metrics": metrics},
                           complexity={"flops_all_tasks": flops[seed], "params_total": 1000},
                           environment={"device_kind": "cpu"}), root)


def _panel(root, i: int, profile: str = "full", recipe_set=None):
    spec = figure_set(FIG).figure["panels"][i]
    return collect_panel(spec, profile, "gatedmtl", results_root=root, recipe_set=recipe_set)


def _acc(g: float, a: float, c: float) -> dict[str, float]:
    return {"gender/accuracy": g, "age/accuracy": a, "clothes/accuracy": c}


def test_panel_a_measured_point_is_the_records_overall_and_flops(tmp_path):
    """Overall = mean of the three measured accuracies per seed (80, 82): 81 ± √2; x = 40e6 MACs
    × 1 (FLOPs-as-printed) / 1e6 (M) = 40. Published stays the registry's cell."""
    _save(tmp_path, "gatedmtl/table8", "original_mtl_uniform", {0: _acc(90, 80, 70), 1: _acc(91, 82, 73)},
          {0: 40_000_000, 1: 40_000_000})
    p = _panel(tmp_path, 0)
    (m,) = [q for q in p.measured if q.row == "original_mtl_uniform"]
    assert (m.x, m.n) == (40.0, 2) and m.x_std == 0.0
    assert m.y == pytest.approx(81.0, abs=1e-12) and m.y_std == pytest.approx(math.sqrt(2.0), abs=1e-12)
    table = get_table("gatedmtl/table8")
    row = table.row("original_mtl_uniform")
    (pub,) = [q for q in p.published if q.row == "original_mtl_uniform"]
    assert (pub.x, pub.y) == (table.absolute(row, "flops"), table.absolute(row, "overall"))
    assert (m.x, m.y) != (pub.x, pub.y)
    assert [q.row for q in p.measured] == ["original_mtl_uniform"]


def test_panel_c_delta_against_the_measured_stl_and_flops_times_two(tmp_path):
    """Per-task Δ_MTL of the MTL row against the measured STL row: (+10 − 10 + 10 + 0 + 10)/5 = 4 %;
    x = 100e9 MACs × 2 (Table 5 prints FLOPs) / 1e9 = 200 G."""
    stl = {"semseg/miou": 60.0, "mean_angle_pooled": 20.0, "miou_best_threshold": 50.0, "human_parts/miou": 40.0,
           "edge_loss": 0.02}
    mtl = {"semseg/miou": 66.0, "mean_angle_pooled": 22.0, "miou_best_threshold": 55.0, "human_parts/miou": 40.0,
           "edge_loss": 0.018}
    _save(tmp_path, "gatedmtl/table5", "stl", {0: stl}, {0: 300_000_000_000})
    _save(tmp_path, "gatedmtl/table5", "mtl_uniform", {0: mtl}, {0: 100_000_000_000})
    p = _panel(tmp_path, 2)
    got = {q.row: q for q in p.measured}
    assert set(got) == {"stl", "mtl_uniform"}
    assert got["mtl_uniform"].x == 200.0 and got["mtl_uniform"].y == pytest.approx(4.0, abs=1e-9)
    assert got["stl"].x == 600.0 and got["stl"].y == pytest.approx(0.0, abs=1e-12)
    assert got["mtl_uniform"].y_std is None and got["mtl_uniform"].n == 1


def test_gatedmtl_rows_become_a_measured_sweep_once_runnable(tmp_path):
    """Nothing special-cases GatedMTL: with its rows stored, the Quarter block's three runs are the
    measured sweep (x from their records' own counts)."""
    ready = recipe_sets()["gatedmtl/table8"]
    for k, macs in ((1, 3_000_000), (2, 2_000_000), (3, 5_000_000)):
        _save(tmp_path, "gatedmtl/table8", f"quarter_gatedmtl_{k}", {0: _acc(60 + k, 60, 60)}, {0: macs}, rs=ready)
    p = _panel(tmp_path, 0, recipe_set=ready)
    sweep = {q.row: (q.x, q.y) for q in p.measured if q.sweep}
    assert sweep == {"quarter_gatedmtl_1": (3.0, pytest.approx(61 / 3 + 40)),
                     "quarter_gatedmtl_2": (2.0, pytest.approx(62 / 3 + 40)),
                     "quarter_gatedmtl_3": (5.0, pytest.approx(63 / 3 + 40))}
    assert not any(m.row.startswith("quarter_gatedmtl_") for m in p.missing)
    png, md = write_tradeoff_figure(FIG, "full", tmp_path, recipe_sets={"gatedmtl/table8": ready})
    assert png.stat().st_size > 1000 and "`quarter_gatedmtl_1`" in md.read_text()


def test_rows_without_measured_points_are_listed_with_their_verdict(tmp_path):
    _save(tmp_path, "gatedmtl/table4", "stl", {0: {"miou": 40.0, "rmse": 0.6, "mean_angle_pooled": 20.0}},
          {0: 10**9})
    p = _panel(tmp_path, 1)
    missing = {m.row: m for m in p.missing}
    assert set(missing) == {r.key for r in get_table("gatedmtl/table4").rows} - {"stl"}
    assert missing["mtl_uniform"].verdict == "missing" and missing["gatedmtl_1"].verdict == "missing"
    _, md = write_figure(FIG, "full", tmp_path)
    text = md.read_text()
    section = text.split("## (b)", 1)[1].split("## (c)", 1)[0].split("### Rows without a measured point", 1)[1]
    assert "`mtl_uniform` (MTL (Uni.)): **missing** — no run stored" in section
    assert "`gatedmtl_4` (GatedMTL): **missing**" in section and "`stl`" not in section


def test_x_without_complexity_is_missing_not_zero(tmp_path):
    rs = recipe_sets()["gatedmtl/table8"]
    r = apply_profile(next(x for x in rs.recipes if x.row == "half_stl"), "full")
    save_run(RunRecord(recipe_id=r.id, fingerprint=r.fingerprint, seed=0, profile="full", status="finished",
                       recipe={}, data={}, final={"metrics": _acc(90, 90, 90)}, complexity={},
                       environment={"device_kind": "cpu"}), tmp_path)
    p = _panel(tmp_path, 0)
    assert "half_stl" not in {q.row for q in p.measured}
    (m,) = [m for m in p.missing if m.row == "half_stl"]
    assert "no complexity `flops_all_tasks`" in m.why


def test_tiny_is_labelled_synthetic_and_full_is_not(tmp_path):
    rs = figure_set(FIG)
    assert SYNTHETIC_NOTE in png_title(rs, "tiny") and SYNTHETIC_NOTE not in png_title(rs, "full")
    png, md = write_figure(FIG, "tiny", tmp_path)
    assert png == tmp_path / "tiny" / "gatedmtl" / "figure2.png" and png.stat().st_size > 1000
    head = md.read_text().splitlines()[:4]
    assert any(SYNTHETIC_NOTE in line for line in head)
    _, md_full = write_figure(FIG, "full", tmp_path)
    assert md_full == tmp_path / "gatedmtl" / "figure2.md" and SYNTHETIC_NOTE not in md_full.read_text()


def test_the_figure_is_a_pure_function_of_the_store(tmp_path):
    _save(tmp_path, "gatedmtl/table8", "half_mtl_uniform", {0: _acc(90, 80, 70)}, {0: 10_000_000}, profile="tiny")
    png, md = write_figure(FIG, "tiny", tmp_path)
    first = (md.read_bytes(), png.read_bytes())
    png, md = write_figure(FIG, "tiny", tmp_path)
    assert (md.read_bytes(), png.read_bytes()) == first
    _save(tmp_path, "gatedmtl/table8", "half_stl", {0: _acc(91, 80, 70)}, {0: 30_000_000}, profile="tiny")
    assert write_figure(FIG, "tiny", tmp_path)[1].read_bytes() != first[0]   # a new record changes it


def test_figure2_runs_the_recipes_of_tables_8_4_and_5():
    want = [r.id for t in ("gatedmtl/table8", "gatedmtl/table4", "gatedmtl/table5") for r in resolve_recipes(t)]
    assert [r.id for r in figure_recipes(FIG)] == want
    assert [r.id for r in figure_recipes("etr_nlp/figure6")] == [r.id for r in resolve_recipes("etr_nlp/figure6")]


def test_a_panel_naming_an_unknown_column_is_refused():
    rs = figure_set(FIG)
    bad = dataclasses.replace(rs, figure=dict(rs.figure, panels=[dict(rs.figure["panels"][0], y="overal")]))
    with pytest.raises(TableFormatError, match="'overal' is no column of gatedmtl/table8"):
        collect(bad, "full")
