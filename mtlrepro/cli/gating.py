"""``mtlrepro gating RECIPE``: GatedMTL's gating patterns (Figures 3-4) of a stored run."""
from __future__ import annotations

import argparse

from .common import add_profile_argument

NAME = "gating"
HELP = "plot a stored GatedMTL run's gating patterns (task-specific share and max contribution per layer)"
EPILOG = ("examples:\n  mtlrepro gating gatedmtl/table5/gatedmtl_2\n"
          "  mtlrepro gating gatedmtl/table6/gatedmtl_3 --profile tiny --seed 0\n"
          "writes results/[<profile>/]gatedmtl/gating/<table>-<row>-seed<k>.{png,md}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="a GatedMTL recipe id, e.g. gatedmtl/table5/gatedmtl_2")
    add_profile_argument(p, default="full")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from ..gating_figure import write_gating_figure

    png, md = write_gating_figure(args.recipe, args.profile, args.seed)
    print(f"wrote {png}\nwrote {md}")
    return 0
