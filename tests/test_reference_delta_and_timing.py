"""Δ of tables that print no per-task metrics (against another table's STL row), speed-ups measured
from the records' times, and recipe files that extend another."""
import pytest

from mtlrepro.compare import compare_table
from mtlrepro.profiles import apply_profile
from mtlrepro.recipe import get_recipe, load_recipe_file
from mtlrepro.store import RunRecord, save_run
from mtlrepro.tables import TableFormatError, get_table

KEYS = {"miou": True, "pixel_acc": True, "abs_err_pooled": False, "rel_err_pooled": False,
        "mean_angle_pooled": False, "median_angle_pooled": False, "within_11_25_pooled": True,
        "within_22_5_pooled": True, "within_30_pooled": True}
TASKS = [["miou", "pixel_acc"], ["abs_err_pooled", "rel_err_pooled"],
         ["mean_angle_pooled", "median_angle_pooled", "within_11_25_pooled", "within_22_5_pooled", "within_30_pooled"]]


def _store(root, recipe_id, metrics, seconds, seed=0, kind="cpu"):
    r = apply_profile(get_recipe(recipe_id), "tiny")
    save_run(RunRecord(recipe_id=r.id, fingerprint=r.fingerprint, seed=seed, profile="tiny", status="finished",
                       recipe=r.to_dict(), data={}, final={"metrics": metrics}, seconds=seconds,
                       environment={"device_kind": kind}), root)


def test_table7_delta_is_against_table3s_measured_stl_and_speedups_are_time_ratios(tmp_path):
    stl = {k: 10.0 for k in KEYS}
    hps = dict(stl, miou=11.0, abs_err_pooled=8.0)            # seg +10%/2, depth +20%/2, normals 0
    _store(tmp_path, "conal/table3/stl", stl, seconds=300.0)
    _store(tmp_path, "conal/table7/hps_pcgrad", hps, seconds=600.0)
    td = compare_table(get_table("conal/table7"), "tiny", results_root=tmp_path)
    cells = {(c.row, c.column): c for c in td.cells}
    d = cells[("hps_pcgrad", "delta_i")]
    assert d.measured == pytest.approx((5.0 + 10.0 + 0.0) / 3, abs=1e-9)
    assert cells[("stl", "delta_i")].measured == pytest.approx(0.0, abs=1e-12)   # the same run as table3's STL
    assert cells[("hps_pcgrad", "train_speedup")].measured == pytest.approx(0.5)
    assert cells[("stl", "train_speedup")].measured == pytest.approx(1.0)
    assert cells[("hps", "delta_i")].verdict == "missing"


def test_speedups_refuse_timings_from_two_device_kinds(tmp_path):
    _store(tmp_path, "conal/table3/stl", {k: 10.0 for k in KEYS}, seconds=300.0)
    _store(tmp_path, "conal/table7/hps", {k: 10.0 for k in KEYS}, seconds=100.0, kind="cuda:NVIDIA H100")
    cells = {(c.row, c.column): c for c in compare_table(get_table("conal/table7"), "tiny", results_root=tmp_path).cells}
    assert cells[("hps", "train_speedup")].verdict == "incomparable"
    assert "one device kind" in cells[("hps", "train_speedup")].note


def test_a_recipe_file_extends_another_and_rows_start_from_its_rows(tmp_path, monkeypatch):
    import mtlrepro.recipe_files as rmod
    t7 = {r.row: r for r in load_recipe_file(rmod.RECIPES_DIR / "conal/table7.yaml").recipes}
    t3 = get_recipe("conal/table3/hps")
    assert t7["hps_pcgrad"].weighting == "pcgrad" and t7["hps_pcgrad"].fingerprint != t3.fingerprint
    assert t7["hps"].fingerprint == t3.fingerprint        # the same configuration is one run
    assert t7["conal"].architecture_from == "conal/table3/conal_search"
    monkeypatch.setattr(rmod, "RECIPES_DIR", tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "base.yaml").write_text("table: a/base\ndefaults: {dataset: celeba}\nrecipes:\n- {row: x, lr: 0.5}\n")
    (tmp_path / "a" / "t.yaml").write_text("table: a/t\nextends: a/base\nrecipes:\n- {row: y, from: z}\n")
    with pytest.raises(TableFormatError, match="from 'z' names no row"):
        load_recipe_file(tmp_path / "a" / "t.yaml")
    (tmp_path / "a" / "c.yaml").write_text("table: a/c\nextends: a/c\nrecipes: []\n")
    with pytest.raises(TableFormatError, match="again"):
        load_recipe_file(tmp_path / "a" / "c.yaml")


def test_a_zero_baseline_metric_leaves_delta_missing_with_the_reason_not_nan(tmp_path):
    stl = dict({k: 10.0 for k in KEYS}, within_11_25_pooled=0.0)
    _store(tmp_path, "conal/table3/stl", stl, seconds=1.0)
    _store(tmp_path, "conal/table7/hps_pcgrad", {k: 10.0 for k in KEYS}, seconds=1.0)
    cells = {(c.row, c.column): c for c in compare_table(get_table("conal/table7"), "tiny", results_root=tmp_path).cells}
    d = cells[("hps_pcgrad", "delta_i")]
    assert d.verdict == "missing" and "`within_11_25` = 0" in d.note and d.measured is None
