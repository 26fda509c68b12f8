"""Running jobs: one job claimed and run, the sweep's tally, the in-process launcher and the
launcher registry (the parallel launchers are in :mod:`mtlrepro.launch_parallel`; which jobs are
missing is :mod:`mtlrepro.jobs`).

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
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from .jobs import Job, plan_jobs, record_path, resolve_recipes, retry
from .registry import Registry
from .store import RunRecord


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


def stored_meanwhile(job: Job, record: Path) -> str | None:
    """Why ``job`` needs no run any more: a record appeared at ``record`` since the plan (or,
    for a retry, another record than the failed one it reruns). None: run it."""
    from .record_check import check_record
    try:
        mtime = record.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    if job.retry_of is not None and mtime == job.retry_of:
        return None
    rec = check_record(record, job.recipe.fingerprint, job.seed)
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


# imported here, after run_claimed and Tally exist (the parallel launchers use them)
from .launch_parallel import (WORKER_BAD_DATA, WORKER_ELSEWHERE, WORKER_FAILED, WORKER_FINISHED,  # noqa: E402
                              WORKER_MACHINE_FAULT, LocalMultiLauncher, SubmititLauncher)

LAUNCHERS: Registry = Registry("launcher")
LAUNCHERS.register("inprocess", InProcessLauncher)
LAUNCHERS.register("local-multi", LocalMultiLauncher)
LAUNCHERS.register("slurm", SubmititLauncher)

__all__ = ["Job", "plan_jobs", "record_path", "resolve_recipes", "retry", "RunRecord", "run_job", "stored_meanwhile",
           "Tally", "run_claimed", "InProcessLauncher", "LocalMultiLauncher", "SubmititLauncher", "LAUNCHERS",
           "make_launcher", "WORKER_BAD_DATA", "WORKER_ELSEWHERE", "WORKER_FAILED", "WORKER_FINISHED",
           "WORKER_MACHINE_FAULT"]


def make_launcher(name: str, device: str | None, progress: bool, workers: int | None = None):
    cls = LAUNCHERS.get(name)
    if cls is InProcessLauncher:
        return InProcessLauncher(device, progress)
    if cls is LocalMultiLauncher:
        return LocalMultiLauncher(workers, [device] if device else None)
    return cls()
