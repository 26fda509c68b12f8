"""Launchers that run several jobs at once: worker processes on this machine, or Slurm via submitit.

Each job still goes through :func:`mtlrepro.launch.run_claimed` (in the worker or on the node), so
concurrent sweeps share the work and a crash takes down one job only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import os
import sys
from pathlib import Path

from .jobs import Job, record_path

if TYPE_CHECKING:
    from .launch import Tally


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

    def run(self, jobs: list[Job], data_root: str | None, results_root: Path | None = None) -> "Tally":
        from .launch import Tally, stored_meanwhile   # launch imports this module
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

    def run(self, jobs: list[Job], data_root: str | None, results_root: Path | None = None) -> "Tally":
        """Submits the jobs (each claims its own on its node, :func:`run_claimed`); the tally is
        filled only on the debug cluster, where the jobs run here."""
        from .launch import Tally, run_claimed   # launch imports this module
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
