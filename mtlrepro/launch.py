"""Jobs and launchers: which (recipe, seed) runs are missing, and running them.

A job is finished when its record is in the store, so launchers only ever run what is missing
and a sweep can be interrupted and restarted at any point. Several sweeps may share one store at
once (two terminals, several cluster nodes): every launcher runs a job through
:func:`run_claimed`, which claims it (:mod:`mtlrepro.claims`, a lock file next to its record),
looks again whether a record appeared since the plan, and skips a job another sweep holds or has
stored, so no job runs twice. A launcher's :class:`Tally` says what ran, failed, crashed, and what
another sweep did; ``mtlrepro run`` exits 1 when a job failed or crashed.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from .pipeline import Waiting, init_waiting, resolve_upstream
from .recipe import Recipe, get_recipe, recipes_for_table
from .profiles import apply_profile
from .registry import Registry, UnknownKeyError
from .store import RunRecord, find_run, weights_path


@dataclass(frozen=True)
class Job:
    recipe: Recipe          # with the profile applied
    seed: int
    profile: str
    retry_of: int | None = None   # a rerun of the failed record with this mtime (ns): it is replaced

    @property
    def name(self) -> str:
        return f"{self.recipe.id} seed {self.seed}"


def resolve_recipes(target: str) -> list[Recipe]:
    """A table id (all its recipes), a bare table name, or one recipe id."""
    from .recipe import recipe_sets
    from .tables import get_table, table_registry

    if target in recipe_sets() and target not in table_registry():  # a figure sweep
        rs = recipe_sets()[target]
        if (rs.figure or {}).get("kind") == "tradeoff":   # a figure of tables' rows (GatedMTL Figure 2)
            return [r for p in dict.fromkeys(p["table"] for p in rs.figure["panels"]) for r in resolve_recipes(p)]
        return list(rs.recipes)
    if target in table_registry() or "/" not in target or target.count("/") == 1:
        try:
            table = get_table(target)
        except UnknownKeyError:
            table = None
        if table is not None:
            recipes = recipes_for_table(table.id)
            if not recipes:
                raise UnknownKeyError(f"recipe set (table {table.id} has no recipes yet)", table.id,
                                      [r for r in _tables_with_recipes()])
            ref = getattr(recipe_sets().get(table.id), "delta_reference", None)
            if ref:   # the row another table's Δ is measured against runs with it (CoNAL Tables 4, 7)
                recipes = recipes + [get_recipe(f"{ref['table']}/{ref['row']}")]
            return recipes
    return [get_recipe(target)]


def _tables_with_recipes() -> list[str]:
    from .recipe import recipe_sets
    return list(recipe_sets())


def plan_jobs(recipes: list[Recipe], profile: str, seeds: list[int] | None = None,
              results_root: Path | None = None, device: str | None = None
              ) -> tuple[list[Job], list[tuple[Job, RunRecord]], list[Recipe]]:
    """(jobs to run, jobs already stored with their records, recipes not run: not implemented, or
    ``status`` "waiting for <upstream> ..." when their upstream run is not stored yet).

    A job is stored when a record of its fingerprint and seed exists for the device kind it would
    run on (``device``; the default device when None). Recipes of several tables that resolve to
    one configuration are one job: it is planned once.
    """
    from .store import device_kind
    from .train.steps import check_update_weighting
    from .train.trainer import pick_device

    kind = device_kind(pick_device(device))
    todo, done, skipped = [], [], []
    seen: set[tuple[str, int]] = set()
    for r in recipes:
        if r.status != "ready":
            skipped.append(r)
            continue
        check_update_weighting(r.update, r.weighting)   # an unsupported pair stops the sweep before any run
        eff = apply_profile(r, profile)
        try:
            eff = resolve_upstream(eff, profile, results_root)
        except Waiting as w:   # its upstream (a search) has not run: a later wave runs it
            skipped.append(dataclasses.replace(eff, status=f"waiting for {w.upstream.id} seed {w.seed} ({w.why})"))
            continue
        waiting = []
        for s in (seeds if seeds is not None else list(eff.seeds)):
            if (eff.fingerprint, s) in seen:
                continue
            why = init_waiting(eff, s, profile, kind, results_root)
            if why is not None:   # its initialisation (e.g. GatedMTL's STL weights) is not stored: a later wave
                waiting.append(why)
                source = _init_source_job(eff, s, profile, results_root, kind)
                if source is not None and (source.recipe.fingerprint, s) not in seen:
                    seen.add((source.recipe.fingerprint, s))
                    todo.append(source)
                continue
            seen.add((eff.fingerprint, s))
            job = Job(eff, s, profile)
            rec = find_run(profile, eff.id, eff.fingerprint, s, results_root, device_kind=kind)
            if rec is not None and eff.keep_weights and rec.status == "finished" and \
                    not weights_path(profile, eff.fingerprint, s, kind, results_root).exists():
                rec = None        # stored without the weights another recipe starts from: run again to keep them
            (done.append((job, rec)) if rec is not None else todo.append(job))
        if waiting:
            skipped.append(dataclasses.replace(eff, status=waiting[0] + (f" (and {len(waiting) - 1} more seeds)"
                                                                         if len(waiting) > 1 else "")))
    return todo, done, skipped


def _init_source_job(recipe: Recipe, seed: int, profile: str, results_root: Path | None, kind: str) -> Job | None:
    """The job that stores the weights ``recipe`` starts from, when they are missing and that run is
    not failed (a failed source leaves its dependants waiting, reported)."""
    from .pipeline import init_recipe

    src = init_recipe(recipe)
    if src is None or src.status != "ready":
        return None
    src = resolve_upstream(apply_profile(dataclasses.replace(src, keep_weights=True), profile), profile, results_root)
    rec = find_run(profile, src.id, src.fingerprint, seed, results_root, device_kind=kind)
    if rec is not None and rec.status != "finished":
        return None
    return Job(src, seed, profile)


def run_job(job: Job, data_root: str | None, device: str | None, results_root: Path | None,
            progress: bool = True) -> RunRecord | None:
    """Run one job; an exception of the run becomes a failed record so the sweep goes on. Bad data
    (``DataError``) and faults of the machine (``EnvironmentFault``: full disk, read-only store,
    unreadable checkpoint) are not failures of the run: they stop the sweep, nothing is stored, and
    the job stays runnable."""
    from .train import EnvironmentFault, RunFailed, train_run

    try:
        return train_run(job.recipe, job.seed, job.profile, data_root, device, results_root, progress)
    except RunFailed as e:
        print(f"  FAILED {job.name}: {e}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - the sweep must go on; the record keeps the reason
        from .data.errors import DataError
        if isinstance(e, (DataError, EnvironmentFault)):
            raise
        from .store import environment
        from .train.trainer import pick_device
        rec = RunRecord(recipe_id=job.recipe.id, fingerprint=job.recipe.fingerprint, seed=job.seed,
                        profile=job.profile, status="failed", recipe=job.recipe.to_dict(), data={},
                        environment=environment(pick_device(device)),
                        failure=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
        from .train.trainer import _save_record
        _save_record(rec, results_root)
        print(f"  FAILED {job.name}: {type(e).__name__}: {e}", file=sys.stderr)
    return None


def record_path(job: Job, device: str | None, results_root: Path | None) -> Path:
    """Where ``job``'s record goes when it runs on ``device`` (its claim is next to it)."""
    from .store import device_kind, run_path
    from .train.trainer import pick_device
    return run_path(job.profile, job.recipe.fingerprint, job.seed, device_kind(pick_device(device)), results_root)


