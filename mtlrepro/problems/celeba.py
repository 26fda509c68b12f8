"""CelebA multi-attribute classification (Maximum Roaming / ETR-NLP protocol).

Tasks are attributes (``attr40``) or attribute groups (``group8``); each task is a sigmoid
head with one output per attribute, trained with BCE. Evaluation pools all tasks' outputs
back into the 40 attributes and reports per-attribute precision/recall/F over the whole
split, averaged over attributes (×100).
"""
from __future__ import annotations


import torch

from ..data.celeba import CELEBA_SPLIT_SIZES, celeba_tasks, load_celeba
from ..metrics.classification import BinaryAccuracy, MultiLabelPRF, TotalError
from ..tasks.attributes import attributes_loss
from .base import Problem, Split
from .paths import (cache_dir_override, data_expect, data_root_or_explain, ensure_tiny_dataset, note_subset,
                    source_info)


class CelebAEvaluator:
    """Macro precision / recall / F over the attributes; when every task is ONE attribute (CoNAL's
    CelebA-9, GatedMTL's 3 tasks) also CoNAL's ``total_error`` (the sum over tasks of the error %),
    which is a per-task quantity and undefined for groups of attributes. With ``task_names`` (and
    ``task_sizes``, labels per task) it also reports ``<task>/accuracy``: the task's per-label
    accuracy over the split, averaged over its labels (GatedMTL's Gender / Age / Clothes columns)."""

    def __init__(self, n_labels: int, device: torch.device, single_attribute_tasks: bool = False,
                 task_names: list[str] | None = None, task_sizes: list[int] | None = None):
        self.prf = MultiLabelPRF(n_labels, threshold=0.5, from_logits=True)
        self.total = TotalError(n_labels, threshold=0.5, from_logits=True) if single_attribute_tasks else None
        self.task_names, self.task_sizes = task_names, task_sizes
        self.acc = BinaryAccuracy(n_labels, threshold=0.5, from_logits=True) if task_names else None

    def update(self, outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> None:
        out, tgt = torch.cat(outputs, dim=1), torch.cat(targets, dim=1)
        self.prf.update(out, tgt)
        if self.total is not None:
            self.total.update(out, tgt)
        if self.acc is not None:
            self.acc.update(out, tgt)

    def compute(self) -> dict[str, float]:
        out = {**self.prf.compute(), **(self.total.compute() if self.total is not None else {})}
        if self.acc is not None:
            per_label, start = self.acc.compute_per_label().tolist(), 0
            for name, size in zip(self.task_names, self.task_sizes):
                out[f"{name}/accuracy"] = float(sum(per_label[start:start + size]) / size)
                start += size
        return out


#: task sets whose tables print one accuracy per task (GatedMTL's Gender / Age / Clothes); the others
#: report the macro P / R / F only, so their records keep the keys they always had
PER_TASK_ACCURACY_SETS = frozenset({"gated3"})


def build_celeba_problem(recipe, profile: str, data_root: str | None, device: torch.device,
                         expect: str | None = None) -> Problem:
    """``expect``: the loaders' split-size check (:func:`~mtlrepro.problems.paths.data_expect`:
    "any" on the tiny profile or with ``--allow-subset``, else the official sizes)."""
    tasks = celeba_tasks(recipe.task_set)
    expect = data_expect(profile, expect)
    if profile == "tiny":
        root = ensure_tiny_dataset("celeba")
        synthetic = True
    else:
        root = data_root_or_explain("celeba", data_root)
        synthetic = False
    cache_dir = cache_dir_override(root, "celeba")
    show = profile != "tiny"
    train = load_celeba(root, "train", size=recipe.image_size, resize_mode=recipe.resize_mode,
                        cache_dir=cache_dir, expect=expect, progress=show)
    ev = load_celeba(root, recipe.eval_split, size=recipe.image_size, resize_mode=recipe.resize_mode,
                     cache_dir=cache_dir, expect=expect, progress=show)

    def split(t) -> Split:
        return Split(t.images.to(device), [y.to(device=device, dtype=torch.float32) for y in t.targets(tasks)])

    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format

    def prepare(x: torch.Tensor) -> torch.Tensor:
        # Maximum Roaming's CelebA transform is Resize + ToTensor: inputs in [0, 1], no mean/std
        return (x.float() / 255.0).contiguous(memory_format=memory_format)

    def task_loss(t: int, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return attributes_loss(out, target)

    n_labels = sum(len(t.attr_indices) for t in tasks)
    per_task_names = [t.name for t in tasks] if recipe.task_set in PER_TASK_ACCURACY_SETS else None
    single = all(len(t.attr_indices) == 1 for t in tasks)
    return Problem(
        name=f"celeba/{recipe.task_set}", task_names=[t.name for t in tasks],
        out_dims=[len(t.attr_indices) for t in tasks], input_shape=tuple(train.images.shape[1:]),
        train=split(train), eval=split(ev), eval_split=recipe.eval_split, synthetic=synthetic,
        data_info={"root": str(root), "n_train": len(train.images), "n_eval": len(ev.images),
                   "eval_split": recipe.eval_split, "synthetic": synthetic,
                   "image_size": recipe.image_size, "resize_mode": recipe.resize_mode,
                   "subset": note_subset("CelebA", expect, profile,
                                         {"train": len(train.images), recipe.eval_split: len(ev.images)},
                                         CELEBA_SPLIT_SIZES),
                   **source_info(train=train, eval=ev)},
        prepare=prepare, task_loss=task_loss,
        new_evaluator=lambda: CelebAEvaluator(n_labels, device, single_attribute_tasks=single,
                                              task_names=per_task_names,
                                              task_sizes=[len(t.attr_indices) for t in tasks]),
        primary_metrics=["precision", "recall", "fscore"],
    )


def celeba_shape(recipe) -> tuple[list[int], tuple[int, ...]]:
    tasks = celeba_tasks(recipe.task_set)
    return [len(t.attr_indices) for t in tasks], (3, recipe.image_size, recipe.image_size)
