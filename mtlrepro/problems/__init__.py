"""Problems: a dataset + task set + losses + evaluation, ready for the trainer.

A problem holds its tensors on the training device (uint8 images, pre-resized once by the
data cache) and serves batches by indexing them, so no per-sample Python runs per step.
Which builder serves which dataset is the dataset's entry in
:data:`mtlrepro.data.datasets.DATASETS`.
"""
from __future__ import annotations

from ..data.datasets import get_dataset
from .base import Problem


def build_problem(recipe, profile: str, data_root: str | None, device) -> Problem:
    """The problem a recipe trains on; ``profile`` "tiny" uses generated data."""
    return get_dataset(recipe.dataset).build_problem(recipe, profile, data_root, device)


def problem_shape(recipe) -> tuple[list[int], tuple[int, ...]]:
    """(per-task output sizes, model input shape) without touching any data: for profiling."""
    return get_dataset(recipe.dataset).problem_shape(recipe)