def retry(job: Job, rec: RunRecord, results_root: Path | None = None) -> Job:
    """``job`` as a rerun of its failed record ``rec`` (only that record is replaced: a sweep that
    finds another record there, a concurrent retry's, leaves the job alone)."""
    from .store import run_path
    path = run_path(job.profile, job.recipe.fingerprint, job.seed, rec.environment.get("device_kind") or "unknown",
                    results_root)
    try:
        return dataclasses.replace(job, retry_of=path.stat().st_mtime_ns)
    except OSError:
        return job


def stored_meanwhile(job: Job, record: Path) -> str | None:
    """Why ``job`` needs no run any more: a record appeared at ``record`` since the plan (or,
    for a retry, another record than the failed one it reruns). None: run it."""
    from .store import _check
    try:
        mtime = record.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    if job.retry_of is not None and mtime == job.retry_of:
        return None
    rec = _check(record, job.recipe.fingerprint, job.seed)
    return None if rec is None else f"stored by another sweep meanwhile ({rec.status})"


@dataclass
class Tally:
    """What a launcher did: jobs run, failed (a failed record), crashed (a worker killed or broken:
    no record, the job stays runnable), and left to another sweep (job name -> why)."""
    ran: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    crashed: list[str] = dataclasses.field(default_factory=list)
    elsewhere: dict[str, str] = dataclasses.field(default_factory=dict)

    def add(self, other: "Tally | None") -> "Tally":
        if isinstance(other, Tally):
            self.ran += other.ran
            self.failed += other.failed
            self.crashed += other.crashed
            self.elsewhere.update(other.elsewhere)
        return self

    def note(self, name: str, outcome: str, detail: str = "") -> None:
        """Count one job's :func:`run_claimed` outcome."""
        if outcome == "elsewhere":
            self.elsewhere[name] = detail
        elif outcome == "crashed":
            self.crashed.append(f"{name} ({detail})")
        else:
            self.ran.append(name)
            if outcome == "failed":
                self.failed.append(name)

    def summary(self) -> list[str]:
        """The sweep's closing lines (empty when every job ran and finished)."""
        lines = []
        still = {n: w for n, w in self.elsewhere.items() if n not in self.ran}
        if still:
            lines.append(f"{len(still)} job(s) run by another sweep: " + "; ".join(f"{n} ({w})" for n, w in
                                                                                  sorted(still.items())[:5])
                         + (" ..." if len(still) > 5 else ""))
        if self.failed:
            lines.append(f"{len(self.failed)} job(s) failed: their records say why (mtlrepro diff shows them; "
                         "--retry-failed reruns them)")
        if self.crashed:
            lines.append(f"{len(self.crashed)} job(s) crashed or were killed, nothing stored, they stay runnable: "
                         + ", ".join(self.crashed[:5]) + (" ..." if len(self.crashed) > 5 else ""))
        return lines

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.crashed else 0


