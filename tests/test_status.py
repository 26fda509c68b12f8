"""`mtlrepro status` and `mtlrepro report --all` on small hand-written stores (no training).

The fixture: ETR-NLP Table 4 (14 rows × 5 compared cells: #P, precision, recall, F-score, Δp),
profile full, with two recipes' statuses changed (``mgda_ub_a40`` not implemented,
``attentive_a40`` ambiguous) and these records:

    hard_sharing_g8   5 seeds, P/R/F = the published means, #P 11.2M   -> 5 match
    gradnorm_g8       5 seeds, P/R/F = the published means, no #P      -> P/R/F match, Δp match
                      (Δp from the published means: ((70.4−67.7)/67.7 + (59.5−59.8)/59.8
                       + (63.6−63.0)/63.0)/3 · 100 = 1.479, |1.479 − 1.5| ≤ the tolerance 1.0),
                      #P missing
    mgda_ub_g8        seed 0 failed                                    -> 5 failed
    mgda_ub_a40       not implemented -> 5 n/i;  attentive_a40 ambiguous -> 5 ambiguous
    9 other rows      no record                                        -> 45 missing

so: match 9, missing 46, failed 5, not implemented 5, ambiguous 5 (70 cells); 12 ready rows × 5
seeds = 60 runs asked, 10 finished + 1 failed stored, 49 jobs to run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from mtlrepro.profiles import apply_profile

from mtlrepro.recipe import recipe_sets
from mtlrepro.store import RunRecord, save_run
from mtlrepro.tables import get_table

TABLE = "etr_nlp/table4"
NOT_IMPL = {"mgda_ub_a40": ("not_implemented", "fixture: no implementation"),
            "attentive_a40": ("ambiguous", "fixture: the printed row maps to two configurations")}
CELEBA_TRAIN = 162_770          # official CelebA training split


def _fixture_set():
    rs = recipe_sets()[TABLE]
    recipes = tuple(dataclasses.replace(r, status=NOT_IMPL[r.row][0], notes=NOT_IMPL[r.row][1])
                    if r.row in NOT_IMPL else r for r in rs.recipes)
    return dataclasses.replace(rs, recipes=recipes)


def _files():
    return {TABLE: _fixture_set()}


def _save(root, row: str, seeds, status: str = "finished", complexity: dict | None = None, profile="full"):
    table = get_table(TABLE)
    r = apply_profile(next(x for x in _fixture_set().recipes if x.row == row), profile)
    cells = table.row(row).cells
    metrics = {k: cells[k].value for k in ("precision", "recall", "fscore")}
    for s in seeds:
        save_run(RunRecord(recipe_id=r.id, fingerprint=r.fingerprint, seed=s, profile=profile, status=status,
                           recipe={}, data={"synthetic": profile == "tiny"},
                           final={"metrics": metrics} if status == "finished" else {},
                           complexity=complexity or {}, failure="RunFailed: fixture" if status == "failed" else "",
                           environment={"device_kind": "cpu", "device": "cpu", "torch": "fixture",
                                        "git_sha": "fixture"}), root)


def _store(root):
    _save(root, "hard_sharing_g8", range(5), complexity={"params_active_task0": 11_200_000})
    _save(root, "gradnorm_g8", range(5))
    _save(root, "mgda_ub_g8", [0], status="failed")


@pytest.fixture
def calibration(tmp_path, monkeypatch):
    """A calibration file measuring only max_roaming_g8's configuration: 0.5 s per batch."""
    import mtlrepro.cost as cost

    r = next(x for x in recipe_sets()[TABLE].recipes if x.row == "max_roaming_g8")
    key = f"{r.dataset}/{r.task_set}/{r.backbone}/{r.sharing}/{r.weighting}/{r.update}"
    folder = tmp_path / "calibration"
    folder.mkdir()
    (folder / "status-fixture.yaml").write_text(
        f"device: Fixture GPU\nreference_batch: recipe\ns_per_batch:\n  {key}: 0.5\n")
    monkeypatch.setattr(cost, "CALIBRATION_DIR", folder)
    cost.calibration.cache_clear()
    yield "status-fixture", r
    cost.calibration.cache_clear()


