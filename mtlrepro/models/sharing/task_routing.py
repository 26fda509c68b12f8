"""Task routing (Strezoski et al., ICCV 2019) with Maximum Roaming's conventions.

Every conv unit (all 20 of ResNet18, as in the Maximum Roaming code) is conv -> BN -> a fixed
binary channel mask of the active task (then the ReLU / residual addition). One task is active
per forward pass.

Keyword arguments:

* ``sharing_ratio`` (sigma) = 0.9: the fraction of units ACTIVE for each task (Maximum
  Roaming's convention; the original task-routing paper's sigma is the fraction switched OFF).
  0.9 is the value the Maximum Roaming paper uses for its CelebA task-routing baseline and the
  one ETR-NLP Table 3 prints ("Task routing (gamma = 0.9)"). Each task gets
  ``n_active = C - floor((1 - sigma) * C)`` active units per layer (the Maximum Roaming code
  adds units until the inactive fraction is <= 1 - sigma).
* ``mask_seed`` = 0: the masks are a deterministic function of ``(mask_seed, unit index)``:
  each task's extra units are the subset keyed by ``(seed, task)`` through SeedSequence's hash
  (:func:`~mtlrepro.models.primitives.seeded_subset`; no global RNG, no numpy ``Generator``
  method, whose algorithms may change between numpy releases).

Initialisation (Maximum Roaming's, so every unit is used by at least one task): task ``k`` first
gets units ``k, k+T, k+2T, ...`` until every unit is covered (the shifted identity matrices of
the reference code), then random extra units until it has ``n_active``. If the covering alone
needs more than ``n_active`` units for some task (only when ``sigma < ceil(C/T)/C``), that task
keeps the covering (the reference code does the same).

Masks are float buffers ``mask`` of shape ``(T, C)`` in every :class:`MaskedUnit`, so they are
in ``state_dict``; they hold no parameters, so the per-task parameter count is that of hard
sharing with one head (11.18M; published 11.2M).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ..interface import TaskContext, UnitMTLModel
from ..registries import SHARING
from ..units import ConvBN, ConvSpec
from ..primitives import derive_seed, seeded_subset

__all__ = ["TaskRouting", "MaskedUnit", "init_routing_mask", "n_active_units"]


def n_active_units(n_units: int, sigma: float) -> int:
    """Active units per task for sharing ratio ``sigma`` (fraction active)."""
    if not 0.0 < sigma <= 1.0:
        raise ValueError(f"sharing_ratio must be in (0, 1], got {sigma}")
    return n_units - int(math.floor((1.0 - sigma) * n_units + 1e-9))


def init_routing_mask(n_tasks: int, n_units: int, sigma: float, seed: int) -> np.ndarray:
    """``(T, C)`` 0/1 mask: every unit covered by >= 1 task, ~``sigma * C`` active per task."""
    n_active = n_active_units(n_units, sigma)
    mask = np.zeros((n_tasks, n_units), dtype=np.float32)
    if n_active == n_units:
        mask[:] = 1
        return mask
    for u in range(n_units):  # shifted identities: unit u -> task u mod T
        mask[u % n_tasks, u] = 1
    for k in range(n_tasks):  # task k's extra units: a uniform subset keyed by (seed, k)
        free = np.flatnonzero(mask[k] == 0)
        need = n_active - int(mask[k].sum())
        if need > 0:
            mask[k, seeded_subset(free, need, seed, k)] = 1
    return mask


class MaskedUnit(nn.Module):
    """conv -> BN -> ``mask[active task]`` (channel-wise 0/1).

    Batched task passes (``ctx.tasks``): conv -> BN (per-task statistics, see
    :func:`~mtlrepro.models.batched.norm.grouped_batch_norm`) on the ``(T*B, ...)`` batch, then one
    ``(T, 1, C, 1, 1)`` multiply by the tasks' masks.
    """

    batched_tasks = True

    def __init__(self, spec: ConvSpec, ctx: TaskContext, mask: np.ndarray, track_usage: bool = False):
        super().__init__()
        self.ctx = ctx
        self.spec = spec
        self.body = ConvBN(spec)
        self.register_buffer("mask", torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)))
        if track_usage:  # how often each unit has been activated for each task (roaming)
            self.register_buffer("usage", torch.from_numpy((mask > 0).astype(np.int64)))

    @property
    def n_active(self) -> int:
        return int(self.mask[0].sum())

    def forward(self, x: Tensor) -> Tensor:
        if self.ctx.tasks is not None:
            return self._forward_tasks(x)
        y = self.body(x)
        m = self.mask[self.ctx.require()]
        return y * m.to(y.dtype)[None, :, None, None]

    def _forward_tasks(self, x: Tensor) -> Tensor:
        n = len(self.ctx.tasks)
        y = self.body(x)
        m = self.ctx.select(self.mask).to(y.dtype)                    # (T, C)
        m = m.view(n, 1, -1, *([1] * (y.dim() - 2)))                  # (T, 1, C, 1, 1)
        return (y.unflatten(0, (n, -1)) * m).flatten(0, 1)


@SHARING.register("task_routing")
class TaskRouting(UnitMTLModel):
    """Fixed random per-task channel masks in every conv unit; see the module docstring."""

    task_conditional = True
    _track_usage = False
    version = 2  # 2: masks drawn by seeded_subset (1: numpy Generator.choice)

    def __init__(self, backbone: str = "resnet18", out_dims: list[int] | None = None,
                 sharing_ratio: float = 0.9, mask_seed: int = 0, **backbone_kwargs):
        n_active_units(64, sharing_ratio)  # validates sigma early
        self.sharing_ratio, self.mask_seed = float(sharing_ratio), int(mask_seed)
        super().__init__(backbone, out_dims or [], **backbone_kwargs)

    def make_unit(self, spec: ConvSpec) -> nn.Module:
        mask = init_routing_mask(self.ctx.n_tasks, spec.out_ch, self.sharing_ratio,
                                 derive_seed(self.mask_seed, spec.index))
        return MaskedUnit(spec, self.ctx, mask, track_usage=self._track_usage)

    def masked_units(self) -> list[MaskedUnit]:
        return [u for u in self.units() if isinstance(u, MaskedUnit)]

    def masks(self) -> list[Tensor]:
        """Current ``(T, C)`` masks of the units in forward order (copies)."""
        return [u.mask.detach().clone() for u in self.masked_units()]
