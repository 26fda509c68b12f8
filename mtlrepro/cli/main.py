"""Entry point of ``mtlrepro``: one subcommand per module in :mod:`mtlrepro.cli`.

Each verb module exposes ``NAME``, ``HELP``, ``EPILOG`` (examples), ``add_arguments(parser)`` and
``run(args) -> int``. Errors meant for the user - unknown ids, missing or bad data, a broken table
or recipe file (:class:`mtlrepro.errors.UserError`, ``DataError``) - print one line,
``mtlrepro <verb>: <message>``, and exit 2 instead of a traceback; a bad command-line value is
argparse's usage message, exit 2 (:func:`main` returns the code rather than raising ``SystemExit``).
A fault of the machine (full disk, read-only store) exits 3 with the path it concerns, and nothing
is stored for the job it interrupted. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

VERBS = ["tables", "table", "audit", "recipes", "plan", "run", "profile", "diff", "report", "reproduce"]
VERBS += ["conflicts", "calibrate", "timing", "gating", "status", "leaderboard"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtlrepro",
        description="Reproduce the published tables of multi-task-learning papers, cell by cell.",
        epilog="examples:\n  mtlrepro tables\n  mtlrepro table etr_nlp/table4\n  mtlrepro audit\n"
               "  mtlrepro reproduce etr_nlp/table4 --profile tiny",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERBS:
        mod = importlib.import_module(f"mtlrepro.cli.{name}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP, epilog=mod.EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..data.errors import DataError
    from ..errors import UsageError, UserError
    from ..train.faults import EnvironmentFault

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        check = getattr(args, "_check", None)
        if check is not None:
            try:
                check(args)
            except UsageError as e:
                args._parser.error(str(e))    # the verb's usage and the message, exit 2
    except SystemExit as e:                  # argparse: usage error (2), --help (0)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (UserError, DataError) as e:      # the user's input, not the code: no traceback
        print(f"mtlrepro {args.verb}: {e}", file=sys.stderr)
        return 2
    except EnvironmentFault as e:   # the machine, not the run: nothing stored, the job stays runnable
        print(f"mtlrepro {args.verb}: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"mtlrepro {args.verb}: interrupted; finished runs are kept, re-run to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