def test_counts_and_tallies_match_the_hand_computed_ones(tmp_path, calibration):
    from mtlrepro.status import collect_status

    table = get_table(TABLE)
    compared = [c.key for c in table.columns if c.kind in ("metric", "derived") or c.unit == "params"]
    assert len(table.rows) == 14 and all(set(compared) <= set(r.cells) for r in table.rows) and len(compared) == 5
    name, mr = calibration
    assert mr.batch_size == 256 and mr.max_steps_per_epoch is None
    root = tmp_path / "results"
    _store(root)
    st = collect_status(("full",), root, [TABLE], _files(), calibration=name)
    t = st.tables[0]
    assert (t.id, t.error, t.rows, t.ready, t.paper_seeds) == (TABLE, "", 14, 12, 5)
    assert [(n.row, n.reason) for n in t.not_implemented] == [("mgda_ub_a40", "fixture: no implementation")]
    assert [n.row for n in t.ambiguous] == ["attentive_a40"]
    ps = t.profiles["full"]
    want = {"match": 9, "missing": 46, "failed": 5, "not implemented": 5, "ambiguous": 5}
    assert {k: v for k, v in ps.verdicts.items() if v} == want
    assert (ps.runs, ps.failed, ps.expected, ps.rows_with_runs, ps.rows_complete, ps.recipe_seeds) == \
        (10, 1, 60, 3, 2, [5])
    assert (ps.jobs_stored, ps.jobs_failed, ps.to_run, ps.waiting) == (10, 1, 49, 0)
    # max_roaming_g8: 5 jobs × (162770 // 256 batches) × its epochs × 0.5 s; no other job is calibrated
    assert ps.hours_known == 5
    assert ps.gpu_hours == pytest.approx(5 * (CELEBA_TRAIN // 256) * mr.epochs * 0.5 / 3600, rel=1e-12)
    tot = st.totals("full")
    assert (tot["rows"], tot["ready"], tot["not_implemented"], tot["ambiguous"], tot["runs"], tot["failed"],
            tot["to_run"]) == (14, 12, 1, 1, 10, 1, 49)
    assert st.device == "Fixture GPU"


def test_no_calibration_is_unknown_and_nothing_left_is_zero(tmp_path):
    from mtlrepro.status import collect_status, hours_text

    st = collect_status(("full",), tmp_path, [TABLE], _files(), calibration="no-such-calibration")
    ps = st.tables[0].profiles["full"]
    assert (ps.to_run, ps.gpu_hours, ps.hours_known) == (60, None, 0)
    assert hours_text(ps.gpu_hours, ps.hours_known, ps.to_run) == "unknown"
    assert hours_text(0.0, 0, 0) == "0.0" and hours_text(2.0, 5, 49) == "2.0 (5 of 49 jobs)"


def test_waiting_retrainings_count_as_to_run(tmp_path):
    """CoNAL Table 2, empty store: every job of its recipe file is to run, the retrainings of the
    four searched architectures as waiting (their searches are not stored)."""
    from mtlrepro.status import collect_status

    rs = recipe_sets()["conal/table2"]
    retrain = [r for r in rs.recipes if r.architecture_from]
    assert len(retrain) == 4
    for profile in ("full", "tiny"):
        n = (lambda r: len(r.seeds)) if profile == "full" else (lambda r: 1)   # tiny: seed 0 only
        ps = collect_status((profile,), tmp_path, ["conal/table2"]).tables[0].profiles[profile]
        assert ps.waiting == sum(n(r) for r in retrain)
        assert ps.to_run == sum(n(r) for r in rs.recipes if r.status == "ready")
        assert ps.runs == 0 and ps.verdicts["missing"] == sum(1 for d in ps._diff.cells)


def test_json_is_the_same_data(tmp_path, monkeypatch, capsys):
    import mtlrepro.store as store
    from mtlrepro.cli import status as cli
    from mtlrepro.status import collect_status
    from mtlrepro.tables import table_paths

    _store(tmp_path)
    monkeypatch.setattr(store, "RESULTS_DIR", tmp_path)
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    assert cli.run(p.parse_args(["--profile", "full", "--json"])) == 0
    got = json.loads(capsys.readouterr().out)
    assert [t["id"] for t in got["tables"]] == sorted(table_paths())
    assert got["totals"]["full"]["rows"] == sum(len(get_table(t).rows) for t in table_paths())
    t4 = next(t for t in got["tables"] if t["id"] == TABLE)["profiles"]["full"]
    assert (t4["runs"], t4["failed"], t4["verdicts"]["match"]) == (10, 1, 9)   # the repository's recipes
    fixture = collect_status(("full",), tmp_path, [TABLE], _files()).to_dict()
    assert json.loads(json.dumps(fixture))["tables"][0]["profiles"]["full"]["verdicts"]["ambiguous"] == 5


def test_broken_recipe_file_is_an_error_line_not_a_crash(tmp_path, monkeypatch, capsys):
    from mtlrepro.cli import status as cli
    from mtlrepro.status import collect_status

    bad = tmp_path / "etr_nlp" / "table4.yaml"
    bad.parent.mkdir()
    bad.write_text("table: etr_nlp/table4\nrecipes:\n  - row: hard_sharing_g8\n    bogus_field: 1\n")
    files = recipe_sets()
    monkeypatch.setitem(files.paths, TABLE, bad)
    monkeypatch.delitem(files._sets, TABLE, raising=False)
    st = collect_status(("full",), tmp_path / "results", ["etr_nlp/table3a", TABLE])
    ok, broken = st.tables
    assert ok.error == "" and ok.profiles["full"].to_run == 25
    assert "bogus_field" in broken.error and "table4.yaml" in broken.error and broken.profiles == {}
    assert broken.rows == 14                     # the table file itself is fine
    monkeypatch.setattr("mtlrepro.store.RESULTS_DIR", tmp_path / "results")
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    assert cli.run(p.parse_args(["--profile", "tiny"])) == 2
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(TABLE + " "))
    assert "error:" in line and "bogus_field" in line


def test_broken_table_file_is_an_error_line(tmp_path, monkeypatch):
    from mtlrepro.registry import Lazy
    from mtlrepro.status import collect_status
    from mtlrepro.tables import load_table_file, table_registry

    bad = tmp_path / "etr_nlp" / "table4.yaml"
    bad.parent.mkdir()
    bad.write_text("id: etr_nlp/table4\npaper: etr_nlp\ncolums: []\n")
    monkeypatch.setitem(table_registry()._entries, TABLE, Lazy(lambda: load_table_file(bad)))
    t = collect_status(("full",), tmp_path, [TABLE]).tables[0]
    assert "colums" in t.error and t.rows == 0 and t.profiles == {}


def test_index_is_a_pure_function_of_the_store(tmp_path, calibration):
    from mtlrepro.index_page import index_path, write_all

    name, _ = calibration
    root = tmp_path / "results"
    _store(root)
    paths = write_all("full", results_root=root, table_ids=[TABLE], recipe_files=_files(), calibration=name)
    index = index_path("full", root)
    assert paths == [root / "etr_nlp" / "table4.md", index] and index == root / "README.md"
    first = index.read_bytes()
    write_all("full", results_root=root, table_ids=[TABLE], recipe_files=_files(), calibration=name)
    assert index.read_bytes() == first
    text = first.decode()
    assert "generated by `mtlrepro report --all`" in text and "do not edit by hand" in text.lower()
    assert "(etr_nlp/table4.md)" in text and "synthetic" not in text.lower()
    line = next(x for x in text.splitlines() if x.startswith("| `etr_nlp/table4`"))
    for part in ("| 14 | 12 | 1 | 1 | 10/60 +1 failed |", "match 9, missing 46, failed 5, n/i 5, ambiguous 5",
                 "| 49 |"):
        assert part in line
    assert "`mgda_ub_a40` — fixture: no implementation" in text
    _save(root, "mgda_ub_g8", [1])               # one more record: another page
    write_all("full", results_root=root, table_ids=[TABLE], recipe_files=_files(), calibration=name)
    assert index.read_bytes() != first and "11/60 +1 failed" in index.read_text()


def test_tiny_index_is_labelled_and_kept_apart(tmp_path):
    from mtlrepro.index_page import SYNTHETIC_LINE, index_path, write_all

    root = tmp_path / "results"
    _save(root, "hard_sharing_g8", [0], profile="tiny")
    write_all("full", results_root=root, table_ids=[TABLE], recipe_files=_files())
    full = index_path("full", root).read_text()
    assert not (root / "etr_nlp" / "table4.md").exists()        # no full run: no full report
    assert "| 0/60 |" in full and "(etr_nlp/table4.md)" not in full
    write_all("tiny", results_root=root, table_ids=[TABLE], recipe_files=_files())
    tiny = index_path("tiny", root)
    assert tiny == root / "tiny" / "README.md" and (root / "tiny" / "etr_nlp" / "table4.md").exists()
    text = tiny.read_text()
    assert SYNTHETIC_LINE == "synthetic data, random initialisation: not comparable with the paper"
    assert SYNTHETIC_LINE in text.split("\n## ")[0] and "](etr_nlp/table4.md)" in text
    assert "| 1/12 |" in text and "](../README.md)" in text
    assert index_path("full", root).read_text() == full                # the tiny run left the full page alone


def test_report_cli_all_and_usage(tmp_path, monkeypatch, capsys):
    import mtlrepro.store as store
    from mtlrepro.cli.main import main

    assert main(["report"]) == 2
    assert main(["report", TABLE, "--all"]) == 2
    capsys.readouterr()
    monkeypatch.setattr(store, "RESULTS_DIR", tmp_path)
    _save(tmp_path, "hard_sharing_g8", [0], profile="tiny")
    assert main(["report", "--all", "--profile", "tiny"]) == 0
    out = capsys.readouterr().out
    # hard sharing on CelebA-8 is one configuration shared by Tables 1, 3a, 4 and S1: their reports
    wrote = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "tiny").rglob("*.md"))
    assert "tiny/README.md" in wrote and "tiny/etr_nlp/table4.md" in wrote
    assert all(f"wrote {tmp_path / w}" in out for w in wrote)
    assert not (tmp_path / "README.md").exists()
