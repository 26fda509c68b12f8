"""The cross-paper leaderboard: method identity from the recipes, names across papers, measured Δ
from a temporary store only, a page that is a pure function of the store, and METHOD look-ups."""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from mtlrepro import leaderboard as lbmod
from mtlrepro import leaderboard_page as lbpage
from mtlrepro import store
from mtlrepro.cli import leaderboard as cli
from mtlrepro.errors import UsageError, UserError
from mtlrepro.leaderboard import MethodId, Unresolved, build, find_method, method_id
from mtlrepro.leaderboard_page import render_page
from mtlrepro.profiles import apply_profile
from mtlrepro.recipe import get_recipe
from mtlrepro.registry import UnknownKeyError
from mtlrepro.store import RunRecord, save_run
from mtlrepro.tables import get_table

# the LibMTL NYUv2 metric keys of CoNAL Table 3 (True: higher is better), by task
NYU = {"miou": True, "pixel_acc": True, "abs_err_pooled": False, "rel_err_pooled": False,
       "mean_angle_pooled": False, "median_angle_pooled": False, "within_11_25_pooled": True,
       "within_22_5_pooled": True, "within_30_pooled": True}

#: the methods the page must show across >= 2 papers, with the identity each must resolve to
REQUIRED = {"MGDA-UB": "hard_sharing+mgda_ub", "MTAN": "mtan+equal", "Cross-stitch": "cross_stitch+equal",
            "PCGrad": "hard_sharing+pcgrad", "CAGrad": "hard_sharing+cagrad", "GradNorm": "hard_sharing+gradnorm",
            "MaxRoam": "max_roaming+equal", "STL": "single_task+equal", "HPS": "hard_sharing+equal"}


def _store(root, recipe_id: str, metrics: dict, seed: int = 0) -> None:
    r = apply_profile(get_recipe(recipe_id), "tiny")
    save_run(RunRecord(recipe_id=r.id, fingerprint=r.fingerprint, seed=seed, profile="tiny", status="finished",
                       recipe=r.to_dict(), data={}, final={"metrics": metrics}, seconds=1.0,
                       environment={"device_kind": "cpu"}), root)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    return tmp_path_factory.mktemp("empty_store")


@pytest.fixture(scope="module")
def lb(empty_store):
    return build("tiny", empty_store)


def _entry(board, table: str, row: str):
    return next(e for e in board.entries if e.table == table and e.row == row)


# --- identity ---------------------------------------------------------------------------------------

def test_identity_is_the_recipes_sharing_and_weighting_resolved_by_their_registries():
    assert method_id(get_recipe("conal/table2/mgda")) == MethodId("hard_sharing", "mgda")
    assert method_id(get_recipe("etr_nlp/table4/mgda_ub_g8")) == MethodId("hard_sharing", "mgda_ub")
    # GatedMTL's recipe says `uncertainty`, CoNAL's `uw`: one registry class, one identity
    assert method_id(get_recipe("gatedmtl/table1/uncertainty")) == method_id(get_recipe("conal/table6/uw")) \
        == MethodId("hard_sharing", "uw")
    assert method_id(get_recipe("gatedmtl/table1/rdw")) == MethodId("hard_sharing", "rlw")
    # two branched trees are different methods: the search that exported each is part of the identity
    ltb, bmtas = method_id(get_recipe("conal/table2/ltb")), method_id(get_recipe("conal/table2/bmtas"))
    assert (ltb.sharing, ltb.variant) == ("branched", "ltb_search") and bmtas.variant == "bmtas_search"
    # a changed recipe is a changed method, whatever its row prints
    r = get_recipe("gatedmtl/table1/uncertainty")
    assert method_id(dataclasses.replace(r, weighting="pcgrad")) == MethodId("hard_sharing", "pcgrad")
    with pytest.raises(Unresolved, match="not implemented"):
        method_id(dataclasses.replace(r, status="not_implemented"))


def test_a_relabelled_row_keeps_its_recipes_method(empty_store):
    t = get_table("gatedmtl/table1")
    relabelled = dataclasses.replace(t, rows=tuple(dataclasses.replace(r, label="PCGrad") if r.key == "uncertainty"
                                                   else r for r in t.rows))
    e = next(e for e in lbmod._table_entries(relabelled, "tiny", empty_store) if e.row == "uncertainty")
    assert e.label == "PCGrad" and e.method == MethodId("hard_sharing", "uw")


