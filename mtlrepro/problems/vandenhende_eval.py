"""Evaluation of the NYUD_MT / PASCAL_MT problems: Vandenhende et al.'s online meters, per task kind.

One accumulator per task, chosen by the task's kind (``evaluation/*.py`` of
``SimonVandenhende/Multi-Task-Learning-PyTorch``, the meters its ``eval_model`` runs on the val
split at the training resolution):

=============  =========================================================  ======================
kind           keys                                                       repo meter
=============  =========================================================  ======================
``seg``        ``miou``, ``pixel_acc`` (confusion matrix over the split,  SemsegMeter,
               ignore -1)                                                 HumanPartsMeter
``depth``      ``rmse``, ``log_rmse`` (pooled, predictions clamped to     DepthMeter
               >= 1e-9); ``abs_err_pooled``, ``rel_err_pooled``
``normals_l1`` ``mean_angle_pooled``, ``median_angle_pooled``,            NormalsMeter
               ``within_*_pooled`` (every valid pixel of the split)
``saliency``   ``miou_best_threshold``, ``maxf``                          SaliencyMeter
``edge``       ``edge_loss`` (balanced BCE on logits, positive weight     EdgeMeter (see
               0.95, pooled)                                              mtlrepro.metrics.edge)
=============  =========================================================  ======================

When a problem has more than one ``seg`` task (PASCAL: semseg and human parts), their keys are
qualified by the task name (``semseg/miou``, ``human_parts/miou``; definitions resolve the base
key), otherwise they are not (NYUD: ``miou``). Every key has one definition in
:mod:`mtlrepro.metrics.definitions`.

Differences from the repo's meters, all on classes or images that the real val splits do not
contain or do not weigh: the repo's semseg / parts mIoU averages over *all* classes with 0 for a
class absent from prediction and target (here: left out, the ``miou`` definition); its
``NormalsMeter`` does not renormalise the target (here the targets are unit vectors anyway).
"""
from __future__ import annotations

import torch

from ..metrics.depth import DepthErrors
from ..metrics.depth_rmse import DepthRMSE
from ..metrics.edge import EdgeLoss
from ..metrics.normals import NormalAngles
from ..metrics.saliency import SaliencyMeter
from ..metrics.segmentation import ConfusionMatrixIoU
from ..tasks import Task
from ..tasks.edge import EDGE_POS_WEIGHT
from ..tasks.normals import NORMAL_KEYS

#: keys per kind, in the order :meth:`VandenhendeEvaluator.compute` returns them
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "seg": ("miou", "pixel_acc"),
    "depth": ("rmse", "log_rmse", "abs_err_pooled", "rel_err_pooled"),
    "normals_l1": tuple(f"{k}_pooled" for k in NORMAL_KEYS),
    "saliency": ("miou_best_threshold", "maxf"),
    "edge": ("edge_loss",),
}


def task_keys(tasks: list[Task]) -> list[list[str]]:
    """The metric keys of each task (seg keys qualified when there are several seg tasks)."""
    unknown = [t.kind for t in tasks if t.kind not in KIND_KEYS]
    if unknown:
        raise ValueError(f"no Vandenhende evaluation for task kinds {unknown}")
    qualify = sum(t.kind == "seg" for t in tasks) > 1
    out = [[f"{t.name}/{k}" if qualify and t.kind == "seg" else k for k in KIND_KEYS[t.kind]]
           for t in tasks]
    flat = [k for ks in out for k in ks]
    if len(flat) != len(set(flat)):
        raise ValueError(f"tasks {[t.name for t in tasks]} would report one key twice: {flat}")
    return out


class _Depth:
    def __init__(self) -> None:
        self.rmse, self.errors = DepthRMSE(), DepthErrors(averaging="pooled")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.rmse.update(pred, target)
        self.errors.update(pred, target)

    def compute(self) -> dict[str, float]:
        e = self.errors.compute()
        return {**self.rmse.compute(), "abs_err_pooled": e["abs_err"], "rel_err_pooled": e["rel_err"]}


class _Renamed:
    """An accumulator whose keys get a suffix (NormalAngles' keys -> ``*_pooled``)."""

    def __init__(self, acc, suffix: str) -> None:
        self.acc, self.suffix = acc, suffix

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.acc.update(pred, target)

    def compute(self) -> dict[str, float]:
        return {f"{k}{self.suffix}": v for k, v in self.acc.compute().items()}


def _accumulator(task: Task):
    if task.kind == "seg":
        return ConfusionMatrixIoU(task.out_dim, ignore_index=-1)
    if task.kind == "depth":
        return _Depth()
    if task.kind == "normals_l1":
        return _Renamed(NormalAngles(averaging="pooled"), "_pooled")
    if task.kind == "saliency":
        return SaliencyMeter()
    return EdgeLoss(pos_weight=EDGE_POS_WEIGHT)


class VandenhendeEvaluator:
    """Streams every task's outputs of the eval split into its accumulator (table above).

    ``update(outputs, targets)``: one entry per task, outputs at the input resolution (logits for
    seg / saliency / edge, raw vectors for normals, depth in metres), batch targets as the
    problem's ``batch_targets`` makes them.
    """

    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = list(tasks)
        self.keys = task_keys(self.tasks)
        self.accs = [_accumulator(t) for t in self.tasks]

    def update(self, outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> None:
        if len(outputs) != len(self.tasks) or len(targets) != len(self.tasks):
            raise ValueError(f"expected {len(self.tasks)} outputs and targets, got "
                             f"{len(outputs)} and {len(targets)}")
        for acc, out, tgt in zip(self.accs, outputs, targets):
            acc.update(out.detach(), tgt)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for acc, keys in zip(self.accs, self.keys):
            vals = acc.compute()
            base = [k.rsplit("/", 1)[-1] for k in keys]
            out.update((k, float(vals[b])) for k, b in zip(keys, base))
        return out
