"""The ``Task`` of a problem and the ``TASK_KINDS`` registry of what each kind of task means."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor, "Task"], torch.Tensor]
TargetFn = Callable[["Task", torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Task:
    """One task of a problem: its name, kind (a ``TASK_KINDS`` key), output channels and, for a
    one-vs-rest segmentation task, its class."""

    name: str
    kind: str
    out_dim: int
    cls: int | None = None


@dataclass(frozen=True)
class TaskKind:
    """What a kind of task means: its loss, how a stored target becomes the batch target, and
    the metric keys it produces under each averaging rule."""

    name: str
    loss: LossFn
    batch_target: TargetFn
    metric_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)   # averaging rule -> keys
    description: str = ""


TASK_KINDS: Registry[TaskKind] = Registry("task kind")


def register(kind: TaskKind) -> TaskKind:
    TASK_KINDS.register(kind.name, kind)
    return kind


def stored_as_is(task: Task, stored: torch.Tensor) -> torch.Tensor:
    return stored


def _kind(task: Task) -> TaskKind:
    # noqa below: imported to register the kinds
    from . import attributes, depth, edge, normals, normals_l1, saliency, segmentation  # noqa: F401
    return TASK_KINDS.get(task.kind)


def task_loss(task: Task, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The task's loss on one batch (a scalar, a mean over what the loss is defined on)."""
    return _kind(task).loss(out, target, task)


def task_loss_fn(task: Task) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``task_loss`` bound to ``task``: ``f(out, target)``."""
    kind = _kind(task)
    return lambda out, target: kind.loss(out, target, task)


def batch_target(task: Task, stored: torch.Tensor) -> torch.Tensor:
    """A batch of stored targets (int8 labels, float32 depth / normals) -> the task's batch target."""
    return _kind(task).batch_target(task, stored)
