"""Tasks: what one task of a problem is, and per kind its loss, batch target and metric keys.

One module per kind (``segmentation.py``: multi-class and one-vs-rest segmentation, ``depth.py``,
``normals.py``, ``attributes.py``: CelebA's binary attributes; Vandenhende et al.'s NYUD / PASCAL
tasks: ``edge.py``, ``saliency.py``, ``normals_l1.py``), each registering a
:class:`~.base.TaskKind` in ``TASK_KINDS``. A problem (``mtlrepro/problems/``) lists its
:class:`~.base.Task` s and calls :func:`task_loss` / :func:`batch_target`; the metric keys a kind
produces are declared per averaging rule (``"batch"``: MTAN's and Max Roaming's per-batch means;
``"pooled"``: LibMTL's over all valid pixels), each key defined once in
:mod:`mtlrepro.metrics.definitions`. Which rule a table uses is its columns' choice of key.
"""
from __future__ import annotations

from .base import TASK_KINDS, Task, TaskKind, batch_target, task_loss, task_loss_fn

__all__ = ["TASK_KINDS", "Task", "TaskKind", "batch_target", "task_loss", "task_loss_fn"]
