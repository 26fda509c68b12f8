"""``mtlrepro diff TABLE``: published vs measured, cell by cell, with a verdict."""
from __future__ import annotations

import argparse
import json

from .common import add_run_arguments, parse_seeds

NAME = "diff"
HELP = "compare measured runs with the published cells (verdict per cell)"
EPILOG = ("examples:\n  mtlrepro diff etr_nlp/table4 --profile tiny\n"
          "  mtlrepro diff etr_nlp/table4 --json\n"
          "  mtlrepro diff etr_nlp/table4 --fail-on worse,missing   # non-zero exit for CI")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", help="table id")
    add_run_arguments(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--fail-on", default="", help="comma-separated verdicts that make the exit code 1 "
                   "(failed: also any failed seed)")


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..compare import diff_table
    from ..tables import get_table
    from ..verdict import ALPHA, TEST_NAME

    table = get_table(args.id)
    diffs = diff_table(table, args.profile, parse_seeds(args.seeds))
    if args.json:
        print(json.dumps([d.to_dict() for d in diffs], indent=1))
    else:
        if args.profile == "tiny":
            print("SYNTHETIC DATA (profile tiny): not comparable with the paper")
        r4 = lambda x: None if x is None else round(x, 4)  # noqa: E731
        print(tabulate([[d.label, d.group or "", d.column, d.published, d.published_std, d.n_pub, r4(d.measured),
                         r4(d.measured_std), d.n_meas, r4(d.difference), r4(d.tolerance),
                         None if d.p is None else f"{d.p:.2g}", d.verdict] for d in diffs],
                       headers=["row", "group", "column", "published", "±", "n", "measured", "±", "n", "diff",
                                "tol", "p", "verdict"]))
        print(f"\n{TEST_NAME}, two-sided, alpha = {ALPHA:g}; p is shown where the test was run")
    return exit_code(diffs, args.fail_on)


def exit_code(diffs, fail_on: str) -> int:
    """1 when any cell's verdict is one of the comma-separated ``fail_on`` verdicts (``failed`` also
    when some of a cell's seeds failed and the verdict rests on the others), else 0."""
    wanted = {v.strip() for v in fail_on.split(",") if v.strip()}
    return 1 if any(d.verdict in wanted or ("failed" in wanted and d.n_failed) for d in diffs) else 0
