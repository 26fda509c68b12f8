"""The per-cell PNG of a table report (mtlrepro/cell_plot.py): points by hand from hand-written
records, the PNG next to the report and linked from it, byte-identical rewrites (also from another
process), a new record changes it, no PNG while nothing is measured, one panel for many columns."""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mtlrepro.cell_plot import (SYNTHETIC_NOTE, CellPoint, panels, points, render_png, report_lines, title,
                                write_cell_plot)
from mtlrepro.compare import CellDiff, TableDiff, compare_table
from mtlrepro.profiles import apply_profile
from mtlrepro.recipe import recipe_sets
from mtlrepro.report import report_path, write_report
from mtlrepro.schema import Cell, Column, Row, Table
from mtlrepro.store import RunRecord, save_run
from mtlrepro.tables import get_table
from mtlrepro.verdict import Tolerance

TABLE = "etr_nlp/table4"
#: this test's own tolerances (the recipe file's may change): absolute, in printed units; #P relative
TOLERANCES = {"precision": 0.5, "recall": 0.5, "fscore": 0.5, "delta_p": 1.0, "params": "0.5%"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _recipe_set():
    return dataclasses.replace(recipe_sets()[TABLE], tolerances=dict(TOLERANCES))


def _save(root, row: str, seed: int, p: float, r: float, f: float, profile: str = "full",
          params: int | None = 11_197_032) -> None:
    eff = apply_profile(next(x for x in _recipe_set().recipes if x.row == row), profile)
    save_run(RunRecord(recipe_id=eff.id, fingerprint=eff.fingerprint, seed=seed, profile=profile, status="finished",
                       recipe={}, data={}, final={"metrics": {"precision": p, "recall": r, "fscore": f}},
                       complexity={} if params is None else {"params_active_task0": params, "params_total": params},
                       environment={"device": "cpu", "device_kind": "cpu", "torch": "fixture", "git_sha": "fixture"}),
             root)


def test_points_are_the_published_and_measured_pairs_by_hand(tmp_path):
    table = get_table(TABLE)
    hs, gn = table.row("hard_sharing_g8"), table.row("gradnorm_g8")
    _save(tmp_path, "hard_sharing_g8", 0, 60.0, 59.8, 63.0)
    _save(tmp_path, "hard_sharing_g8", 1, 62.0, 59.8, 64.0)
    _save(tmp_path, "gradnorm_g8", 0, 70.0, 58.0, 65.0, params=None)
    td = compare_table(table, "full", [0, 1], tmp_path, _recipe_set())
    got = {(p.row, p.column): p for p in points(td)}
    # only these cells are measured (gradnorm's record has no complexity: its #P is missing), in table order
    order = [("hard_sharing_g8", c) for c in ("params", "precision", "recall", "fscore", "delta_p")]
    order += [("gradnorm_g8", c) for c in ("precision", "recall", "fscore", "delta_p")]
    assert [(p.row, p.column) for p in points(td)] == order

    p = got["hard_sharing_g8", "precision"]       # published 67.7 ± 0.8; measured (60 + 62)/2 ± √2
    assert (p.published, p.published_std) == (hs.cells["precision"].value, hs.cells["precision"].std)
    assert p.measured == 61.0 and p.measured_std == pytest.approx(math.sqrt(2.0), abs=1e-12) and p.n_meas == 2
    assert p.tolerance == 0.5
    p = got["hard_sharing_g8", "recall"]          # two equal seeds: std 0, |59.8 − 59.8| ≤ 0.5
    assert p.measured == pytest.approx(59.8, abs=1e-12) and p.measured_std == 0.0 and p.verdict == "match"
    p = got["hard_sharing_g8", "params"]          # 11 197 032 / 1e6 vs 11.2 ± 0.5 % (0.056): match, no spread
    assert p.measured == pytest.approx(11.197032, abs=1e-12) and p.measured_std is None
    assert p.tolerance == pytest.approx(0.005 * 11.2, abs=1e-12) and p.verdict == "match"
    p = got["gradnorm_g8", "precision"]           # one seed: no std
    assert (p.published, p.measured, p.measured_std, p.n_meas) == (gn.cells["precision"].value, 70.0, None, 1)
    # Δp (flat) against the mean of the measured hard sharing row (P 61, R 59.8, F 63.5), per seed, %
    base = {"p": 61.0, "r": 59.8, "f": 63.5}
    hs0 = ((60.0 - 61.0) / 61.0 + 0.0 + (63.0 - 63.5) / 63.5) / 3 * 100
    p = got["hard_sharing_g8", "delta_p"]         # seeds ±hs0: mean 0, std √2 · |hs0|
    assert p.published == 0.0 and p.measured == pytest.approx(0.0, abs=1e-12)
    assert p.measured_std == pytest.approx(math.sqrt(2.0) * abs(hs0), rel=1e-9) and p.tolerance == 1.0
    want = ((70.0 - base["p"]) / base["p"] + (58.0 - base["r"]) / base["r"] + (65.0 - base["f"]) / base["f"]) / 3 * 100
    p = got["gradnorm_g8", "delta_p"]
    assert p.published == gn.cells["delta_p"].value and p.measured == pytest.approx(want, abs=1e-9)
    # the verdict shown is the diff's, cell for cell
    verdicts = {(d.row, d.column): d.verdict for d in td.cells}
    assert all(q.verdict == verdicts[k] for k, q in got.items())
    # one panel per column, each with the column's declared tolerance as its band
    ps = panels(td)
    assert [x.columns for x in ps] == [(c,) for c in ("params", "precision", "recall", "fscore", "delta_p")]
    assert ps[0].band == Tolerance(0.005, True) and ps[4].band == Tolerance(1.0, False)


def _report(root, profile="tiny", table=TABLE, seeds=None):
    return write_report(get_table(table), profile, seeds, root, with_complexity=False, recipe_set=_recipe_set())


def test_report_writes_a_linked_deterministic_png_that_follows_the_store(tmp_path):
    _save(tmp_path, "hard_sharing_g8", 0, 30.0, 50.0, 35.0, profile="tiny")
    md = _report(tmp_path)
    png = md.with_suffix(".png")
    assert md == report_path(get_table(TABLE), "tiny", tmp_path) and md.parent == tmp_path / "tiny" / "etr_nlp"
    assert png.is_file() and png.name == "table4.png"
    text = md.read_text()
    assert "](table4.png)" in text and "## Published vs measured, per cell (plot)" in text
    assert "1 Hard sharing" in text and "5 measured cells" in text and SYNTHETIC_NOTE in text
    first = png.read_bytes()
    assert first.startswith(PNG_SIGNATURE)
    assert b"matplotlib" not in first and b"Creation" not in first     # no software, no date
    _report(tmp_path)
    assert png.read_bytes() == first

    # the same store copied elsewhere, written by another process with another hash seed: same bytes
    other = tmp_path.parent / f"{tmp_path.name}_copy"
    shutil.copytree(tmp_path / "runs", other / "runs")
    code = "import sys, pathlib; from tests.test_cell_plot import _report; _report(pathlib.Path(sys.argv[1]))"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-c", code, str(other)], check=True, env=env, cwd=Path(__file__).parents[1])
    assert (other / "tiny" / "etr_nlp" / "table4.png").read_bytes() == first

    _save(tmp_path, "gradnorm_g8", 0, 33.0, 48.0, 36.0, profile="tiny")
    _report(tmp_path)
    assert png.read_bytes() != first
    assert "2 GradNorm" in md.read_text()


def test_no_png_for_a_table_without_a_measured_cell(tmp_path):
    md = report_path(get_table("etr_nlp/table1"), "tiny", tmp_path)
    md.parent.mkdir(parents=True)
    md.with_suffix(".png").write_bytes(b"stale")          # from a store that has since changed
    md = write_report(get_table("etr_nlp/table1"), "tiny", results_root=tmp_path, with_complexity=False)
    assert not md.with_suffix(".png").exists()
    text = md.read_text()
    assert "None yet: no cell has a measured value." in text and ".png)" not in text


def test_title_says_synthetic_for_every_profile_but_full():
    td = TableDiff(get_table(TABLE), "tiny", None, [], {}, {}, {})
    assert title(td).endswith("\n" + SYNTHETIC_NOTE)
    assert SYNTHETIC_NOTE not in title(dataclasses.replace(td, profile="full"))
    assert write_cell_plot(td, Path("/nonexistent/x.png")) is None
    assert report_lines(td, None)[-2] == "None yet: no cell has a measured value."


def _wide_diff(n: int, tolerances: dict[str, Tolerance], rounding: dict[str, float] | None = None) -> TableDiff:
    """A table of ``n`` attribute accuracies (%) and one Δ, one row measured everywhere 1 above."""
    cols = tuple(Column(f"a{i}", f"attr {i}", unit="%") for i in range(n)) + (Column("d", "Δ", kind="derived", unit="%"),)
    cells = {c.key: Cell(f"{80 + i}.0", 80.0 + i, None, 1) for i, c in enumerate(cols)}
    table = Table("x/wide", "etr_nlp", "wide", "", "", "celeba", "", None, cols, (Row("r", "Row", cells),))
    diffs = [CellDiff("r", "Row", None, c.key, c.key, 80.0 + i, 0.5, 3, 81.0 + i, 0.2, 3, 1.0,
                      (rounding or {}).get(c.key, 0.05), "better") for i, c in enumerate(cols)]
    return TableDiff(table, "full", None, diffs, {}, tolerances, {})


def test_many_columns_share_one_panel_per_unit():
    td = _wide_diff(40, {})
    ps = panels(td)
    assert [len(p.columns) for p in ps] == [40, 1] and ps[0].title == "40 columns (%)" and ps[1].title == "Δ"
    assert len(ps[0].points) == 40 and ps[0].band == Tolerance(0.05)    # one rounding for all: one band
    assert [len(p.columns) for p in panels(_wide_diff(11, {}))] == [1] * 12   # 12 columns: one each
    assert render_png(td).startswith(PNG_SIGNATURE)
    # tolerances that differ between the columns of a panel: no common band (each point's own bar)
    mixed = _wide_diff(40, {"a0": Tolerance(1.0)})
    assert panels(mixed)[0].band is None
    uneven = _wide_diff(40, {}, rounding={"a3": 0.5})
    assert panels(uneven)[0].band is None and panels(uneven)[1].band == Tolerance(0.05)
    assert render_png(mixed) != render_png(td)


def test_points_skip_cells_without_a_measured_mean():
    td = _wide_diff(2, {})
    missing = dataclasses.replace(td.cells[0], measured=None, measured_std=None, n_meas=0, verdict="missing")
    td = dataclasses.replace(td, cells=[missing] + td.cells[1:])
    assert [p.column for p in points(td)] == ["a1", "d"]
    assert points(td)[0] == CellPoint("r", "Row", None, "a1", 81.0, 0.5, 82.0, 0.2, 3, 0.05, "better")