def run_claimed(job: Job, data_root: str | None, device: str | None, results_root: Path | None,
                progress: bool = True) -> tuple[str, str]:
    """Claim ``job``, run it unless another sweep holds or stored it, release the claim.

    Returns (outcome, detail): ("finished" | "failed", "") or ("elsewhere", who or why)."""
    from . import claims

    record = record_path(job, device, results_root)
    held = claims.claim(record, job.name)
    if not isinstance(held, claims.Claim):
        return "elsewhere", f"claimed by {held.describe()}" if held else "claimed by another sweep"
    with held:
        why = stored_meanwhile(job, record)
        if why is not None:
            return "elsewhere", why
        rec = run_job(job, data_root, device, results_root, progress)
    return ("finished" if rec is not None else "failed"), ""


class InProcessLauncher:
    """Runs jobs one after the other in this process (CPU or the one visible GPU)."""

    def __init__(self, device: str | None = None, progress: bool = True):
        self.device, self.progress = device, progress

    def run(self, jobs: list[Job], data_root: str | None, results_root: Path | None = None) -> Tally:
        tally = Tally()
        for i, job in enumerate(jobs, 1):
            print(f"[{i}/{len(jobs)}] {job.name}", file=sys.stderr)
            outcome, detail = run_claimed(job, data_root, self.device, results_root, self.progress)
            if outcome == "elsewhere":
                print(f"  skipped {job.name}: {detail}", file=sys.stderr)
            tally.note(job.name, outcome, detail)
        return tally


