"""``mtlrepro report TABLE`` / ``mtlrepro report --all``: write markdown reports under ``results/``."""
from __future__ import annotations

import argparse

from ..errors import UsageError
from .common import add_run_arguments, check_run_arguments, parse_seeds

NAME = "report"
HELP = ("write results/<paper>/<table>.md (tiny profile: results/tiny/...) from the stored runs; --all: every "
        "table with a stored run, then the index page results/README.md (tiny: results/tiny/README.md)")
EPILOG = ("examples:\n  mtlrepro report etr_nlp/table4\n  mtlrepro report etr_nlp/table4 --profile tiny\n"
          "  mtlrepro report --all                     # reports + results/README.md (full profile)\n"
          "  mtlrepro report --all --profile tiny      # reports + results/tiny/README.md (synthetic)\n\n"
          "--all writes the report of every table that has at least one stored run (finished or failed) of\n"
          "its rows for the profile, then the index page: one line per table (the numbers of `mtlrepro\n"
          "status`) linking to its report. The index is generated: do not edit it by hand.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", nargs="?", default=None, help="table id (omit with --all)")
    p.add_argument("--all", action="store_true",
                   help="every table with a stored run, then the index page of the profile")
    add_run_arguments(p)
    p.add_argument("--no-complexity", action="store_true", help="omit the parameter / FLOP section")
    p.add_argument("--calibration", default="h100",
                   help="with --all: timing file under reproduce/calibration/ for the index's GPU-hours")
    p.set_defaults(_check=check_report_arguments)


def check_report_arguments(args: argparse.Namespace) -> None:
    """A table id or ``--all``, not both and not neither; then the run arguments' own checks."""
    if args.all and args.id:
        raise UsageError("give a table id or --all, not both")
    if not args.all and not args.id:
        raise UsageError("give a table id (e.g. etr_nlp/table4) or --all")
    check_run_arguments(args)


def run(args: argparse.Namespace) -> int:
    if args.all:
        from ..index_page import write_all

        paths = write_all(args.profile, parse_seeds(args.seeds), with_complexity=not args.no_complexity,
                          calibration=args.calibration)
        for path in paths:
            print(f"wrote {path}")
        return 0
    from ..report import write_report
    from ..tables import get_table

    path = write_report(get_table(args.id), args.profile, parse_seeds(args.seeds),
                        with_complexity=not args.no_complexity)
    print(f"wrote {path}")
    return 0
