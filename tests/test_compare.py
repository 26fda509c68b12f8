"""The diff's rules on small hand-written stores (ETR-NLP Table 4, profile full)."""
from __future__ import annotations

import dataclasses

import pytest

from mtlrepro.compare import compare_table, declared_tolerances
from mtlrepro.profiles import apply_profile
from mtlrepro.recipe import recipe_sets
from mtlrepro.store import RunRecord, save_run
from mtlrepro.tables import get_table
from tests.golden.report_table4 import OTHER_FSCORE, fixture_definitions, fixture_recipe_set

TABLE = "etr_nlp/table4"


def _save(root, rs, row: str, per_seed: dict[int, dict[str, float]], complexity: dict | None = None) -> None:
    r = apply_profile(next(x for x in rs.recipes if x.row == row), "full")
    for seed, metrics in per_seed.items():
        save_run(RunRecord(recipe_id=r.id, fingerprint=r.fingerprint, seed=seed, profile="full", status="finished",
                           recipe={}, data={}, final={"metrics": metrics}, complexity=complexity or {},
                           environment={"device_kind": "cpu"}), root)


def _cells(root, rs) -> dict:
    with fixture_definitions():
        td = compare_table(get_table(TABLE), "full", results_root=root, recipe_set=rs)
    return {(d.row, d.column): d for d in td.cells}


def test_a_column_is_compared_with_its_own_key_only(tmp_path):
    """No fallback: `attributes/precision` is not `precision` (the old diff took it)."""
    rs = fixture_recipe_set()
    _save(tmp_path, rs, "hard_sharing_g8", {s: {"attributes/precision": 67.7, "recall": 59.8, "fscore": 63.0}
                                            for s in range(5)})
    c = _cells(tmp_path, rs)
    d = c["hard_sharing_g8", "precision"]
    assert d.verdict == "missing" and d.metric == "precision" and "no `precision`" in d.note
    assert c["hard_sharing_g8", "recall"].verdict == "match"


def test_mixed_definitions_are_refused_not_averaged(tmp_path):
    """3 seeds record `fscore`, 2 only another estimator: the cell is refused (not a 3-seed mean) and
    no Δ is computed from it, here or in any row whose baseline it is."""
    rs = fixture_recipe_set()
    runs = {s: {"precision": 67.7, "recall": 59.8, "fscore": 63.0} for s in range(3)}
    runs.update({s: {"precision": 67.7, "recall": 59.8, OTHER_FSCORE: 63.0} for s in (3, 4)})
    _save(tmp_path, rs, "hard_sharing_g8", runs)
    _save(tmp_path, rs, "gradnorm_g8", {s: {"precision": 70.4, "recall": 59.5, "fscore": 63.6} for s in range(5)})
    c = _cells(tmp_path, rs)
    d = c["hard_sharing_g8", "fscore"]
    assert d.verdict == "incomparable" and d.measured is None
    assert "seeds 3, 4 recorded `fscore_per_sample`, not `fscore`" in d.note and "different estimators" in d.note
    assert c["hard_sharing_g8", "delta_p"].verdict == "incomparable"
    d = c["gradnorm_g8", "delta_p"]      # its own cells are fine; its baseline's F-score is not
    assert d.verdict == "incomparable" and d.measured is None and "`hard_sharing_g8`" in d.note
    assert c["gradnorm_g8", "fscore"].verdict == "match"


def test_delta_pairs_inputs_by_seed(tmp_path):
    """Seed 0 of the row lacks recall: Δ uses seeds 1-4, each seed's own precision and recall."""
    rs = fixture_recipe_set()
    _save(tmp_path, rs, "hard_sharing_g8", {s: {"precision": 60.0, "recall": 50.0, "fscore": 55.0} for s in range(5)})
    runs = {s: {"precision": 60.0 + s, "recall": 50.0 + 2 * s, "fscore": 55.0} for s in range(5)}
    del runs[0]["recall"]
    _save(tmp_path, rs, "gradnorm_g8", runs)
    d = _cells(tmp_path, rs)["gradnorm_g8", "delta_p"]
    # seed s: (s/60 + 2s/50 + 0)/3 · 100; mean over s = 1..4 (mean s = 2.5)
    want = (2.5 / 60 + 5.0 / 50) / 3 * 100
    assert d.n_meas == 4 and d.measured == pytest.approx(want, abs=1e-9)


def test_fitted_column_is_never_a_match(tmp_path):
    rs = fixture_recipe_set()
    cx = {"params_active_task0": 12_900_000}
    _save(tmp_path, rs, "attentive_g8", {0: {"precision": 71.1}}, complexity=cx)
    d = _cells(tmp_path, rs)["attentive_g8", "params"]
    assert d.verdict == "fitted" and d.difference == pytest.approx(0.0) and "12.9M" in d.note


def test_relative_tolerance_applies_to_params(tmp_path):
    """#P within 1% of the printed 11.2M (0.112M) matches; 11.35M does not."""
    rs = fixture_recipe_set()
    _save(tmp_path, rs, "hard_sharing_g8", {0: {}}, complexity={"params_active_task0": 11_310_000})
    _save(tmp_path, rs, "gradnorm_g8", {0: {}}, complexity={"params_active_task0": 11_350_000})
    c = _cells(tmp_path, rs)
    assert c["hard_sharing_g8", "params"].verdict == "match"
    assert c["gradnorm_g8", "params"].verdict == "differs"
    assert c["gradnorm_g8", "params"].tolerance == pytest.approx(0.112)


def test_tolerances_are_data_declared_once():
    table = get_table(TABLE)
    rs = recipe_sets()[TABLE]
    legacy = dataclasses.replace(rs, tolerances={}, choices=({"field": "tolerances", "tolerances": {"fscore": 0.5}},))
    t = declared_tolerances(table, legacy)["fscore"]
    assert (t.value, t.relative) == (0.5, False) and "choices" in t.source
    both = dataclasses.replace(legacy, tolerances={"fscore": 0.4, "params": "1%"})
    with pytest.raises(ValueError, match="declared twice"):
        declared_tolerances(table, both)
    tol = declared_tolerances(table, dataclasses.replace(rs, choices=(), tolerances={"params": "1%"}))["params"]
    assert tol.relative and tol.absolute(11.2) == pytest.approx(0.112)


def test_table2_declares_its_params_tolerance():
    """The issue's case: Table 2's recipe file says ±1% on #P; the diff must apply it."""
    tol = declared_tolerances(get_table("etr_nlp/table2"), recipe_sets()["etr_nlp/table2"]).get("params")
    assert tol is not None and tol.relative and tol.value == pytest.approx(0.01)


def test_params_scope_follows_the_paper():
    """ETR-NLP's #P is one task's forward pass (task routing), CoNAL's and GatedMTL's the whole model."""
    from mtlrepro.compare import params_key
    assert params_key(get_table("etr_nlp/table4")) == "params_active_task0"
    assert params_key(get_table("conal/table1")) == "params_total"
    assert params_key(get_table("gatedmtl/table1")) == "params_total"
