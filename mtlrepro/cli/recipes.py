"""``mtlrepro recipes [TABLE]``: list recipes and the rows they reproduce."""
from __future__ import annotations

import argparse
import json

NAME = "recipes"
HELP = "list the runnable recipes (all, or one table's) with their fingerprints"
EPILOG = "examples:\n  mtlrepro recipes\n  mtlrepro recipes etr_nlp/table4 --json\n" \
         "  mtlrepro recipes etr_nlp/table4/max_roaming_a40 --json   # one recipe in full"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", help="table id or recipe id")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..launch import resolve_recipes
    from ..recipe import recipe_registry

    if args.target:     # reads that table's recipe file only
        recipes = resolve_recipes(args.target)
    else:
        reg = recipe_registry()
        recipes = [reg.get(n) for n in reg.names()]
    if args.json:
        print(json.dumps([dict(r.to_dict(), fingerprint=_fingerprint(r)) for r in recipes], indent=1))
        return 0
    print(tabulate([[r.id, r.task_set, r.backbone, r.sharing, r.weighting, r.update, r.epochs,
                     r.batch_size, len(r.seeds), r.status, (_fingerprint(r) or "—")[:12]] for r in recipes],
                   headers=["recipe", "tasks", "backbone", "sharing", "weighting", "update", "epochs",
                            "batch", "seeds", "status", "fingerprint"]))
    return 0


def _fingerprint(recipe) -> str | None:
    """A runnable recipe's fingerprint; none for a row that is not implemented (its scheme may not
    exist), and "after <upstream>" for one whose fingerprint names an upstream run (a searched
    architecture, or GatedMTL's STL weights, whose fingerprint resolves without a run)."""
    if recipe.status != "ready":
        return None
    if recipe.architecture_from and "architecture" not in recipe.sharing_kwargs:
        return f"after {recipe.architecture_from}"
    if recipe.init_from and not recipe.init_weights:
        from ..pipeline import resolve_init
        return resolve_init(recipe, "full").fingerprint
    return recipe.fingerprint
