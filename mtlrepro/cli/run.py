"""``mtlrepro run TABLE_OR_RECIPE``: run the (recipe, seed) jobs not yet in the store."""
from __future__ import annotations

import argparse
import sys

from .common import add_run_arguments, parse_seeds

NAME = "run"
HELP = "train and evaluate the missing runs of a table or recipe (resumable)"
EPILOG = ("examples:\n  mtlrepro run etr_nlp/table4 --profile tiny\n"
          "  mtlrepro run etr_nlp/table4 --data-root /data --seeds 0,1,2\n"
          "  mtlrepro run etr_nlp/table4/max_roaming_g8 --device cuda:1\n\n"
          "Finished runs are kept in results/runs/ and never re-run; an interrupted run resumes from\n"
          "its last finished epoch. Failed runs are recorded with the reason; --retry-failed reruns them.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="table id (all rows) or recipe id")
    add_run_arguments(p)
    p.add_argument("--retry-failed", action="store_true", help="rerun runs stored as failed")
    p.add_argument("--launcher", default="inprocess", help="inprocess | local-multi | slurm")
    p.add_argument("--workers", type=int, default=None, help="local-multi: concurrent jobs (default: GPUs, or 2 on CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..launch import make_launcher, plan_jobs, resolve_recipes
    from ..pipeline import run_pipeline

    recipes = resolve_recipes(args.target)
    launcher = make_launcher(args.launcher, args.device, not args.no_progress, args.workers)
    retried: set[str] = set()

    def plan():
        todo, done, skipped = plan_jobs(recipes, args.profile, parse_seeds(args.seeds), device=args.device)
        if args.retry_failed:   # each failed run once
            again = [j for j, rec in done if rec.status == "failed" and j.name not in retried]
            retried.update(j.name for j in again)
            todo += again
        return todo, done, skipped

    todo, done, skipped = plan()
    print(f"{len(todo)} jobs to run, {len(done)} already stored (profile {args.profile})", file=sys.stderr)
    failed: list[int] = []
    todo, done, skipped = run_pipeline((todo, done, skipped), plan,
                                       lambda jobs: failed.append(launcher.run(jobs, args.data_root) or 0))
    for r in skipped:
        print(f"not run ({r.status.replace('_', ' ')}): {r.id}", file=sys.stderr)
    if sum(failed):
        print(f"{sum(failed)} job(s) failed: their records say why (mtlrepro diff shows them; --retry-failed reruns)",
              file=sys.stderr)
        return 1
    return 0
