"""The harness: store, resumption, failures, recipes ↔ registry, CLI contract."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtlrepro.launch import InProcessLauncher, plan_jobs
from mtlrepro.profiles import apply_profile
from mtlrepro.recipe import get_recipe, recipe_sets
from mtlrepro.store import find_run, iter_runs
from mtlrepro.tables import get_table

from .harness_utils import tiny_env  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parent.parent


def test_every_row_with_a_recipe_points_to_it():
    for tid, rs in recipe_sets().items():
        if rs.figure is not None or rs.suite is not None:  # figure sweeps and suites have no printed table
            continue
        table = get_table(tid)
        upstream = {r.architecture_from.rsplit("/", 1)[-1] for r in rs.recipes if r.architecture_from}
        ids = {r.row: r.id for r in rs.recipes if not r.extra and r.row not in upstream}
        assert set(ids) <= {r.key for r in table.rows}, tid
        for row in table.rows:
            if row.key in ids:
                assert row.recipe == ids[row.key], (tid, row.key)


def test_every_table4_row_points_to_its_recipe():
    table = get_table("etr_nlp/table4")
    rs = recipe_sets()["etr_nlp/table4"]
    by_row = {r.row: r for r in rs.recipes}
    assert len(table.rows) == 14
    for row in table.rows:
        assert row.recipe == f"etr_nlp/table4/{row.key}"
        assert get_recipe(row.recipe).row == row.key
        assert by_row[row.key].task_set == ("group8" if row.key.endswith("_g8") else "attr40")


def test_fingerprint_ignores_seeds_and_notes_but_not_schedule():
    r = get_recipe("etr_nlp/table4/hard_sharing_g8")
    assert r.with_overrides(seeds=(7,), notes="x").fingerprint == r.fingerprint
    assert r.with_overrides(lr=2e-4).fingerprint != r.fingerprint
    assert apply_profile(r, "tiny").fingerprint != r.fingerprint


def test_unknown_recipe_suggests_close_names():
    from mtlrepro.registry import UnknownKeyError
    with pytest.raises(UnknownKeyError, match="max_roaming_g8"):
        get_recipe("etr_nlp/table4/max_roming_g8")


def _tiny(recipe_id: str, **kw):
    return apply_profile(get_recipe(recipe_id), "tiny").with_overrides(**kw)


def test_resume_after_interruption_gives_the_same_run(tmp_path, tiny_env):
    from mtlrepro.train import train_run
    recipe = _tiny("etr_nlp/table4/max_roaming_g8", epochs=3)
    a = tmp_path / "a"
    b = tmp_path / "b"
    full = train_run(recipe, 0, "tiny", results_root=a, progress=False, device="cpu")
    # interrupted after epoch 1, then resumed: redoes no finished epoch
    assert train_run(recipe, 0, "tiny", results_root=b, progress=False, device="cpu", stop_after_epochs=1) is None
    assert find_run("tiny", recipe.id, recipe.fingerprint, 0, b) is None
    resumed = train_run(recipe, 0, "tiny", results_root=b, progress=False, device="cpu")
    assert [e.epoch for e in resumed.epochs] == [1, 2, 3]
    for e_full, e_res in zip(full.epochs, resumed.epochs):
        assert e_res.train_loss == pytest.approx(e_full.train_loss, rel=1e-6, abs=1e-7)
        for k, v in e_full.metrics.items():
            assert e_res.metrics[k] == pytest.approx(v, abs=1e-6)
    assert not list((b / "checkpoints").rglob("*.pt"))  # checkpoint removed once finished


def test_nan_loss_marks_run_failed_and_sweep_goes_on(tmp_path, tiny_env, monkeypatch):
    import torch

    from mtlrepro.launch import Job
    from mtlrepro.problems import celeba as celeba_problem

    real = celeba_problem.build_celeba_problem

    def poisoned(recipe, *a, **kw):
        p = real(recipe, *a, **kw)
        if recipe.row.startswith("gradnorm"):
            p.task_loss = lambda t, out, y: out.sum() * torch.tensor(float("nan"))
        return p

    monkeypatch.setattr(celeba_problem, "build_celeba_problem", poisoned)
    jobs = [Job(_tiny("etr_nlp/table4/gradnorm_g8", epochs=1), 0, "tiny"),
            Job(_tiny("etr_nlp/table4/hard_sharing_g8", epochs=1), 0, "tiny")]
    InProcessLauncher("cpu", progress=False).run(jobs, None, tmp_path)
    bad = find_run("tiny", jobs[0].recipe.id, jobs[0].recipe.fingerprint, 0, tmp_path)
    good = find_run("tiny", jobs[1].recipe.id, jobs[1].recipe.fingerprint, 0, tmp_path)
    assert bad.status == "failed" and "non-finite" in bad.failure
    assert good.status == "finished"


@pytest.mark.slow
def test_killed_sweep_keeps_finished_runs(tmp_path, tiny_env):
    """SIGKILL `mtlrepro run` over 3 seeds after its first record appears; the rerun keeps it untouched
    and runs only the rest."""
    env = dict(os.environ, MTLREPRO_RESULTS=str(tmp_path), MTLREPRO_CACHE=str(tiny_env), MTLREPRO_THREADS="1")
    cmd = [sys.executable, "-m", "mtlrepro", "run", "etr_nlp/table4/hard_sharing_g8", "--profile", "tiny",
           "--seeds", "0,1,2", "--no-progress", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    runs_dir = tmp_path / "runs" / "tiny"
    deadline = time.time() + 300
    first: list[Path] = []
    while time.time() < deadline and not first:
        time.sleep(0.1)
        first = sorted(runs_dir.rglob("seed*.json")) if runs_dir.exists() else []
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first, "no run finished within the time limit"
    kept = {p: (p.stat().st_mtime_ns, p.read_text()) for p in runs_dir.rglob("seed*.json")}
    assert 1 <= len(kept) < 3
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{3 - len(kept)} jobs to run, {len(kept)} already stored" in out.stderr
    for p, (mtime, text) in kept.items():
        assert p.stat().st_mtime_ns == mtime and p.read_text() == text
    assert len(list(runs_dir.rglob("seed*.json"))) == 3
    assert not list((tmp_path / "checkpoints").rglob("*.pt"))


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "mtlrepro", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cli_tables_and_table_json_contract():
    tables = json.loads(_cli("tables", "--json"))
    assert len(tables) == 25
    assert all({"id", "paper", "title", "n_rows"} <= set(t) for t in tables)
    t = json.loads(_cli("table", "etr_nlp/table4", "--json"))
    assert {"id", "paper", "title", "columns", "rows"} <= set(t)
    assert all({"key", "label", "higher_is_better"} <= set(c) for c in t["columns"])
    hs = t["rows"][0]
    assert hs["label"] == "Hard sharing" and hs["group"].startswith("8 grouped")
    assert hs["cells"]["precision"] == {"value": 67.7, "std": 0.8, "text": "67.7 ± 0.8"}
    assert hs["cells"]["delta_p"]["std"] is None


def test_cli_unknown_id_exit_code_and_suggestion():
    out = subprocess.run([sys.executable, "-m", "mtlrepro", "table", "etr_nlp/tabel4"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "etr_nlp/table4" in out.stderr and "Traceback" not in out.stderr


def test_conal_difference_tables_expose_absolute_values():
    t = get_table("conal/table3")
    hps, stl = t.row("hps"), t.row("stl")
    # STL mIoU 53.98, HPS printed +0.50 -> 54.48 (derived)
    assert t.absolute(stl, "miou") == pytest.approx(53.98)
    assert t.absolute(hps, "miou") == pytest.approx(54.48)


def test_audit_cli_json_fields():
    rows = json.loads(_cli("audit", "etr_nlp/table6", "--json"))
    assert rows and {"table", "row", "column", "published", "recomputed", "convention", "ok"} <= set(rows[0])


def _final(root, recipe):
    rec = find_run("tiny", recipe.id, recipe.fingerprint, 0, root)
    assert rec is not None and rec.status == "finished"
    return rec.epochs[-1].train_loss, rec.final["metrics"]


def test_local_multi_launcher_gives_the_same_records(tmp_path, tiny_env):
    """Two processes at once; the records equal the in-process launcher's."""
    from mtlrepro.launch import Job, LocalMultiLauncher
    recipes = [_tiny("etr_nlp/table4/hard_sharing_g8", epochs=1), _tiny("etr_nlp/table4/task_routing_g8", epochs=1)]
    jobs = [Job(r, 0, "tiny") for r in recipes]
    InProcessLauncher("cpu", progress=False).run(jobs, None, tmp_path / "a")
    LocalMultiLauncher(workers=2, devices=["cpu"], threads_per_worker=1).run(jobs, None, tmp_path / "b")
    for r in recipes:
        loss_a, m_a = _final(tmp_path / "a", r)
        loss_b, m_b = _final(tmp_path / "b", r)
        assert loss_b == pytest.approx(loss_a, rel=1e-6)
        assert m_b == pytest.approx(m_a, abs=1e-6)


