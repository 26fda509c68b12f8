"""Explicit task routing (ETR; Ding et al., CVPR 2023, Sec. 3.2).

Every conv unit becomes ``concat([shared(x), specific_t(x)], dim=1)``:

* a shared branch producing ``C_sh = round(gamma * C_out)`` channels, used by all tasks;
* one task-specific branch per task producing ``C_out - C_sh`` channels; only the active
  task's branch runs (``task_conditional``).

Each branch is conv -> its own BN (task-specific BN for the task branches). For ETR both
branches are ordinary learnable convs with the kernel size, stride and padding of the conv they
replace (so ONE task's forward pass uses exactly as many conv weights as hard sharing: the
published 11.2M for ResNet18); ETR-NLP (:mod:`etr_nlp`) swaps the shared branch for an NLP block.

Keyword arguments:

* ``gamma`` = 0.9: sharing ratio (Sec. 4.2.2: best on CelebA and Cityscapes, used for all main
  results). ``gamma = 1`` leaves no task branch (hard sharing run task by task), ``gamma = 0`` no
  shared branch (single-task networks).
* ``C_sh`` uses round-half-up (the brief's ``round(gamma * C_out)``); the paper's pseudocode
  uses ``int()``: for ResNet18 widths 64/128/256/512 that is 58/115/230/461 shared channels
  versus 57/115/230/460 - a difference of 0.02M parameters per task.
* All 20 ResNet18 conv units (stem and 1x1 projection shortcuts included) are ETR units: the
  paper replaces "the standard convolutional layers" without exception.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ..batched import per_task_conv_bn
from ..interface import PerTask, TaskContext, UnitMTLModel
from ..registries import SHARING
from ..units import ConvBN, ConvSpec

__all__ = ["ETR", "ETRUnit", "split_channels", "round_half_up"]


def round_half_up(x: float) -> int:
    """round() without banker's rounding: 57.6 -> 58, 0.5 -> 1."""
    return int(math.floor(x + 0.5 + 1e-9))


def split_channels(out_ch: int, gamma: float) -> tuple[int, int]:
    """``(C_shared, C_specific)`` for a unit with ``out_ch`` channels."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    c_sh = min(out_ch, round_half_up(gamma * out_ch))
    return c_sh, out_ch - c_sh


class ETRUnit(nn.Module):
    """Shared branch (``C_sh`` channels) + the active task's branch (``C_out - C_sh``).

    Batched task passes (``ctx.tasks``): the shared branch runs on the ``(T*B, ...)`` batch (its
    BN with per-task statistics); the tasks' branches run as one grouped convolution on
    accelerators, or per task on its rows on CPU, then one BN kernel over all tasks' channels
    (:func:`~mtlrepro.models.batched.per_task.per_task_conv_bn`); the two are concatenated as usual.
    """

    batched_tasks = True

    def __init__(self, spec: ConvSpec, ctx: TaskContext, gamma: float,
                 make_shared: Callable[[ConvSpec], nn.Module] = ConvBN,
                 make_specific: Callable[[ConvSpec], nn.Module] = ConvBN):
        super().__init__()
        self.ctx = ctx
        self.spec = spec
        self.c_shared, self.c_specific = split_channels(spec.out_ch, gamma)
        self.shared = make_shared(spec.with_channels(self.c_shared)) if self.c_shared else None
        self.specific = (PerTask([make_specific(spec.with_channels(self.c_specific))
                                  for _ in range(ctx.n_tasks)]) if self.c_specific else None)

    def forward(self, x: Tensor) -> Tensor:
        if self.ctx.tasks is not None:
            return self._forward_tasks(x)
        t = self.ctx.require()
        if self.specific is None:
            return self.shared(x)
        if self.shared is None:
            return self.specific[t](x)
        return torch.cat([self.shared(x), self.specific[t](x)], dim=1)

    def _forward_tasks(self, x: Tensor) -> Tensor:
        if self.specific is None:
            return self.shared(x)
        spec = per_task_conv_bn([self.specific[t] for t in self.ctx.tasks], x)
        if self.shared is None:
            return spec
        return torch.cat([self.shared(x), spec], dim=1)


@SHARING.register("etr")
class ETR(UnitMTLModel):
    """Explicit task routing with learnable conv branches; see the module docstring."""

    task_conditional = True

    def __init__(self, backbone: str = "resnet18", out_dims: list[int] | None = None,
                 gamma: float = 0.9, **backbone_kwargs):
        split_channels(64, gamma)  # validate early
        self.gamma = float(gamma)
        super().__init__(backbone, out_dims or [], **backbone_kwargs)

    def make_shared_branch(self, spec: ConvSpec) -> nn.Module:
        return ConvBN(spec)

    def make_unit(self, spec: ConvSpec) -> nn.Module:
        return ETRUnit(spec, self.ctx, self.gamma, make_shared=self.make_shared_branch)
