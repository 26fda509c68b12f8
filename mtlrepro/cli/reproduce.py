"""``mtlrepro reproduce TABLE``: run + diff + report in one go (what ``make tableN`` calls)."""
from __future__ import annotations

import argparse
import sys

from .common import (add_allow_subset_argument, add_run_arguments, add_skip_data_check_argument, apply_allow_subset,
                     parse_seeds)

NAME = "reproduce"
HELP = "run the missing runs of a table, then diff and write its report"
EPILOG = ("examples:\n  mtlrepro reproduce etr_nlp/table4 --profile tiny\n"
          "  mtlrepro reproduce etr_nlp/table4 --data-root /data/celeba_root")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", help="table id (or a figure sweep id, e.g. etr_nlp/figure6)")
    add_run_arguments(p)
    add_allow_subset_argument(p)
    add_skip_data_check_argument(p)
    p.add_argument("--launcher", default="inprocess", help="inprocess | local-multi | slurm")
    p.add_argument("--workers", type=int, default=None, help="local-multi: concurrent jobs (default: GPUs, or 2 on CPU)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--fail-on", default="failed", help="verdicts that make the exit code 1 (default: failed)")


def run(args: argparse.Namespace) -> int:
    apply_allow_subset(args)
    from collections import Counter

    from ..compare import compare_table
    from ..data_check import checked_plan
    from ..launch import Tally, make_launcher, plan_jobs, resolve_recipes
    from ..pipeline import run_pipeline
    from ..problems.paths import data_root_or_explain
    from ..report import write_report
    from ..store import tidy
    from ..tables import get_table
    from .diff import exit_code

    from ..recipe import recipe_sets
    rs = recipe_sets().get(args.id)
    if rs is not None and rs.figure is not None:
        return _reproduce_figure(args)
    table = get_table(args.id)
    recipes = resolve_recipes(table.id)
    tidy()
    if args.profile != "tiny":  # real data: fail before anything runs, with the exact layout expected
        for ds in sorted({r.dataset for r in recipes}):
            data_root_or_explain(ds, args.data_root)
    plan = checked_plan(lambda: plan_jobs(recipes, args.profile, parse_seeds(args.seeds), device=args.device),
                        args.profile, args.data_root, args.device, enabled=not args.skip_data_check)

    first = plan()
    todo, done, skipped = first
    waiting = sum(r.status.startswith("waiting") for r in skipped)
    print(f"{table.id}: {len(todo)} runs to do, {len(done)} stored, {len(skipped) - waiting} recipes not run "
          f"(not implemented or ambiguous), {waiting} waiting for an upstream run; profile {args.profile}",
          file=sys.stderr)
    launcher = make_launcher(args.launcher, args.device, not args.no_progress, args.workers)
    tally = Tally()
    _, _, skipped = run_pipeline(first, plan, lambda jobs: tally.add(launcher.run(jobs, args.data_root)))
    for r in skipped:
        if r.status.startswith("waiting"):
            print(f"still {r.status}: {r.id}", file=sys.stderr)
    for line in tally.summary():
        print(line, file=sys.stderr)
    td = compare_table(table, args.profile, parse_seeds(args.seeds))
    path = write_report(table, args.profile, diff=td)   # the report shows exactly the diff judged here
    counts = Counter(d.verdict for d in td.cells)
    print(f"verdicts: {dict(counts)}\nwrote {path}")
    return max(exit_code(td.cells, args.fail_on), tally.exit_code)   # a failed or crashed job: at least 1


def _reproduce_figure(args: argparse.Namespace) -> int:
    """Figures have no printed numbers: run the sweep (a trade-off figure: its panels' tables, in
    pipeline waves so that recipes waiting for an upstream run follow it), then plot (no diff)."""
    from ..figures import figure_recipes, write_figure
    from ..data_check import checked_plan
    from ..launch import Tally, make_launcher, plan_jobs
    from ..pipeline import run_pipeline
    from ..store import tidy
    from ..problems.paths import data_root_or_explain

    recipes = figure_recipes(args.id)
    if args.profile != "tiny":
        for ds in sorted({r.dataset for r in recipes if r.status == "ready"}):
            data_root_or_explain(ds, args.data_root)

    plan = checked_plan(lambda: plan_jobs(recipes, args.profile, parse_seeds(args.seeds), device=args.device),
                        args.profile, args.data_root, args.device, enabled=not args.skip_data_check)

    first = plan()
    todo, done, skipped = first
    print(f"{args.id}: {len(todo)} runs to do, {len(done)} stored, {len(skipped)} not run (not implemented, "
          "ambiguous or waiting for an upstream run)", file=sys.stderr)
    tally = Tally()
    if todo:
        tidy()
        launcher = make_launcher(args.launcher, args.device, not args.no_progress, args.workers)
        _, _, skipped = run_pipeline(first, plan, lambda jobs: tally.add(launcher.run(jobs, args.data_root)))
    for r in skipped:
        print(f"not run: {r.id} ({r.status})", file=sys.stderr)
    for line in tally.summary():
        print(line, file=sys.stderr)
    png, md = write_figure(args.id, args.profile)
    print(f"wrote {png}\nwrote {md}")
    return tally.exit_code