def test_every_gatedmtl_row_is_the_gatedmtl_method(lb):
    """The rows' recipes decide (a placeholder recipe of another scheme would be counted as it)."""
    e = _entry(lb, "gatedmtl/table3", "gatedmtl_1")
    assert e.method == MethodId("gatedmtl", "equal")
    assert all(x.method == MethodId("gatedmtl", "equal") for x in lb.entries if x.label == "GatedMTL")


def test_display_names_are_unique(lb):
    names = [m.display for m in lb.methods()]
    assert len(names) == len(set(names))


# --- the methods the page must show ---------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_required_methods_appear_in_two_or_more_papers(lb, name):
    mid = find_method(lb, name)
    assert mid.key == REQUIRED[name]
    assert mid in lb.shared()
    assert len(lb.papers_of(mid)) >= 2


def test_the_page_has_a_section_for_each_required_method(lb):
    page = render_page(lb)
    shared = page.split("## Methods reported by two or more papers", 1)[1].split("## Ranking", 1)[0]
    for key in REQUIRED.values():
        assert f"(`{key}`)" in shared, key


def test_who_reports_what_comes_from_the_registry(lb):
    assert lb.papers_of(MethodId("hard_sharing", "mgda_ub")) == ["etr_nlp", "gatedmtl"]   # CoNAL has MGDA only
    assert lb.papers_of(MethodId("hard_sharing", "mgda")) == ["conal"]
    assert lb.papers_of(MethodId("max_roaming", "equal")) == ["conal", "etr_nlp"]
    assert lb.papers_of(MethodId("hard_sharing", "equal")) == ["conal", "etr_nlp", "gatedmtl"]


# --- names ------------------------------------------------------------------------------------------

def test_aliases_and_keys_are_case_insensitive(lb):
    uw = MethodId("hard_sharing", "uw")
    assert find_method(lb, "Uncertainty") == find_method(lb, "UW") == find_method(lb, "uw") == uw
    assert find_method(lb, "RDW") == find_method(lb, "rlw") == MethodId("hard_sharing", "rlw")
    assert find_method(lb, "mgda-ub") == find_method(lb, "HARD_SHARING+MGDA_UB") == find_method(lb, "MGDA_UB")
    assert find_method(lb, "MGDA") == MethodId("hard_sharing", "mgda") != find_method(lb, "MGDA-UB")
    assert find_method(lb, "Max roaming") == find_method(lb, "maxroam") == MethodId("max_roaming", "equal")
    assert find_method(lb, "MTL (Uni.)") == find_method(lb, "Hard sharing") == MethodId("hard_sharing", "equal")


def test_naming_notes_say_whether_the_names_are_one_algorithm(lb):
    notes = {n.title: n for n in lbpage.NAMING}
    mgda = notes["MGDA-UB vs MGDA"]
    assert mgda.same is False and "representation" in mgda.why and "upper-bound" in mgda.why
    assert {m.key for m in lbpage.note_methods(lb, mgda)} == {"hard_sharing+mgda_ub", "hard_sharing+mgda"}
    assert notes["UW vs Uncertainty"].same and "Kendall" in notes["UW vs Uncertainty"].why
    assert notes["RLW vs RDW"].same and MethodId("hard_sharing", "rlw") in lbpage.note_methods(lb, notes["RLW vs RDW"])
    for n in lbpage.NAMING:                      # every note names identities the registry has
        assert lbpage.note_methods(lb, n), n.title
    page = render_page(lb)
    assert "**MGDA-UB vs MGDA** — not the same algorithm" in page
    assert "**UW vs Uncertainty** — the same algorithm" in page


def test_unknown_method_suggests_the_closest(lb):
    with pytest.raises(UnknownKeyError, match=r"Did you mean: MGDA-UB \(hard_sharing\+mgda_ub\)"):
        find_method(lb, "MGDA_UBB")
    with pytest.raises(UnknownKeyError, match=r"Did you mean: MTAN"):
        find_method(lb, "mtann")
    with pytest.raises(UserError, match="several methods"):    # a printed name two methods share
        find_method(lb, "LTB")


# --- measured values --------------------------------------------------------------------------------

