"""Problems: a dataset + task set + losses + evaluation, ready for the trainer.

A problem holds its tensors on the training device (uint8 images, pre-resized once by the
data cache) and serves batches by indexing them, so no per-sample Python runs per step.
Which builder serves which dataset is the dataset's entry in
:data:`mtlrepro.data.datasets.DATASETS`.
"""
from __future__ import annotations

import dataclasses

from ..data.datasets import get_dataset
from .base import Problem


def build_problem(recipe, profile: str, data_root: str | None, device) -> Problem:
    """The problem a recipe trains on; ``profile`` "tiny" uses generated data. With the recipe's
    ``loss_weights`` (one per task) every task loss is scaled, :math:`L_t \\to \\omega_t L_t`, before
    any weighting or aggregator sees it (GatedMTL Sec. 4.2.3: Maninis et al.'s ``\\omega_t`` "for
    all MTL methods" on PASCAL-Context; Vandenhende's ``MultiTaskLoss`` weighs the same way)."""
    problem = get_dataset(recipe.dataset).build_problem(recipe, profile, data_root, device)
    if getattr(recipe, "augment", None) and problem.augment is None:
        raise ValueError(f"{recipe.id}: augment {recipe.augment!r}, but dataset {recipe.dataset!r} has no training "
                         "augmentation (only nyud_mt / pascal_mt: 'vandenhende')")
    weights = getattr(recipe, "loss_weights", None)
    if not weights:
        return problem
    if len(weights) != problem.n_tasks:
        raise ValueError(f"{recipe.id}: loss_weights has {len(weights)} entries for {problem.n_tasks} tasks "
                         f"({', '.join(problem.task_names)})")
    return dataclasses.replace(problem, task_loss=ScaledTaskLoss(problem.task_loss, weights),
                               data_info=dict(problem.data_info, loss_weights=[float(w) for w in weights]))


class ScaledTaskLoss:
    """``task_loss(t, out, y) * weights[t]`` (picklable, no closure)."""

    def __init__(self, task_loss, weights):
        self.task_loss, self.weights = task_loss, [float(w) for w in weights]

    def __call__(self, t: int, out, target):
        return self.task_loss(t, out, target) * self.weights[t]


def problem_shape(recipe) -> tuple[list[int], tuple[int, ...]]:
    """(per-task output sizes, model input shape) without touching any data: for profiling."""
    return get_dataset(recipe.dataset).problem_shape(recipe)
