"""The search split: a search trains weights on part of the training split and its architecture on
the rest (CoNAL: 80 / 20 of NYUv2's 795 training images = 636 / 159), never on the test set.

The held-out indices are drawn as the released CoNAL code draws them (``CoNAL/dataset.py``:
``np.random.seed(688); np.random.choice(arange(n), int(0.8 n), replace=False)`` for the
search-training part, the rest sorted for the search-validation part), with numpy's legacy
``RandomState`` so the same seed gives the same images. Search-validation batches are served in
order and cycle (the released ``val_loader`` has ``shuffle=False`` and restarts when exhausted);
the stream is a pure function of the step index, so a resumed search sees the same batches.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..problems.base import Problem, Split

__all__ = ["search_split", "training_split", "SearchValBatches"]


def search_split(problem: Problem, val_fraction: float, seed: int = 688) -> tuple[Problem, Split, dict]:
    """``(problem training on the search-train part, the search-val split, info)``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"search_val_fraction must lie in (0, 1), got {val_fraction}")
    n = len(problem.train)
    n_train = int(n * (1.0 - val_fraction))
    if n_train < 1 or n_train >= n:
        raise ValueError(f"search split of {n} training samples at {val_fraction} leaves an empty part")
    train_idx = np.random.RandomState(seed).choice(np.arange(n), size=n_train, replace=False)
    val_idx = np.array(sorted(set(range(n)) - set(train_idx.tolist())), dtype=np.int64)

    def subset(idx: np.ndarray) -> Split:
        i = torch.as_tensor(idx, dtype=torch.long, device=problem.train.inputs.device)
        return Split(problem.train.inputs[i], [t[i] for t in problem.train.targets])

    info = {"search_train": int(n_train), "search_val": int(len(val_idx)), "search_split_seed": int(seed),
            "search_val_fraction": float(val_fraction)}
    return dataclasses.replace(problem, train=subset(train_idx)), subset(val_idx), info


def training_split(problem: Problem, recipe) -> tuple[Problem, Split | None]:
    """The problem ``recipe`` trains on and its search-validation split: with ``search_val_fraction``
    the search-train part (the split's sizes and seed added to ``data_info``), else ``problem`` and None.
    The trainer and the data check (:mod:`mtlrepro.data_check`) both take their tensors from here."""
    if not recipe.search_val_fraction:
        return problem, None
    train, val, info = search_split(problem, recipe.search_val_fraction, recipe.search_split_seed)
    return dataclasses.replace(train, data_info=dict(problem.data_info, **info)), val


class SearchValBatches:
    """In-order, cycling batches of the search-validation split, targets as the trainer sees them."""

    def __init__(self, problem: Problem, val: Split, batch_size: int):
        self.problem, self.val, self.batch_size = problem, val, batch_size
        self.n_batches = max(-(-len(val) // batch_size), 1)   # the last batch may be short (drop_last=False)
        self.position = 0

    def set_epoch(self, epoch: int, step: int) -> None:
        """Continue at global step ``step`` (the trainer calls it before each epoch)."""
        self.position = step

    def next(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b = self.position % self.n_batches
        self.position += 1
        sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
        targets = [t[sl] for t in self.val.targets]
        expand = getattr(self.problem, "batch_targets", None)
        return self.problem.prepare(self.val.inputs[sl]), (expand(targets) if expand else targets)
