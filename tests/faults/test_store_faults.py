"""Faults of the run store, its records, job claims and exit codes lose nothing
(mtlrepro/store.py, mtlrepro/claims.py, mtlrepro/launch.py, mtlrepro/cli/run.py).

Most cases run ``mtlrepro run`` in-process with the trainer replaced by a fake that stores a
record in milliseconds (the launcher, the claims and the store are the real ones); the sweeps
that must be separate processes (two concurrent sweeps, a killed local-multi worker) start
``python`` with the real CLI or worker.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest

from mtlrepro import claims
from mtlrepro.cli.main import main
from mtlrepro.profiles import apply_profile
from mtlrepro.recipe import get_recipe
from mtlrepro.store import (SCHEMA_VERSION, EpochRecord, RunRecord, StaleRecordWarning, find_run, iter_runs,
                            run_path, save_run)

from ..harness_utils import tiny_env  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]
RECIPE = "etr_nlp/table4/hard_sharing_g8"
RUN = ["run", RECIPE, "--profile", "tiny", "--device", "cpu", "--no-progress"]


def _recipe(row: str = "hard_sharing_g8"):
    return apply_profile(get_recipe(f"etr_nlp/table4/{row}"), "tiny")


def _record(recipe, seed: int = 0, status: str = "finished") -> RunRecord:
    metrics = {"precision": 0.5, "recall": 0.25, "fscore": 1 / 3}
    return RunRecord(recipe_id=recipe.id, fingerprint=recipe.fingerprint, seed=seed, profile="tiny", status=status,
                     recipe=recipe.to_dict(), data={}, epochs=[EpochRecord(1, 0.7, metrics, 0.1)],
                     final={"metrics": metrics, "epoch": 1, "selection": "last"}, environment={"device_kind": "cpu"},
                     failure="non-finite training loss (nan) in epoch 1" if status == "failed" else "")


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "results"
    monkeypatch.setenv("MTLREPRO_RESULTS", str(root))
    monkeypatch.setattr("mtlrepro.store.RESULTS_DIR", root)
    return root


class FakeTrainer:
    """Stands in for ``mtlrepro.train.train_run``: stores a record at once; ``fail`` stores a
    failed one and raises ``RunFailed`` as the trainer does on a non-finite loss."""

    def __init__(self, fail: bool = False):
        self.fail, self.calls = fail, []

    def __call__(self, recipe, seed, profile, data_root=None, device=None, results_root=None, progress=True, **kw):
        from mtlrepro.train import RunFailed
        self.calls.append(seed)
        rec = _record(recipe, seed, "failed" if self.fail else "finished")
        save_run(rec, results_root)
        if self.fail:
            raise RunFailed(rec.failure)
        return rec


@pytest.fixture
def trainer(monkeypatch) -> FakeTrainer:
    fake = FakeTrainer()
    monkeypatch.setattr("mtlrepro.train.train_run", fake)
    return fake


def _run(capsys, *extra: str) -> tuple[int, str]:
    rc = main([*RUN, *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---- broken, misplaced and stale records -------------------------------------------------------

def _truncated(t):   # a writer killed mid-file (what a non-atomic write leaves)
    return t[: len(t) // 2]


def _seed_as_text(t):
    return json.dumps({**json.loads(t), "seed": "0"})


def _loss_as_text(t):
    d = json.loads(t)
    d["epochs"][0]["train_loss"] = "0.7"
    return json.dumps(d)


def _metric_as_list(t):
    d = json.loads(t)
    d["final"]["metrics"]["fscore"] = [0.3]
    return json.dumps(d)


def _no_fingerprint(t):
    d = json.loads(t)
    del d["fingerprint"]
    return json.dumps(d)


@pytest.mark.parametrize("damage,why", [
    (_truncated, "invalid JSON"),
    (lambda t: "{not json", "invalid JSON"),
    (lambda t: "[1, 2]", "a JSON list"),
    (_seed_as_text, "seed is str '0', expected int"),
    (_loss_as_text, r"epochs\[0\].train_loss is str '0.7'"),
    (_metric_as_list, r"final.metrics\['fscore'\] is list"),
    (_no_fingerprint, "has no fingerprint"),
])
def test_a_broken_record_is_set_aside_and_the_next_sweep_reruns_it(store, trainer, capsys, damage, why):
    recipe = _recipe()
    path = save_run(_record(recipe), store)
    path.write_text(damage(path.read_text()))
    with pytest.warns(StaleRecordWarning, match=why) as seen:
        rc, err = _run(capsys, "--seeds", "0")
    assert rc == 0 and "1 jobs to run, 0 already stored" in err and trainer.calls == [0]
    asides = list(path.parent.glob("seed0.json.corrupt-*"))
    assert len(asides) == 1 and len(seen) == 1                           # warned once, never deleted
    assert str(path) in str(seen[0].message) and asides[0].name in str(seen[0].message)
    assert asides[0].read_text() == damage(_record(recipe).to_json())    # kept byte for byte
    assert find_run("tiny", recipe.id, recipe.fingerprint, 0, store).status == "finished"   # the rerun's
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleRecordWarning)                # a second read warns no more
        assert main([*RUN, "--seeds", "0"]) == 0


def test_a_broken_record_does_not_block_its_table(store):
    from mtlrepro.compare import collect_runs
    from mtlrepro.tables import get_table
    good, bad = _recipe("hard_sharing_g8"), _recipe("gradnorm_g8")
    save_run(_record(good), store)
    broken = save_run(_record(bad), store)
    broken.write_text(broken.read_text()[:100])
    with pytest.warns(StaleRecordWarning, match="invalid JSON"):
        rows = collect_runs(get_table("etr_nlp/table4"), "tiny", [0], store)
    assert [r.seed for r in rows["hard_sharing_g8"].runs] == [0] and rows["gradnorm_g8"].runs == []
    assert [r.recipe_id for r in iter_runs("tiny", store)] == [good.id]


def test_a_copy_under_another_seeds_name_is_not_a_second_seed(store, trainer, capsys):
    recipe = _recipe()
    path = save_run(_record(recipe), store)
    copy = path.with_name("seed1.json")
    copy.write_text(path.read_text())
    with pytest.warns(StaleRecordWarning, match="holds seed 0 but its path says seed 1") as seen:
        rc, err = _run(capsys, "--seeds", "0,1")
    msg = str(seen[0].message)
    assert "seed1.json" in msg and "seed0.json" in msg                   # names both files
    assert rc == 0 and "1 jobs to run, 1 already stored" in err and trainer.calls == [1]
    assert len(list(path.parent.glob("seed1.json.misplaced-*"))) == 1
    assert sorted(r.seed for r in iter_runs("tiny", store)) == [0, 1]     # seed 1 is the rerun's own


def test_a_copy_under_another_profile_or_device_kind_is_not_counted(store):
    recipe = _recipe()
    path = save_run(_record(recipe), store)
    gpu = run_path("tiny", recipe.fingerprint, 0, "cuda:NVIDIA H100 80GB HBM3", store)
    gpu.parent.mkdir(parents=True)
    gpu.write_text(path.read_text())
    with pytest.warns(StaleRecordWarning, match="holds kind cpu but its path says kind cuda-nvidia-h100"):
        assert find_run("tiny", recipe.id, recipe.fingerprint, 0, store, device_kind="cuda:NVIDIA H100 80GB HBM3") \
            is None
    assert find_run("tiny", recipe.id, recipe.fingerprint, 0, store).environment["device_kind"] == "cpu"


@pytest.mark.parametrize("version,why", [(SCHEMA_VERSION - 1, "an older layout"),
                                         (SCHEMA_VERSION + 1, "written by a newer mtlrepro")])
def test_a_record_of_another_schema_version_is_set_aside_and_rerun(store, trainer, capsys, version, why):
    recipe = _recipe()
    path = save_run(_record(recipe), store)
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema_version": version}))
    with pytest.warns(StaleRecordWarning, match=f"schema version {version} != {SCHEMA_VERSION} .{why}"):
        rc, err = _run(capsys, "--seeds", "0")
    assert rc == 0 and trainer.calls == [0]
    aside = list(path.parent.glob(f"seed0.json.schema{version}-*"))
    assert len(aside) == 1 and json.loads(aside[0].read_text())["schema_version"] == version   # kept as it was


def test_an_unreadable_record_is_a_fault_of_the_machine(store, trainer, capsys, monkeypatch):
    path = save_run(_record(_recipe()), store)
    real = Path.read_text

    def denied(self, *a, **k):   # chmod 000 does not stop root, who runs CI here
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", denied)
    rc, err = _run(capsys, "--seeds", "0")
    assert rc == 3 and f"cannot read the run record {path} (Permission denied)" in err
    assert trainer.calls == [] and path.exists() and not list(path.parent.glob("seed0.json.*"))


# ---- how records are written ---------------------------------------------------------------------

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_records_are_as_readable_as_other_files_not_0600(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = save_run(_record(_recipe()), tmp_path)
        plain = tmp_path / "plain"
        plain.write_text("x")                                             # what any other file gets
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode == stat.S_IMODE(plain.stat().st_mode)


def test_leftover_tmp_files_of_killed_writers_are_cleaned_at_the_next_sweep(store, trainer, capsys):
    recipe = _recipe()
    target = run_path("tiny", recipe.fingerprint, 5, "cpu", store)
    killed = subprocess.run([sys.executable, "-c", (
        "import os, sys\nfrom pathlib import Path\nfrom mtlrepro import store\n"
        "os.replace = lambda *a: os._exit(9)   # the writer dies between its write and the rename\n"
        "store.write_text_atomic(Path(sys.argv[1]), '{\"half\": ')"), str(target)], cwd=REPO)
    assert killed.returncode == 9
    dead = list(target.parent.glob("*.tmp"))
    assert len(dead) == 1 and not target.exists()
    old = store / "checkpoints" / "tiny" / recipe.fingerprint[:16] / "cpu" / "tmpk1ll3d.tmp"   # torch.save's
    old.parent.mkdir(parents=True)
    old.write_bytes(b"PK\x03\x04")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    live = target.parent / f".seed6.json~{socket.gethostname()}~{os.getpid()}~abc.tmp"   # a writer still at work
    foreign = target.parent / ".seed7.json~node-b~1~abc.tmp"                             # another host's, fresh
    live.write_text("{")
    foreign.write_text("{")
    rc, err = _run(capsys, "--seeds", "0")
    assert rc == 0 and "removed 2 temporary file(s) left by interrupted writers" in err
    assert not dead[0].exists() and not old.exists() and live.exists() and foreign.exists()


# ---- exit codes ----------------------------------------------------------------------------------

def test_run_exits_1_on_a_failed_job_and_releases_its_claim(store, monkeypatch, capsys):
    fake = FakeTrainer(fail=True)
    monkeypatch.setattr("mtlrepro.train.train_run", fake)
    rc, err = _run(capsys, "--seeds", "0,1")
    assert rc == 1 and "2 job(s) failed" in err and fake.calls == [0, 1]
    assert find_run("tiny", RECIPE, _recipe().fingerprint, 0, store).status == "failed"
    assert not list(store.rglob("*.lock"))
    rc, err = _run(capsys, "--seeds", "0,1")                              # nothing to run, still not reproduced
    assert rc == 1 and "0 jobs to run, 2 already stored" in err and "2 job(s) stored as failed" in err
    monkeypatch.setattr("mtlrepro.train.train_run", FakeTrainer())
    rc, err = _run(capsys, "--seeds", "0,1", "--retry-failed")
    assert rc == 0 and find_run("tiny", RECIPE, _recipe().fingerprint, 1, store).status == "finished"


def test_reproduce_exits_1_when_workers_were_killed_though_no_verdict_fails(store, monkeypatch, capsys):
    from mtlrepro.launch import LocalMultiLauncher
    monkeypatch.setattr(LocalMultiLauncher, "worker_command",       # every worker dies at once (OOM killer)
                        [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    monkeypatch.setattr("mtlrepro.report.write_report", lambda *a, **k: store / "report.md")
    rc = main(["reproduce", "etr_nlp/table4", "--profile", "tiny", "--seeds", "0", "--device", "cpu",
               "--no-progress", "--launcher", "local-multi", "--workers", "2"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "14 job(s) crashed or were killed, nothing stored" in err
    assert rc == 1 and not list(store.rglob("seed*.json*"))         # verdicts alone: "missing", not failing


KILLED_WORKER = ("import os, signal, sys\nimport mtlrepro.launch as L\n"
                 "L.run_job = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)   # dies holding its claim\n"
                 "from mtlrepro.worker import main\nsys.exit(main(sys.argv[1]))")


def test_a_killed_local_multi_worker_fails_the_sweep_and_its_job_stays_runnable(store, monkeypatch, capsys):
    from mtlrepro.launch import LocalMultiLauncher, plan_jobs
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setattr(LocalMultiLauncher, "worker_command", [sys.executable, "-c", KILLED_WORKER])
    rc, err = _run(capsys, "--seeds", "0", "--launcher", "local-multi", "--workers", "1")
    assert rc == 1
    assert "killed by signal 9" in err and "released the claim of its dead worker" in err
    assert f"1 job(s) crashed or were killed, nothing stored, they stay runnable: {RECIPE} seed 0" in err
    assert not list(store.rglob("seed0.json*"))                           # no record, no claim left
    todo, done, _ = plan_jobs([get_recipe(RECIPE)], "tiny", [0], device="cpu")
    assert [j.name for j in todo] == [f"{RECIPE} seed 0"] and not done


# ---- claims ----------------------------------------------------------------------------------------

def _lock(store, seed: int = 0, **owner) -> Path:
    lock = claims.lock_path(run_path("tiny", _recipe().fingerprint, seed, "cpu", store))
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"started": time.time(), "token": "theirs", **owner}))
    return lock


def test_a_stale_claim_of_a_dead_pid_is_taken_over(store, trainer, capsys):
    dead = _dead_pid()
    lock = _lock(store, host=socket.gethostname(), pid=dead)              # a sweep killed with -9
    rc, err = _run(capsys, "--seeds", "0")
    assert rc == 0 and trainer.calls == [0]
    assert "removed 1 stale job claim(s) left by killed sweeps" in err and f"pid {dead} is dead" in err
    assert not lock.exists()                                              # released when the job ended


def test_a_stale_claim_found_when_claiming_is_taken_over(store, capsys):
    dead = _dead_pid()
    lock = _lock(store, host=socket.gethostname(), pid=dead)
    held = claims.claim(lock.with_name(lock.name[:-len(".lock")]), "job")
    assert isinstance(held, claims.Claim) and "is dead" in held.took_over
    assert "took over the stale claim of job" in capsys.readouterr().err
    held.release()
    assert not lock.exists()


def test_stale_claims_are_removed_at_the_start_and_live_ones_kept_and_shown(store, capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = _lock(store, 0, host=socket.gethostname(), pid=_dead_pid())
        alive = _lock(store, 1, host=socket.gethostname(), pid=sleeper.pid)
        removed = claims.remove_stale(store)
        assert [p for p, _ in removed] == [stale] and not stale.exists() and alive.exists()
        assert main(["plan", RECIPE, "--profile", "tiny", "--seeds", "0,1", "--device", "cpu"]) == 0
        out = capsys.readouterr().out
    finally:
        sleeper.kill()
        sleeper.wait()
    lines = {ln.split()[1]: ln for ln in out.splitlines() if ln.startswith(RECIPE)}
    assert "to run" in lines["0"] and f"running (host {socket.gethostname()} pid {sleeper.pid}" in lines["1"]


def test_a_claim_not_refreshed_for_longer_than_the_limit_is_taken_over(store, trainer, capsys):
    lock = _lock(store, host="node-b", pid=1)                            # another host: only its age tells
    day_ago = time.time() - 25 * 3600
    os.utime(lock, (day_ago, day_ago))
    rc, err = _run(capsys, "--seeds", "0")
    assert rc == 0 and trainer.calls == [0] and "not refreshed for 25.0 h (limit 24.0 h)" in err


@pytest.mark.parametrize("where", ["this host", "another host"])
def test_a_live_claim_is_respected(store, trainer, capsys, where):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = socket.gethostname() if where == "this host" else "node-b"
        lock = _lock(store, host=host, pid=sleeper.pid)
        before = lock.read_text()
        rc, err = _run(capsys, "--seeds", "0,1")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert rc == 0 and trainer.calls == [1]                               # seed 0 is the other sweep's
    assert f"1 job(s) run by another sweep: {RECIPE} seed 0 (claimed by host {host} pid {sleeper.pid}" in err
    assert lock.read_text() == before and find_run("tiny", RECIPE, _recipe().fingerprint, 0, store) is None


def test_a_claim_that_cannot_be_written_stops_the_sweep_with_exit_3(store, trainer, capsys, monkeypatch):
    real = os.open

    def read_only(path, flags, *a, **k):   # a results folder mounted read-only
        if str(path).endswith(".lock") and flags & os.O_CREAT:
            raise OSError(30, "Read-only file system", str(path))
        return real(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", read_only)
    rc, err = _run(capsys, "--seeds", "0")
    assert rc == 3 and "cannot create the job claim" in err and "seed0.json.lock (Read-only file system)" in err
    assert trainer.calls == [] and not list(store.rglob("seed0.json*"))


def test_heartbeat_refreshes_held_claims_and_release_removes_only_ours(tmp_path):
    record = tmp_path / "seed0.json"
    held = claims.claim(record, "job")
    assert isinstance(held, claims.Claim) and claims.claim(record, "job").pid == os.getpid()   # held: the owner
    old = time.time() - 3600
    os.utime(held.lock, (old, old))
    claims.heartbeat()
    assert time.time() - held.lock.stat().st_mtime < 60
    held.lock.write_text(json.dumps(asdict(claims.Owner.me("usurper"))))  # taken over meanwhile
    held.release()
    assert held.lock.exists()


CHILD_SWEEP = """
import os, sys, time
from pathlib import Path
import mtlrepro.train as T
real, log, barrier = T.train_run, Path(sys.argv[1]), Path(sys.argv[2])
def counted(recipe, seed, *a, **k):   # counts real trainings; the first waits until both sweeps train
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {recipe.id} {seed}\\n")
    (barrier / str(os.getpid())).touch()
    deadline = time.time() + 30
    while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.05)
    return real(recipe, seed, *a, **k)
