"""``mtlrepro plan TABLE``: the job matrix, what is done, and what remains, before anything runs."""
from __future__ import annotations

import argparse

from .common import add_run_arguments, parse_seeds

NAME = "plan"
HELP = "show the (recipe, seed) jobs of a table or recipe: done, to run, not implemented"
EPILOG = "examples:\n  mtlrepro plan etr_nlp/table4\n  mtlrepro plan table4 --profile tiny"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="table id or recipe id")
    add_run_arguments(p)
    p.add_argument("--calibration", default="h100",
                   help="timing file under reproduce/calibration/ used for the cost estimate")


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..cost import calibration, job_seconds
    from ..claims import live
    from ..launch import plan_jobs, record_path, resolve_recipes
    from ..pipeline import upstream_recipe

    recipes = resolve_recipes(args.target)
    todo, done, skipped = plan_jobs(recipes, args.profile, parse_seeds(args.seeds), device=args.device)

    def est(j):
        e = job_seconds(j.recipe, args.calibration)
        return ("?" if e.seconds is None else f"{e.seconds / 3600:.2f}"), e.basis

    def after(r) -> str:   # the pipeline's edges: which run's output this recipe retrains
        up = upstream_recipe(r)
        return f"{up.row} s{r.architecture_seed}" if up is not None else ""

    def to_run(j) -> str:   # a job another sweep holds a live claim on is running there now
        owner = live(record_path(j, args.device, None))
        return f"running ({owner.describe()})" if owner is not None else "to run"

    rows = [[j.recipe.id, j.seed, to_run(j), after(j.recipe), j.recipe.epochs, *est(j)] for j in todo]
    rows += [[j.recipe.id, j.seed, rec.status, after(j.recipe), j.recipe.epochs, "", ""] for j, rec in done]
    def state(r) -> str:   # "waiting for <upstream id> seed k (why)": the after column names the upstream
        return "waiting" + r.status[r.status.rindex(" ("):] if r.status.startswith("waiting") else r.status.replace("_", " ")

    rows += [[r.id, "-", state(r), after(r), "-", "", ""] for r in skipped]
    print(tabulate(sorted(rows, key=lambda r: (r[0], str(r[1]))),
                   headers=["recipe", "seed", "state", "after", "epochs", "h (est.)", "basis"]))
    epochs = sum(j.recipe.epochs for j in todo)
    secs = [job_seconds(j.recipe, args.calibration).seconds for j in todo]
    known = [s for s in secs if s is not None]
    cal = calibration(args.calibration)
    total = (f"{sum(known) / 3600:.1f} hours on {cal.get('device', args.calibration)}"
             + (f" for {len(known)} of {len(todo)} jobs (the rest have no calibration)" if len(known) < len(todo) else "")
             if known else "no cost estimate (no calibration for these recipes)")
    waiting = [r for r in skipped if r.status.startswith("waiting")]
    print(f"\n{len(todo)} jobs to run ({epochs} epochs), {len(done)} stored, "
          f"{len(skipped) - len(waiting)} recipes not run (not implemented or ambiguous), {len(waiting)} waiting "
          f"for an upstream run (run after it, by `mtlrepro run`); profile {args.profile}\nestimated cost: {total}"
          + (" (waiting jobs not included)" if waiting else ""))
    return 0
