"""Dense prediction on MTAN's Cityscapes (128x256) and NYUv2 (288x384): tasks, losses, metrics.

Task sets (``recipe.task_set``):

======================  ===========================================================  =========
set                     tasks (out_dim)                                               source
======================  ===========================================================  =========
cityscapes ``mr8``      7 one-vs-rest segmentations ``seg_<class>`` (1 each) + depth   Max Roaming, ETR-NLP
cityscapes ``std2``     ``segmentation`` (7) + ``depth`` (1)                           MTAN, LibMTL/CoNAL
nyuv2 ``mr15``          13 one-vs-rest segmentations + depth (1) + normals (3)         Max Roaming, ETR-NLP
nyuv2 ``std3``          ``segmentation`` (13) + ``depth`` (1) + ``normals`` (3)        MTAN, LibMTL/CoNAL
======================  ===========================================================  =========

Model outputs: per task a tensor (B, out_dim, H, W) at the input resolution, raw (logits for
segmentation, unnormalised vectors for normals). Losses (MTAN's ``model_fit``, Max Roaming's
``model_fit``; implemented per task kind in :mod:`mtlrepro.tasks`), each a mean over the pixels it
is defined on:

* one-vs-rest segmentation: sigmoid + binary cross-entropy over **all** pixels; ignore pixels
  (-1) are negatives for every class, as Max Roaming's one-hot encoding makes them;
* segmentation: cross-entropy over the pixels whose label is not -1;
* depth: L1 over pixels with depth != 0;
* normals: 1 - cosine between the L2-normalised prediction and the target over pixels whose
  target is not all-zero. (Max Roaming's NYUv2 code masks its normal loss with the *depth*
  mask -- a slip; the normals' own mask is used here, as in MTAN.)

Invalid pixels are masked with ``torch.where`` on the prediction, so whatever the model
outputs there (even inf or NaN) neither changes the loss nor gets a gradient.

Batches hold targets as documented in :func:`dense_tasks`: (B, 1, H, W) float32 0/1 masks for a
one-vs-rest task, (B, H, W) int64 class maps (-1 ignore) for multi-class segmentation,
(B, 1, H, W) float32 depth, (B, 3, H, W) float32 normals. On the device the labels are kept
once as int8 (not one float mask per class: 4 x 7 times less memory on Cityscapes) and
expanded per batch (:class:`DenseProblem`).

Evaluation (the ``val`` split, MTAN's test set) returns the same keys for every task set, and
each key has one definition (:mod:`mtlrepro.metrics.definitions`), whatever the task set:

* ``miou``, ``pixel_acc`` (percent): MTAN's multi-class confusion matrix over the whole split
  (:class:`~mtlrepro.metrics.ConfusionMatrixIoU`) of the argmax over the class scores - the
  softmax outputs of a multi-class set, the stacked per-class outputs of a one-vs-rest set
  (there pixels of no class, label -1, are ignored as in MTAN).
* ``miou_binary``, ``pixel_acc_binary`` (percent): Max Roaming's per-class binary IoU per image,
  averaged per batch, then over batches, then over the classes; its pixel accuracy counts true
  negatives (:class:`~mtlrepro.metrics.BinaryIoUPerImage`, ``averaging="batch"``). Class ``c`` is
  predicted where its one-vs-rest sigmoid is >= 0.5, or, for a multi-class output, where the
  argmax is ``c`` (the one-hot of the argmax); ignore pixels are negatives for every class. ETR-NLP
  follows Max Roaming's code, so this is the mIoU of its dense tables - for every row, the
  multi-class MTAN / Cross-stitch rows included (``reproduce/recipes/etr_nlp/table6.yaml``).
* ``abs_err``, ``rel_err`` on depth != 0 (:class:`~mtlrepro.metrics.DepthErrors`,
  ``averaging="batch"``: MTAN's and Max Roaming's per-batch mean, then the unweighted mean over
  batches); ``abs_err_pooled``, ``rel_err_pooled``: over all valid pixels of the split (LibMTL,
  CoNAL's tables).
* NYUv2: ``mean_angle``, ``median_angle`` (degrees), ``within_11_25``, ``within_22_5``,
  ``within_30`` (percent) per batch (:class:`~mtlrepro.metrics.NormalAngles`,
  ``averaging="batch"``), and the same five with ``_pooled`` over all valid pixels (LibMTL).

"Per batch" means batches of the *reference's* test loader, not of our evaluation loop: the
evaluator regroups whatever batches it is given into consecutive groups of
:data:`METRIC_BATCH_SIZE` samples (Max Roaming's test batch: 8 on Cityscapes, 2 on NYUv2;
MTAN's NYUv2 test batch is 2 as well). Test loaders do not shuffle, so the groups are exactly the
reference's batches. LibMTL (CoNAL) weights its per-batch depth errors by the batch's number of
valid pixels and pools all normal angles, i.e. the ``_pooled`` keys, which do not depend on the
grouping.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..data.mtan_npy import DenseTensors, MtanSpec
from ..metrics import BinaryIoUPerImage, ConfusionMatrixIoU, DepthErrors, NormalAngles
from ..tasks import Task, batch_target, task_loss_fn
from ..tasks.normals import NORMAL_KEYS
from ..tasks.segmentation import SEG_KEYS, as_mask
from .base import Problem, Split
from .paths import (cache_dir_override, data_expect, data_root_or_explain, ensure_tiny_dataset, note_subset,
                    source_info)

#: Samples per metric batch: the reference code's test batch size (see the module docstring).
METRIC_BATCH_SIZE: dict[str, int] = {"cityscapes": 8, "nyuv2": 2}

#: Max Roaming's per-class IoU over batches. Cityscapes (``train_MR.py``): a batch in which a
#: class is neither present nor predicted in any image adds 0 and still counts as a batch;
#: NYUv2 (``train_MR.py``): such a batch is left out of that class's mean.
MR_EMPTY_BATCHES: dict[str, str] = {"cityscapes": "zero", "nyuv2": "exclude"}


# --------------------------------------------------------------------------- task sets


def _spec(dataset: str) -> MtanSpec:
    if dataset == "cityscapes":
        from ..data.cityscapes import CITYSCAPES
        return CITYSCAPES
    if dataset == "nyuv2":
        from ..data.nyuv2 import NYUV2
        return NYUV2
    from ..registry import UnknownKeyError
    raise UnknownKeyError("dense dataset", dataset, ["cityscapes", "nyuv2"])


def dense_tasks(dataset: str, task_set: str) -> list[Task]:
    """The tasks of ``task_set`` on ``dataset`` ("cityscapes": mr8 | std2; "nyuv2": mr15 | std3)."""
    from ..data.datasets import get_dataset
    spec = _spec(dataset)
    get_dataset(dataset).task_set(task_set)   # unknown sets raise with the closest names
    if task_set.startswith("mr"):
        tasks = [Task(f"seg_{c}", "binary_seg", 1, i) for i, c in enumerate(spec.class_names)]
    else:
        tasks = [Task("segmentation", "seg", spec.n_classes)]
    tasks.append(Task("depth", "depth", 1))
    if spec.has_normals:
        tasks.append(Task("normals", "normals", 3))
    return tasks


# --------------------------------------------------------------------------- evaluation


class _BinaryIoUExcludeEmptyBatches(BinaryIoUPerImage):
    """Max Roaming's NYUv2 averaging of ``averaging="batch"``: a class's mean runs over the
    batches in which it was counted at least once (its Cityscapes code divides by all batches)."""

    def compute_per_class(self) -> np.ndarray:
        if self._iou_sum is None:
            return np.full(self.n_classes, np.nan)
        s = self._iou_sum.cpu().numpy().astype(np.float64)
        cnt = self._iou_cnt.cpu().numpy()
        return np.divide(100.0 * s, cnt, out=np.full_like(s, np.nan), where=cnt > 0)


def one_hot_argmax(scores: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) class scores -> (B, C, H, W) float 0/1 masks, 1 where the class is the argmax."""
    classes = torch.arange(scores.shape[1], device=scores.device).view(1, -1, 1, 1)
    return (scores.argmax(1, keepdim=True) == classes).to(torch.float32)


