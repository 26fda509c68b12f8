"""``mtlrepro tables``: list the registered published tables."""
from __future__ import annotations

import argparse
import json
import sys

NAME = "tables"
HELP = "list the published tables in the registry"
EPILOG = "examples:\n  mtlrepro tables\n  mtlrepro tables --paper conal\n  mtlrepro tables --json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--paper", help="only this paper (etr_nlp, conal, gatedmtl)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..tables import all_tables

    broken: list = []   # a broken table file is named after the list of the others (exit 2)
    tables = [t for t in all_tables(broken) if not args.paper or t.paper == args.paper]
    items = [{"id": t.id, "paper": t.paper, "title": t.title, "caption": t.caption,
              "dataset": t.dataset, "backbone": t.backbone, "n_rows": len(t.rows),
              "n_cells": t.n_cells, "in_scope": t.in_scope,
              "n_recipes": sum(1 for r in t.rows if r.recipe)} for t in tables]
    if args.json:
        print(json.dumps(items, indent=2, ensure_ascii=False))
    else:
        print(tabulate([[i["id"], i["dataset"], i["backbone"] or "", i["n_rows"], i["n_cells"],
                         i["n_recipes"], "" if i["in_scope"] else "out of scope"] for i in items],
                       headers=["id", "dataset", "backbone", "rows", "cells", "recipes", ""]))
    for e in broken:
        print(f"mtlrepro tables: {e}", file=sys.stderr)
    return 2 if broken else 0