def test_measured_delta_comes_from_the_store_and_the_baseline_from_the_table(tmp_path):
    stl = {k: 10.0 for k in NYU}
    hps = dict(stl, miou=11.0, abs_err_pooled=8.0)   # seg (+10% + 0)/2, depth (+20% + 0)/2, normals 0
    _store(tmp_path, "conal/table3/stl", stl)
    _store(tmp_path, "conal/table3/hps", hps)
    board = build("tiny", tmp_path)
    e = _entry(board, "conal/table3", "hps")
    assert e.delta.published == pytest.approx(-0.5088, abs=1e-12)          # as printed
    assert e.delta.measured == pytest.approx((5.0 + 10.0 + 0.0) / 3, abs=1e-9)
    assert e.delta.measured != e.delta.published
    assert e.delta.baseline.startswith("STL (`conal/table3/stl`")
    # Table 7 prints no metrics: its HPS row is the same run, Δ against Table 3's STL (delta_reference)
    assert _entry(board, "conal/table7", "hps").delta.measured == pytest.approx(5.0, abs=1e-9)
    assert "+5.0000" in render_page(board)
    nr = _entry(board, "conal/table3", "mtan")
    assert nr.delta.measured is None and nr.delta.measured_text() == "not run"
    data = json.loads(json.dumps(lbpage.method_json(board, e.method)))
    row = next(r for r in data["rows"] if r["table"] == "conal/table3")
    assert row["delta"]["measured"] == pytest.approx(5.0, abs=1e-9) and row["delta"]["published"] == -0.5088


def test_baselines_are_read_from_the_rows(lb):
    assert _entry(lb, "etr_nlp/table4", "gradnorm_a40").delta.baseline == \
        "Hard sharing (`etr_nlp/table4/hard_sharing_a40`, HPS)"
    # GatedMTL Table 7: the column names the original-width STL, each row its own width's STL
    assert "`gatedmtl/table7/nyud_half_stl`" in _entry(lb, "gatedmtl/table7", "nyud_half_mtl_uniform").delta.baseline
    assert _entry(lb, "gatedmtl/table2", "pcgrad").delta.baseline.startswith("STL (`gatedmtl/table2/stl`")


def test_no_measured_value_without_a_run(lb):
    for e in lb.entries:
        if e.delta is not None:
            assert e.delta.measured is None and e.delta.n_meas == 0


# --- purity, files, CLI -----------------------------------------------------------------------------

def test_same_store_same_bytes_and_a_new_record_changes_the_page(tmp_path):
    _store(tmp_path, "conal/table3/stl", {k: 10.0 for k in NYU})
    a, b = lbpage.write_leaderboard("tiny", tmp_path, tmp_path / "a.md"), \
        lbpage.write_leaderboard("tiny", tmp_path, tmp_path / "b.md")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_text().splitlines()[0].startswith(f"> **{lbpage.SYNTHETIC_LINE}.**")
    _store(tmp_path, "conal/table3/mtan", dict({k: 10.0 for k in NYU}, miou=12.0))   # seg +10% -> Δ_I 3.3333
    c = lbpage.write_leaderboard("tiny", tmp_path, tmp_path / "c.md").read_text()
    assert c != a.read_text() and "+3.3333" in c and "+3.3333" not in a.read_text()
    assert lbpage.leaderboard_path("tiny", tmp_path) == tmp_path / "tiny" / "leaderboard.md"
    assert lbpage.leaderboard_path("full", tmp_path) == tmp_path / "leaderboard.md"


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(list(argv))
    cli.check_arguments(args)
    return args


def test_cli_method_json_all_and_unknown(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(store, "RESULTS_DIR", tmp_path)            # never results/ of the checkout
    assert cli.run(_args("uncertainty", "--profile", "tiny", "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["key"] == "hard_sharing+uw" and out["synthetic"] and {"conal", "gatedmtl"} == set(out["papers"])
    assert cli.run(_args("--all", "--profile", "tiny")) == 0
    page = (tmp_path / "tiny" / "leaderboard.md").read_text()
    assert page.startswith(f"> **{lbpage.SYNTHETIC_LINE}.**") and "# Cross-paper leaderboard" in page
    with pytest.raises(UnknownKeyError, match="Did you mean: GradNorm"):
        cli.run(_args("gradnrm", "--profile", "tiny"))
    for bad in (("MTAN", "--all"), (), ("--all", "--json")):
        with pytest.raises(UsageError):
            _args(*bad)
