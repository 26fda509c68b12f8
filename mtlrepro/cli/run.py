"""``mtlrepro run TABLE_OR_RECIPE``: run the (recipe, seed) jobs not yet in the store."""
from __future__ import annotations

import argparse
import sys

from .common import (add_allow_subset_argument, add_run_arguments, add_skip_data_check_argument, apply_allow_subset,
                     parse_seeds)

NAME = "run"
HELP = "train and evaluate the missing runs of a table or recipe (resumable)"
EPILOG = ("examples:\n  mtlrepro run etr_nlp/table4 --profile tiny\n"
          "  mtlrepro run etr_nlp/table4 --data-root /data --seeds 0,1,2\n"
          "  mtlrepro run etr_nlp/table4/max_roaming_g8 --device cuda:1\n\n"
          "Finished runs are kept in results/runs/ and never re-run; an interrupted run resumes from\n"
          "its last finished epoch. Failed runs are recorded with the reason; --retry-failed reruns them.\n"
          "Several sweeps may share one store at once: each job is claimed (a .lock next to its record)\n"
          "and run by one sweep only. Exit 1 when a job failed or its worker was killed.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="table id (all rows) or recipe id")
    add_run_arguments(p)
    add_allow_subset_argument(p)
    p.add_argument("--retry-failed", action="store_true", help="rerun runs stored as failed")
    add_skip_data_check_argument(p)
    p.add_argument("--launcher", default="inprocess", help="inprocess | local-multi | slurm")
    p.add_argument("--workers", type=int, default=None, help="local-multi: concurrent jobs (default: GPUs, or 2 on CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every job of the target is finished (or is another sweep's to run); 1 when one
    failed (in this sweep or stored as failed) or its worker crashed or was killed (named at the
    end); 2 bad input, 3 a fault of the machine (:mod:`mtlrepro.cli.main`)."""
    apply_allow_subset(args)
    from ..launch import Tally, make_launcher, plan_jobs, resolve_recipes, retry
    from ..data_check import checked_plan
    from ..pipeline import run_pipeline
    from ..store import tidy

    recipes = resolve_recipes(args.target)
    launcher = make_launcher(args.launcher, args.device, not args.no_progress, args.workers)
    retried: set[str] = set()
    tidy()

    stored = checked_plan(lambda: plan_jobs(recipes, args.profile, parse_seeds(args.seeds), device=args.device),
                          args.profile, args.data_root, args.device, enabled=not args.skip_data_check)

    def plan():
        todo, done, skipped = stored()
        if args.retry_failed:   # each failed run once
            again = [retry(j, rec) for j, rec in done if rec.status == "failed" and j.name not in retried]
            retried.update(j.name for j in again)
            todo += again
        return todo, done, skipped

    todo, done, skipped = plan()
    print(f"{len(todo)} jobs to run, {len(done)} already stored (profile {args.profile})", file=sys.stderr)
    tally = Tally()
    todo, done, skipped = run_pipeline((todo, done, skipped), plan,
                                       lambda jobs: tally.add(launcher.run(jobs, args.data_root)))
    for r in skipped:
        print(f"not run ({r.status.replace('_', ' ')}): {r.id}", file=sys.stderr)
    for line in tally.summary():
        print(line, file=sys.stderr)
    stored_failed = sorted({j.name for j, rec in done if rec.status == "failed"} - set(tally.failed))
    if stored_failed:   # failed in an earlier sweep: the table is not reproduced either
        print(f"{len(stored_failed)} job(s) stored as failed by an earlier sweep: {', '.join(stored_failed[:5])}"
              f"{' ...' if len(stored_failed) > 5 else ''} (--retry-failed reruns them)", file=sys.stderr)
    return 1 if stored_failed else tally.exit_code