T.train_run = counted
from mtlrepro.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


def test_two_concurrent_sweeps_of_four_jobs_run_each_job_exactly_once(tmp_path, tiny_env):
    """Two ``mtlrepro run`` processes of the same four jobs on one store, with the real trainer."""
    import torch
    from mtlrepro.problems import build_problem
    build_problem(_recipe(), "tiny", None, torch.device("cpu"))          # the data cache, built once beforehand
    root, log, barrier = tmp_path / "results", tmp_path / "trainings.log", tmp_path / "barrier"
    barrier.mkdir()
    env = dict(os.environ, MTLREPRO_RESULTS=str(root), MTLREPRO_CACHE=str(tiny_env), MTLREPRO_THREADS="1",
               PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-c", CHILD_SWEEP, str(log), str(barrier), *RUN, "--seeds", "0,1,2,3"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    for p, err in zip(procs, errs):
        assert p.returncode == 0 and "Traceback" not in err, err[-2000:]
    trainings = [line.split() for line in log.read_text().splitlines()]
    assert Counter(int(seed) for _, _, seed in trainings) == {0: 1, 1: 1, 2: 1, 3: 1}
    by_pid = Counter(pid for pid, _, _ in trainings)
    assert sorted(by_pid) == sorted(str(p.pid) for p in procs)           # both sweeps trained
    for p, err in zip(procs, errs):
        assert "4 jobs to run, 0 already stored" in err
        assert f"{4 - by_pid[str(p.pid)]} job(s) run by another sweep" in err
    assert sorted(r.seed for r in iter_runs("tiny", root)) == [0, 1, 2, 3]
    assert not list(root.rglob("*.lock")) and not list(root.rglob("*.tmp"))
