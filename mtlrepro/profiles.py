"""Profiles: how a recipe is run, and which store its runs go to.

* ``full``: the paper's schedule on the real dataset, official split sizes (the loaders refuse others);
* ``subset``: the same on a copy whose split sizes differ (``--allow-subset``; each run records the
  sizes it saw);
* ``tiny``: minutes on a generated dataset in the real on-disk format, random initialisation.

Each profile is a store of its own (``results/runs/<profile>/``, reports under ``results/[<profile>/]``),
so a subset or synthetic run never stands in for a full one, and every page showing a non-``full``
profile's numbers opens with its :attr:`Profile.banner`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .recipe import Recipe

@dataclass(frozen=True)
class Profile:
    """How a recipe is run: ``full`` as the paper says on the official splits, ``subset`` as the
    paper says on whatever split sizes the user's copy of the dataset has (``--allow-subset``),
    ``tiny`` on generated data in minutes. Each profile is a store of its own
    (``results/runs/<profile>/``), so a subset or synthetic run never stands in for a full one."""

    name: str
    synthetic: bool
    overrides: dict[str, Any]
    description: str
    #: the warning every page that shows this profile's numbers opens with ("" for ``full``)
    banner: str = ""


SYNTHETIC_BANNER = "SYNTHETIC DATA — NOT COMPARABLE WITH THE PAPER"
#: the sentence pages and plots add to a synthetic profile's numbers
SYNTHETIC_NOTE = "synthetic data, random initialisation: not comparable with the paper"
SUBSET_BANNER = "NOT THE OFFICIAL SPLITS — NOT COMPARABLE WITH THE PAPER"

PROFILES = {
    "full": Profile("full", False, {}, "the paper's schedule on the real dataset"),
    "subset": Profile("subset", False, {},
                      "the paper's schedule on the real dataset with split sizes other than the official "
                      "ones (--allow-subset: a subset or another version of the dataset; each run records "
                      "the sizes it saw); verdicts compare with numbers measured on the official splits",
                      banner=SUBSET_BANNER),
    "tiny": Profile("tiny", True, {"epochs": 2, "batch_size": 8, "seeds": (0,), "max_steps_per_epoch": 2,
                             "image_size": 32, "pretrained": None},
                    "2 epochs × 2 steps of batch 8 at 32×32 on a generated tiny dataset in the real "
                    "on-disk format, from random initialisation (no pretrained weights); exercises the "
                    "whole pipeline, numbers are not comparable with the paper", banner=SYNTHETIC_BANNER),
}


def apply_profile(recipe: "Recipe", profile: str) -> "Recipe":
    if profile not in PROFILES:
        from .registry import UnknownKeyError
        raise UnknownKeyError("profile", profile, list(PROFILES))
    return recipe.with_overrides(**PROFILES[profile].overrides)




def caveat(profile: str) -> str:
    """What a plot or page of ``profile``'s numbers says first: :data:`SYNTHETIC_NOTE` for a
    synthetic profile, else its banner ("" for ``full``)."""
    return SYNTHETIC_NOTE if PROFILES[profile].synthetic else PROFILES[profile].banner