def test_local_multi_launcher_shares_cpu_cores_and_reports_crashed_workers(tmp_path, capsys):
    from mtlrepro.launch import Job, LocalMultiLauncher
    assert LocalMultiLauncher(workers=2, devices=["cpu"]).threads == max(1, (os.cpu_count() or 1) // 2)
    assert LocalMultiLauncher(workers=2, devices=["cpu"], threads_per_worker=3).threads == 3
    # a full-profile job without data: the worker exits 2, its error reaches the user, and bad data
    # stops the sweep (a DataError after the pool) without storing anything
    from mtlrepro.data.errors import DataError
    job = Job(get_recipe("etr_nlp/table4/hard_sharing_g8"), 0, "full")
    with pytest.raises(DataError, match="bad or missing data"):
        LocalMultiLauncher(workers=1, devices=["cpu"]).run([job], str(tmp_path / "no_data"), tmp_path / "r")
    assert not list((tmp_path / "r").rglob("*.json"))
    err = capsys.readouterr().err
    assert "(exit 2)" in err and "worker stderr" in err and "celeba" in err.lower()


def test_submitit_launcher_debug_cluster(tmp_path, tiny_env):
    pytest.importorskip("submitit")
    from mtlrepro.launch import Job, SubmititLauncher
    job = Job(_tiny("etr_nlp/table4/hard_sharing_g8", epochs=1), 0, "tiny")
    SubmititLauncher(folder=str(tmp_path / "sub"), cluster="debug").run([job], None, tmp_path)
    assert _final(tmp_path, job.recipe)[1]["fscore"] >= 0


def test_plan_prints_jobs_and_a_cost_estimate():
    out = _cli("plan", "etr_nlp/table4")
    assert "70 jobs to run" in out and "hours on NVIDIA H100" in out
