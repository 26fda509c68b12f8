"""``mtlrepro leaderboard METHOD | --all``: one method across the papers, or the whole leaderboard page."""
from __future__ import annotations

import argparse
import json

from ..errors import UsageError
from .common import add_profile_argument

NAME = "leaderboard"
HELP = "one method's rows across the papers side by side (published vs measured Δ), or --all: the page"
EPILOG = ("examples:\n  mtlrepro leaderboard MGDA-UB\n  mtlrepro leaderboard uncertainty --json\n"
          "  mtlrepro leaderboard hard_sharing+pcgrad --profile tiny\n"
          "  mtlrepro leaderboard --all                 # writes results/leaderboard.md\n"
          "  mtlrepro leaderboard --all --profile tiny  # writes results/tiny/leaderboard.md (synthetic)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", nargs="?", help="a display name (MTAN), a paper's name (Uncertainty) or a key "
                   "(hard_sharing+mgda_ub, pcgrad); case-insensitive")
    p.add_argument("--all", action="store_true", help="write the whole leaderboard page")
    add_profile_argument(p, help="whose measured runs: full (the paper's setting), subset (other split "
                                 "sizes) or tiny (synthetic)")
    p.add_argument("--json", action="store_true", help="METHOD as JSON")
    p.add_argument("--out", default=None, help="page path with --all (default results/leaderboard.md; "
                   "tiny: results/tiny/leaderboard.md)")
    p.set_defaults(_check=check_arguments)


def check_arguments(args: argparse.Namespace) -> None:
    if args.all == bool(args.method):
        raise UsageError("give either METHOD or --all")
    if args.all and args.json:
        raise UsageError("--json is for METHOD; --all writes the markdown page")
    if args.out and not args.all:
        raise UsageError("--out is for --all")


def run(args: argparse.Namespace) -> int:
    from ..leaderboard import build, find_method
    from ..leaderboard_page import method_json, render_method, write_leaderboard

    if args.all:
        print(f"wrote {write_leaderboard(args.profile, out=args.out)}")
        return 0
    lb = build(args.profile)
    mid = find_method(lb, args.method)
    if args.json:
        print(json.dumps(method_json(lb, mid), indent=1, ensure_ascii=False))
    else:
        print(render_method(lb, mid))
    return 0
