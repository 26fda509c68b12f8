"""``mtlrepro report TABLE``: write the markdown report under ``results/``."""
from __future__ import annotations

import argparse

from .common import add_run_arguments, parse_seeds

NAME = "report"
HELP = "write results/<paper>/<table>.md (tiny profile: results/tiny/...) from the stored runs"
EPILOG = "examples:\n  mtlrepro report etr_nlp/table4\n  mtlrepro report etr_nlp/table4 --profile tiny"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", help="table id")
    add_run_arguments(p)
    p.add_argument("--no-complexity", action="store_true", help="omit the parameter / FLOP section")


def run(args: argparse.Namespace) -> int:
    from ..report import write_report
    from ..tables import get_table

    path = write_report(get_table(args.id), args.profile, parse_seeds(args.seeds),
                        with_complexity=not args.no_complexity)
    print(f"wrote {path}")
    return 0
