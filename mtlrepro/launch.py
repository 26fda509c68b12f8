"""Jobs and launchers: which (recipe, seed) runs are missing, and running them.

A job is finished when its record is in the store, so launchers only ever run what is missing
and a sweep can be interrupted and restarted at any point.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from .pipeline import Waiting, resolve_upstream
from .recipe import Recipe, apply_profile, get_recipe, recipes_for_table
from .registry import Registry, UnknownKeyError
from .store import RunRecord, find_run, save_run


@dataclass(frozen=True)
class Job:
    recipe: Recipe          # with the profile applied
    seed: int
    profile: str

    @property
    def name(self) -> str:
        return f"{self.recipe.id} seed {self.seed}"


def resolve_recipes(target: str) -> list[Recipe]:
    """A table id (all its recipes), a bare table name, or one recipe id."""
    from .recipe import recipe_sets
    from .tables import get_table, table_registry

    if target in recipe_sets() and target not in table_registry():  # a figure sweep
        return list(recipe_sets()[target].recipes)
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
        for s in (seeds if seeds is not None else list(eff.seeds)):
            if (eff.fingerprint, s) in seen:
                continue
            seen.add((eff.fingerprint, s))
            job = Job(eff, s, profile)
            rec = find_run(profile, eff.id, eff.fingerprint, s, results_root, device_kind=kind)
            (done.append((job, rec)) if rec is not None else todo.append(job))
    return todo, done, skipped


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
        save_run(rec, results_root)
        print(f"  FAILED {job.name}: {type(e).__name__}: {e}", file=sys.stderr)
    return None


class InProcessLauncher:
    """Runs jobs one after the other in this process (CPU or the one visible GPU)."""

    def __init__(self, device: str | None = None, progress: bool = True):
        self.device, self.progress = device, progress

    def run(self, jobs: list[Job], data_root: str | None, results_root: Path | None = None) -> int:
        """Returns how many jobs failed."""
        failed = 0
        for i, job in enumerate(jobs, 1):
            print(f"[{i}/{len(jobs)}] {job.name}", file=sys.stderr)
            failed += run_job(job, data_root, self.device, results_root, self.progress) is None
        return failed


class LocalMultiLauncher:
    """Runs several jobs at once on this machine, one process per job.

    Each worker is ``python -m mtlrepro.worker JOB.json`` (the exact recipe, profile overrides
    included) pinned to one device (a GPU each, round-robin over ``devices``; on a CPU-only machine
    ``workers`` processes share the cores), so records are exactly those of the in-process launcher
    and a crash takes down one job only.
    """

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

    def run(self, jobs: list[Job], data_root: str | None, results_root: Path | None = None) -> int:
        """Returns how many jobs failed (a worker's exit code, :func:`mtlrepro.worker.main`: 1 a
        failed run, 2 bad data, 3 a fault of the machine, other: a crashed or killed worker, whose
        job stays runnable). Bad data or a machine fault in any worker stops the sweep afterwards."""
        import json
        import os
        import queue
        import subprocess
        import tempfile
        from concurrent.futures import ThreadPoolExecutor

        slots: "queue.Queue[str]" = queue.Queue()
        for i in range(self.workers):
            slots.put(self.devices[i % len(self.devices)])
        env = dict(os.environ)
        if results_root is not None:
            env["MTLREPRO_RESULTS"] = str(results_root)
        if self.threads:
            env["MTLREPRO_THREADS"] = str(self.threads)

        def one(job: Job) -> int:
            device = slots.get()
            try:
                spec = {"recipe": job.recipe.to_dict(), "seed": job.seed, "profile": job.profile,
                        "device": device, "data_root": str(data_root) if data_root else None,
                        "results_root": str(results_root) if results_root else None}
                fd, path = tempfile.mkstemp(suffix=".json", prefix="mtlrepro-job-")
                with os.fdopen(fd, "w") as f:
                    json.dump(spec, f)
                cmd = [sys.executable, "-m", "mtlrepro.worker", path]
                print(f"  start {job.name} on {device}", file=sys.stderr)
                proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True)
                rc = proc.returncode
                print(f"  done  {job.name} (exit {rc})", file=sys.stderr)
                if rc != 0:  # a failed run has its record; a crashed worker only has this
                    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
                    print(f"  {job.name} worker stderr (last lines):\n{tail}", file=sys.stderr)
                Path(path).unlink(missing_ok=True)
                return rc
            finally:
                slots.put(device)

        with ThreadPoolExecutor(self.workers) as pool:
            codes = list(pool.map(one, jobs))
        from .train import EnvironmentFault
        if 3 in codes:
            raise EnvironmentFault(f"{codes.count(3)} worker(s) stopped on a fault of the machine (disk full, "
                                   "read-only folder, unreadable checkpoint; see their stderr above); their jobs "
                                   "stay runnable")
        if 2 in codes:
            from .data.errors import DataError
            raise DataError(f"{codes.count(2)} worker(s) stopped on bad or missing data (see their stderr above)")
        return sum(c != 0 for c in codes)


class SubmititLauncher:
    """Submits each job to Slurm through submitit (``pip install 'mtlrepro[cluster]'``).

    Why submitit: it pickles a Python call into a Slurm job and back, requeues on preemption and
    needs no cluster daemon; the jobs write records into the shared ``results/`` directory, so a
    cluster sweep merges with local runs by construction. ``cluster="debug"`` runs in-process (tests).
    """

    def __init__(self, folder: str = "results/submitit", cluster: str | None = None, **slurm):
        self.folder, self.cluster = folder, cluster
        self.slurm = {"timeout_min": 24 * 60, "gpus_per_node": 1, "tasks_per_node": 1, **slurm}

    def run(self, jobs: list[Job], data_root: str | None, results_root: Path | None = None) -> None:
        try:
            import submitit
        except ImportError:
            raise SystemExit("the slurm launcher needs submitit: pip install 'mtlrepro[cluster]'") from None
        ex = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        ex.update_parameters(**self.slurm)
        handles = [ex.submit(run_job, job, data_root, None, results_root, False) for job in jobs]
        print(f"submitted {len(handles)} jobs to {ex.cluster}; records appear under results/runs/",
              file=sys.stderr)
        if self.cluster == "debug":
            for h in handles:
                h.result()


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
