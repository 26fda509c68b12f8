"""Arguments shared by the verbs that run things, and their checks.

A value argparse can check alone is a ``type=`` function that raises ``ArgumentTypeError`` (a
usage error, exit 2). A combination of values is checked after parsing: a verb module's parser
carries ``_check`` (set here with ``set_defaults``), which ``mtlrepro/cli/main.py`` calls and turns a
:class:`~mtlrepro.errors.UsageError` into the verb's usage message, exit 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import UsageError

TINY_DATA_ROOT = "--data-root is for the full profile; the tiny profile generates its own data"
TINY_SUBSET = ("--allow-subset is for the full profile; the tiny profile's generated data has its own "
               "split sizes")


#: the profiles a verb accepts (:data:`mtlrepro.profiles.PROFILES`, spelled here so that ``--help``
#: imports nothing heavy; a test keeps the two equal)
PROFILE_CHOICES = ("full", "subset", "tiny")
PROFILE_HELP = ("full: the paper's schedule on the real data (official splits); subset: the same on other "
                "split sizes (what --allow-subset selects); tiny: minutes on generated data")


def add_profile_argument(p: argparse.ArgumentParser, default: str | None = None, extra: tuple[str, ...] = (),
                         help: str = PROFILE_HELP) -> None:
    """``--profile`` (default ``$PROFILE``, else ``full``)."""
    p.add_argument("--profile", default=default or os.environ.get("PROFILE", "full"),
                   choices=[*PROFILE_CHOICES, *extra], help=help)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    add_profile_argument(p)
    p.add_argument("--seeds", default=None, type=seeds_argument,
                   help="comma-separated seeds (default: the recipe's; e.g. 0,1,2)")
    add_data_root_argument(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")


def add_data_root_argument(p: argparse.ArgumentParser) -> None:
    """``--data-root`` (real data only: with ``--profile tiny`` a usage error, not ignored)."""
    p.add_argument("--data-root", default=None,
                   help="dataset root (default: $MTLREPRO_DATA); full and subset profiles only")
    p.set_defaults(_check=check_run_arguments)


def add_allow_subset_argument(p: argparse.ArgumentParser) -> None:
    """``--allow-subset``: train on a dataset whose split sizes are not the official ones, i.e. run
    the ``subset`` profile (:func:`apply_allow_subset`)."""
    p.add_argument("--allow-subset", action="store_true",
                   help="accept split sizes other than the official ones (a subset or another version of the "
                        "dataset): the same as --profile subset, whose runs are stored and reported apart from "
                        "the full profile's; each run records the sizes it saw")
    p.set_defaults(_check=check_run_arguments)


def add_skip_data_check_argument(p: argparse.ArgumentParser) -> None:
    """``--skip-data-check``: serve stored runs without checking they saw the data there now."""
    p.add_argument("--skip-data-check", action="store_true",
                   help="do not check that stored runs were trained on the data there now (by default each "
                        "distinct problem is built once from the cache and its tensors' checksum compared with "
                        "the records'; a run of other data is set aside and run again)")


def apply_allow_subset(args: argparse.Namespace) -> None:
    """``--allow-subset`` given: the verb runs the ``subset`` profile (a store of its own, so that a
    run on other split sizes never counts as one on the official splits), said on stderr."""
    if getattr(args, "allow_subset", False) and args.profile != "subset":
        print("mtlrepro: --allow-subset: running profile 'subset' (stored under runs/subset/, reported "
              "under results/subset/; the full profile's runs and verdicts are not touched)", file=sys.stderr)
        args.profile = "subset"


def check_run_arguments(args: argparse.Namespace) -> None:
    """Combinations argparse cannot reject alone: ``--data-root`` or ``--allow-subset`` with
    ``--profile tiny`` (the tiny profile reads neither: silently ignoring them would run on data the
    user did not mean)."""
    if getattr(args, "profile", None) == "tiny":
        if getattr(args, "data_root", None):
            raise UsageError(TINY_DATA_ROOT)
        if getattr(args, "allow_subset", False):
            raise UsageError(TINY_SUBSET)


def seeds_argument(text: str) -> list[int]:
    """``--seeds`` as argparse's ``type``: ``0,1,2`` -> ``[0, 1, 2]``; anything else is a usage error."""
    try:
        seeds = parse_seeds(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integer seeds, e.g. 0,1,2; got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected at least one seed, e.g. 0 or 0,1,2; got {text!r}")
    return seeds


def parse_seeds(text: str | list[int] | None) -> list[int] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]``; a list (``--seeds`` already parsed) is returned as it is; None or
    ``""``: None (the recipe's seeds). A non-integer raises ``ValueError``."""
    if text is None or text == "":
        return None
    if isinstance(text, (list, tuple)):
        return [int(s) for s in text]
    return [int(s) for s in str(text).replace(" ", "").split(",") if s != ""]
