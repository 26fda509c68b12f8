"""GPU-cost estimates for `mtlrepro plan`: jobs × epochs × batches × measured seconds per batch.

Seconds per batch come from ``reproduce/calibration/*.yaml`` (measured on a named GPU, with
provenance); nothing here guesses a throughput. Recipes without a calibration entry are
reported as unknown, those estimated from a related measurement are flagged.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import yaml

from .data.datasets import DATASETS, get_dataset
from .recipe import Recipe
from .tables import REPRODUCE_DIR

CALIBRATION_DIR = REPRODUCE_DIR / "calibration"
SIMILAR_PASS = {"task_routing": "etr", "max_roaming": "etr", "attentive": "etr"}


@dataclass(frozen=True)
class Estimate:
    seconds: float | None
    basis: str          # "measured", "estimated from <x>", or "unknown"


@lru_cache(maxsize=None)
def calibration(device: str = "h100") -> dict:
    path = CALIBRATION_DIR / f"{device}.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def batches_per_epoch(recipe: Recipe) -> int | None:
    if recipe.dataset not in DATASETS:
        return None
    n = get_dataset(recipe.dataset).split_sizes["train"]
    steps = max(n // recipe.batch_size, 1)
    return min(steps, recipe.max_steps_per_epoch) if recipe.max_steps_per_epoch else steps


def seconds_per_batch(recipe: Recipe, device: str = "h100") -> Estimate:
    cal = calibration(device)
    key = f"{recipe.dataset}/{recipe.task_set}/{recipe.backbone}/{recipe.sharing}/{recipe.weighting}/{recipe.update}"
    if key in cal.get("s_per_batch", {}):
        ref = cal.get("reference_batch", 256)   # "recipe": measured at (or scaled to) the recipe's batch
        scale = 1.0 if ref == "recipe" else recipe.batch_size / float(ref)
        return Estimate(cal["s_per_batch"][key] * scale, "measured")
    passes = cal.get("s_per_task_pass", {})
    sets = get_dataset(recipe.dataset).task_sets if recipe.dataset in DATASETS else {}
    n_tasks = sets[recipe.task_set].n_tasks if recipe.task_set in sets else None
    name = f"{recipe.backbone}/{recipe.sharing}"
    if recipe.update in ("steady_state", "synchronized") and n_tasks:
        if name in passes:
            return Estimate(passes[name] * n_tasks * recipe.batch_size / 256, "measured per-task pass × tasks")
        sim = SIMILAR_PASS.get(recipe.sharing)
        if sim and f"{recipe.backbone}/{sim}" in passes:
            return Estimate(passes[f"{recipe.backbone}/{sim}"] * n_tasks * recipe.batch_size / 256,
                            f"estimated from {sim}'s measured per-task pass")
    return Estimate(None, "unknown (no calibration)")


def job_seconds(recipe: Recipe, device: str = "h100") -> Estimate:
    per = seconds_per_batch(recipe, device)
    n = batches_per_epoch(recipe)
    if per.seconds is None or n is None:
        return Estimate(None, per.basis)
    return Estimate(per.seconds * n * recipe.epochs, per.basis)