class DenseEvaluator:
    """Streams all tasks' outputs of the eval split into the metrics listed in the module doc.

    ``update(outputs, targets)`` takes one list entry per task, batches as the trainer gives
    them; they are regrouped into metric batches of ``metric_batch`` samples (the last group of
    the split may be smaller, as the reference's last test batch).
    """

    def __init__(self, tasks: list[Task], n_classes: int, metric_batch: int = 8,
                 mr_empty_batches: str = "zero"):
        if metric_batch < 1:
            raise ValueError("metric_batch must be >= 1")
        if mr_empty_batches not in ("zero", "exclude"):
            raise ValueError("mr_empty_batches must be 'zero' or 'exclude'")
        self.tasks = tasks
        self.n_classes = n_classes
        self.metric_batch = int(metric_batch)
        self.binary_idx = [i for i, t in enumerate(tasks) if t.kind == "binary_seg"]
        self.binary_cls = [tasks[i].cls for i in self.binary_idx]
        self.seg_idx = next((i for i, t in enumerate(tasks) if t.kind == "seg"), None)
        self.depth_idx = next((i for i, t in enumerate(tasks) if t.kind == "depth"), None)
        self.normals_idx = next((i for i, t in enumerate(tasks) if t.kind == "normals"), None)
        self.binary: BinaryIoUPerImage | None = None
        self.confusion: ConfusionMatrixIoU | None = None
        if self.binary_idx or self.seg_idx is not None:
            cls = _BinaryIoUExcludeEmptyBatches if mr_empty_batches == "exclude" else BinaryIoUPerImage
            # one-vs-rest outputs are logits (sigmoid >= 0.5); multi-class ones arrive as the
            # one-hot of their argmax (>= 0.5 selects the argmax class)
            self.binary = cls(len(self.binary_idx) or n_classes, threshold=0.5,
                              from_logits=bool(self.binary_idx), empty="exclude", averaging="batch")
            self.confusion = ConfusionMatrixIoU(n_classes)
        self.depth = self.depth_pooled = None
        if self.depth_idx is not None:
            self.depth, self.depth_pooled = DepthErrors(averaging="batch"), DepthErrors(averaging="pooled")
        self.normals = self.normals_pooled = None
        if self.normals_idx is not None:
            self.normals, self.normals_pooled = NormalAngles(averaging="batch"), NormalAngles(averaging="pooled")
        self._pending: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def update(self, outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> None:
        if len(outputs) != len(self.tasks) or len(targets) != len(self.tasks):
            raise ValueError(f"expected {len(self.tasks)} outputs and targets, got "
                             f"{len(outputs)} and {len(targets)}")
        outs = [o.detach() for o in outputs]
        tgts = list(targets)
        if self._pending is not None:
            po, pt = self._pending
            outs = [torch.cat([a, b]) for a, b in zip(po, outs)]
            tgts = [torch.cat([a, b]) for a, b in zip(pt, tgts)]
            self._pending = None
        n, m = outs[0].shape[0], self.metric_batch
        full = n - n % m
        for lo in range(0, full, m):
            self._update_batch([o[lo:lo + m] for o in outs], [t[lo:lo + m] for t in tgts])
        if full < n:
            self._pending = ([o[full:] for o in outs], [t[full:] for t in tgts])

    @torch.no_grad()
    def _update_batch(self, outs: list[torch.Tensor], tgts: list[torch.Tensor]) -> None:
        if self.binary_idx:
            logits = torch.cat([outs[i] for i in self.binary_idx], 1)
            masks = torch.cat([as_mask(tgts[i], c) for i, c in zip(self.binary_idx, self.binary_cls)], 1)
            self.binary.update(logits, masks)  # type: ignore[union-attr]
            positive = masks > 0.5  # one-hot: argmax is the class; no class -> ignore (-1)
            labels = torch.where(positive.any(1), masks.argmax(1),
                                 torch.full_like(positive[:, 0], -1, dtype=torch.int64))
            self.confusion.update(logits, labels)  # type: ignore[union-attr]
        if self.seg_idx is not None:
            scores, labels = outs[self.seg_idx], tgts[self.seg_idx]
            self.binary.update(one_hot_argmax(scores), labels)  # type: ignore[union-attr]
            self.confusion.update(scores, labels)  # type: ignore[union-attr]
        if self.depth is not None:
            for acc in (self.depth, self.depth_pooled):
                acc.update(outs[self.depth_idx], tgts[self.depth_idx])
        if self.normals is not None:
            for acc in (self.normals, self.normals_pooled):
                acc.update(outs[self.normals_idx], tgts[self.normals_idx])

    def compute(self) -> dict[str, float]:
        if self._pending is not None:
            self._update_batch(*self._pending)
            self._pending = None
        out: dict[str, float] = {}
        if self.binary is not None:
            for name, acc in (("binary", self.binary), ("confusion", self.confusion)):
                r = acc.compute()  # type: ignore[union-attr]
                out.update(zip(SEG_KEYS[name], (r["miou"], r["pixel_acc"])))
        if self.depth is not None:
            d, dp = self.depth.compute(), self.depth_pooled.compute()  # type: ignore[union-attr]
            out.update(abs_err=d["abs_err"], rel_err=d["rel_err"],
                       abs_err_pooled=dp["abs_err"], rel_err_pooled=dp["rel_err"])
        if self.normals is not None:
            out.update(self.normals.compute())
            out.update({f"{k}_pooled": v for k, v in self.normals_pooled.compute().items()})  # type: ignore[union-attr]
        return out




def metric_keys(dataset: str, task_set: str) -> list[str]:
    """The keys :class:`DenseEvaluator` returns for this task set, the task set's primary ones
    (:func:`primary_metric_keys`) first. The key set is the same for every task set."""
    primary = primary_metric_keys(dataset, task_set)
    keys = [*SEG_KEYS["binary"], *SEG_KEYS["confusion"], "abs_err", "rel_err", "abs_err_pooled",
            "rel_err_pooled"]
    if _spec(dataset).has_normals:
        keys += [*NORMAL_KEYS, *(f"{k}_pooled" for k in NORMAL_KEYS)]
    return primary + [k for k in keys if k not in primary]


def primary_metric_keys(dataset: str, task_set: str) -> list[str]:
    """The keys of the task set's own protocol: Max Roaming's binary segmentation metrics for the
    one-vs-rest (``mr``) sets, MTAN's confusion-matrix ones for the multi-class sets; per-batch
    depth and normal errors for both (MTAN and Max Roaming average per batch)."""
    keys = list(SEG_KEYS["binary" if task_set.startswith("mr") else "confusion"]) + ["abs_err", "rel_err"]
    if _spec(dataset).has_normals:
        keys += list(NORMAL_KEYS)
    return keys


# --------------------------------------------------------------------------- the problem


@dataclass
class DenseProblem(Problem):
    """A :class:`Problem` whose stored targets are compact (int8 labels shared by all
    segmentation tasks) and expanded to each task's batch target by ``batch_targets``."""

    batch_targets: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None

    def _expand(self, targets: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.batch_targets(targets) if self.batch_targets is not None else targets

    def train_batches(self, batch_size: int, epoch: int, seed: int,
                      max_steps: int | None = None) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        for x, targets in super().train_batches(batch_size, epoch, seed, max_steps):
            yield x, self._expand(targets)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        for x, targets in super().eval_batches(batch_size):
            yield x, self._expand(targets)


def dense_input_hw(spec: MtanSpec, image_size: int) -> tuple[int, int]:
    """(H, W) the model sees: MTAN's resolution when ``image_size`` is its height (128 / 288),
    else (tiny profile) ``image_size`` high and the width at the same aspect ratio rounded to a
    multiple of 32 (SegNet pools five times): Cityscapes 32 -> 32x64, NYUv2 32 -> 32x32."""
    h, w = spec.hw
    if image_size == h:
        return spec.hw
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return image_size, 32 * max(1, round(image_size * w / h / 32))


def _resize(d: DenseTensors, hw: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Downscale one split: images by area averaging, targets by nearest neighbour (which keeps
    -1 labels, 0 depth and all-zero normals as they are instead of blending them)."""
    images = F.interpolate(d.images.float(), size=hw, mode="area").to(torch.float16)
    labels = F.interpolate(d.labels[:, None].float(), size=hw, mode="nearest")[:, 0].to(torch.int8)
    depth = F.interpolate(d.depth, size=hw, mode="nearest")
    normals = F.interpolate(d.normals, size=hw, mode="nearest") if d.normals is not None else None
    return images, labels, depth, normals


def _build_dense_problem(dataset: str, recipe, profile: str, data_root: str | None,
                         device: torch.device, expect: str | None = None) -> DenseProblem:
    from ..data.mtan_npy import load_mtan

    spec = _spec(dataset)
    expect = data_expect(profile, expect)
    tasks = dense_tasks(dataset, recipe.task_set)
    if recipe.eval_split != "val":
        raise ValueError(f"{recipe.id}: eval_split {recipe.eval_split!r}; MTAN's {spec.title} has "
                         "train and val only, and val is the test split of the papers: use 'val'")
    hw = dense_input_hw(spec, recipe.image_size)
    if profile == "tiny":
        root = ensure_tiny_dataset(dataset)
        synthetic = True
    else:
        if hw != spec.hw:
            raise ValueError(f"{recipe.id}: image_size {recipe.image_size}, but MTAN's {spec.title} "
                             f"is {spec.hw[0]}x{spec.hw[1]} and the papers train at that size: set "
                             f"image_size: {spec.hw[0]}")
        root = data_root_or_explain(dataset, data_root)
        synthetic = False
    cache_dir = cache_dir_override(root, dataset)
    show = profile != "tiny"
    train = load_mtan(spec, root, "train", cache_dir, expect, progress=show)
    ev = load_mtan(spec, root, "val", cache_dir, expect, progress=show)

    def split(d: DenseTensors) -> Split:
        if hw != spec.hw:
            images, labels, depth, normals = _resize(d, hw)
        else:
            images, labels, depth, normals = d.images, d.labels, d.depth, d.normals
        labels, depth = labels.to(device), depth.to(device)  # one copy, shared by the seg tasks
        normals = normals.to(device) if normals is not None else None
        stored = {"binary_seg": labels, "seg": labels, "depth": depth, "normals": normals}
        return Split(images.to(device), [stored[t.kind] for t in tasks])

    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format

    def prepare(x: torch.Tensor) -> torch.Tensor:
        # float16 cache -> float32; MTAN's inputs are already in [0, 1] and not normalised further
        return x.float().contiguous(memory_format=memory_format)

    losses = [task_loss_fn(t) for t in tasks]

    def task_loss(t: int, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return losses[t](out, target)

    def batch_targets(targets: list[torch.Tensor]) -> list[torch.Tensor]:
        return [batch_target(t, y) for t, y in zip(tasks, targets)]

    metric_batch = METRIC_BATCH_SIZE[dataset]
    empty = MR_EMPTY_BATCHES[dataset]
    primary = primary_metric_keys(dataset, recipe.task_set)
    return DenseProblem(
        name=f"{dataset}/{recipe.task_set}", task_names=[t.name for t in tasks],
        out_dims=[t.out_dim for t in tasks], input_shape=(3, *hw),
        train=split(train), eval=split(ev), eval_split="val", synthetic=synthetic,
        data_info={"root": str(root), "n_train": len(train), "n_eval": len(ev), "eval_split": "val",
                   "synthetic": synthetic, "dataset": dataset, "task_set": recipe.task_set,
                   "layout": train.layout, "native_hw": list(spec.hw), "input_hw": list(hw),
                   "source_dtypes": train.source_dtypes, "metric_batch_size": metric_batch,
                   "subset": note_subset(spec.title, expect, profile, {"train": len(train), "val": len(ev)},
                                         spec.split_sizes),
                   **source_info(train=train, eval=ev),
                   "segmentation_metric": ("miou_binary: Max Roaming's binary IoU per image; miou: "
                                           "MTAN's confusion matrix of the argmax")},
        prepare=prepare, task_loss=task_loss,
        new_evaluator=lambda: DenseEvaluator(tasks, spec.n_classes, metric_batch, empty),
        primary_metrics=primary, batch_targets=batch_targets,
    )


def build_cityscapes_problem(recipe, profile: str, data_root: str | None, device: torch.device,
                             expect: str | None = None) -> DenseProblem:
    return _build_dense_problem("cityscapes", recipe, profile, data_root, device, expect)


def build_nyuv2_problem(recipe, profile: str, data_root: str | None, device: torch.device,
                        expect: str | None = None) -> DenseProblem:
    return _build_dense_problem("nyuv2", recipe, profile, data_root, device, expect)


def _shape(dataset: str, recipe) -> tuple[list[int], tuple[int, ...]]:
    tasks = dense_tasks(dataset, recipe.task_set)
    return [t.out_dim for t in tasks], (3, *dense_input_hw(_spec(dataset), recipe.image_size))


def cityscapes_shape(recipe) -> tuple[list[int], tuple[int, ...]]:
    return _shape("cityscapes", recipe)


def nyuv2_shape(recipe) -> tuple[list[int], tuple[int, ...]]:
    return _shape("nyuv2", recipe)