#: exit codes of ``python -m mtlrepro.worker`` (:func:`mtlrepro.worker.main`)
WORKER_FINISHED, WORKER_FAILED, WORKER_BAD_DATA, WORKER_MACHINE_FAULT, WORKER_ELSEWHERE = 0, 1, 2, 3, 4


class LocalMultiLauncher:
    """Runs several jobs at once on this machine, one process per job.

    Each worker is ``python -m mtlrepro.worker JOB.json`` (the exact recipe, profile overrides
    included) pinned to one device (a GPU each, round-robin over ``devices``; on a CPU-only machine
    ``workers`` processes share the cores), so records are exactly those of the in-process launcher
    and a crash takes down one job only. The worker claims its job (:func:`run_claimed`); a worker
    that crashes or is killed leaves no record and its claim is removed here, so the job stays
    runnable, and the sweep's :class:`Tally` counts it as crashed (``mtlrepro run`` exits 1).
    """

    worker_command: list[str] = [sys.executable, "-m", "mtlrepro.worker"]   # + the job file

    def __init__(self, workers: int | None = None, devices: list[str] | None = None, progress: bool = False,
                 threads_per_worker: int | None = None):
        import torch
        if devices is None:
            n_gpu = torch.cuda.device_count()
            devices = [f"cuda:{i}" for i in range(n_gpu)] if n_gpu else ["cpu"]
        self.devices = devices
        self.workers = workers or (len(devices) if devices != ["cpu"] else 2)
        if threads_per_worker is None and devices == ["cpu"]:
            # CPU workers share the cores: one OpenMP pool each of the full size oversubscribes them
            threads_per_worker = max(1, (os.cpu_count() or 1) // self.workers)
        self.threads = threads_per_worker

    def run(self, jobs: list[Job], data_root: str | None, results_root: Path | None = None) -> Tally:
        """Runs the jobs; bad data (a worker's exit 2) or a machine fault (3) in any worker stops the
        sweep afterwards (``DataError`` / ``EnvironmentFault``); other exits are in the tally."""
        import json
        import queue
        import subprocess
        import tempfile
        from concurrent.futures import ThreadPoolExecutor

        from . import claims

        slots: "queue.Queue[str]" = queue.Queue()
        for i in range(self.workers):
            slots.put(self.devices[i % len(self.devices)])
        env = dict(os.environ)
        if results_root is not None:
            env["MTLREPRO_RESULTS"] = str(results_root)
        if self.threads:
            env["MTLREPRO_THREADS"] = str(self.threads)

        def one(job: Job) -> tuple[int, str]:
            device = slots.get()
            try:
                record = record_path(job, device, results_root)
                seen = claims.peek(record)     # no process started for a job another sweep holds
                if seen is not None and seen[1] is None:
                    return WORKER_ELSEWHERE, f"claimed by {seen[0].describe()}" if seen[0] else "claimed"
                why = stored_meanwhile(job, record)
                if why is not None:
                    return WORKER_ELSEWHERE, why
                spec = {"recipe": job.recipe.to_dict(), "seed": job.seed, "profile": job.profile,
                        "device": device, "data_root": str(data_root) if data_root else None,
                        "results_root": str(results_root) if results_root else None, "retry_of": job.retry_of}
                fd, path = tempfile.mkstemp(suffix=".json", prefix="mtlrepro-job-")
                with os.fdopen(fd, "w") as f:
                    json.dump(spec, f)
                print(f"  start {job.name} on {device}", file=sys.stderr)
                try:
                    proc = subprocess.Popen([*self.worker_command, path], env=env, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, text=True)
                    _, err = proc.communicate()
                finally:
                    Path(path).unlink(missing_ok=True)
                rc = proc.returncode
                lines = err.strip().splitlines()
                if rc == WORKER_ELSEWHERE:
                    return rc, lines[-1].split(": ", 1)[-1] if lines else "another sweep"
                how = f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"
                print(f"  done  {job.name} ({how})", file=sys.stderr)
                if rc != 0:  # a failed run has its record; a crashed worker only has this
                    print(f"  {job.name} worker stderr (last lines):\n" + "\n".join(lines[-15:]), file=sys.stderr)
                if rc not in (WORKER_FINISHED, WORKER_FAILED, WORKER_BAD_DATA, WORKER_MACHINE_FAULT):
                    if claims.release_dead(record, proc.pid):
                        print(f"  {job.name}: released the claim of its dead worker; the job stays runnable",
                              file=sys.stderr)
                return rc, how
            finally:
                slots.put(device)

        with ThreadPoolExecutor(self.workers) as pool:
            results = list(pool.map(one, jobs))
        tally = Tally()
        outcomes = {WORKER_FINISHED: "finished", WORKER_FAILED: "failed", WORKER_ELSEWHERE: "elsewhere"}
        for job, (rc, detail) in zip(jobs, results):
            if rc == WORKER_ELSEWHERE:
                print(f"  skipped {job.name}: {detail}", file=sys.stderr)
            if rc not in (WORKER_BAD_DATA, WORKER_MACHINE_FAULT):
                tally.note(job.name, outcomes.get(rc, "crashed"), detail)
        codes = [rc for rc, _ in results]
        from .train import EnvironmentFault
        if WORKER_MACHINE_FAULT in codes:
            raise EnvironmentFault(f"{codes.count(3)} worker(s) stopped on a fault of the machine (disk full, "
                                   "read-only folder, unreadable checkpoint; see their stderr above); their jobs "
                                   "stay runnable")
        if WORKER_BAD_DATA in codes:
            from .data.errors import DataError
            raise DataError(f"{codes.count(2)} worker(s) stopped on bad or missing data (see their stderr above)")
        return tally


class SubmititLauncher:
    """Submits each job to Slurm through submitit (``pip install 'mtlrepro[cluster]'``).

    Why submitit: it pickles a Python call into a Slurm job and back, requeues on preemption and
    needs no cluster daemon; the jobs write records into the shared ``results/`` directory, so a
    cluster sweep merges with local runs by construction. ``cluster="debug"`` runs in-process (tests).
    """

    def __init__(self, folder: str = "results/submitit", cluster: str | None = None, **slurm):
        self.folder, self.cluster = folder, cluster
        self.slurm = {"timeout_min": 24 * 60, "gpus_per_node": 1, "tasks_per_node": 1, **slurm}

    def run(self, jobs: list[Job], data_root: str | None, results_root: Path | None = None) -> Tally:
        """Submits the jobs (each claims its own on its node, :func:`run_claimed`); the tally is
        filled only on the debug cluster, where the jobs run here."""
        try:
            import submitit
        except ImportError:
            raise SystemExit("the slurm launcher needs submitit: pip install 'mtlrepro[cluster]'") from None
        ex = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        ex.update_parameters(**self.slurm)
        handles = [ex.submit(run_claimed, job, data_root, None, results_root, False) for job in jobs]
        print(f"submitted {len(handles)} jobs to {ex.cluster}; records appear under results/runs/",
              file=sys.stderr)
        tally = Tally()
        if self.cluster == "debug":
            for job, h in zip(jobs, handles):
                tally.note(job.name, *h.result())
        return tally


LAUNCHERS: Registry = Registry("launcher")
LAUNCHERS.register("inprocess", InProcessLauncher)
LAUNCHERS.register("local-multi", LocalMultiLauncher)
LAUNCHERS.register("slurm", SubmititLauncher)


def make_launcher(name: str, device: str | None, progress: bool, workers: int | None = None):
    cls = LAUNCHERS.get(name)
    if cls is InProcessLauncher:
        return InProcessLauncher(device, progress)
    if cls is LocalMultiLauncher:
        return LocalMultiLauncher(workers, [device] if device else None)
    return cls()
