"""Maximum Roaming (Pascal et al., AAAI 2021): task routing whose masks roam during training.

Same units and initial masks as :mod:`task_routing`. At each roaming update, in every layer and
for every task, one currently INACTIVE unit is switched on and one ACTIVE unit switched off, so
each task keeps the same number of active units:

* incoming: the inactive unit with the lowest usage count for that task (``usage[t, c]`` = how
  many times unit ``c`` has been activated for task ``t``, the initial mask counting once),
  uniformly at random among ties. While some inactive unit has never been used by the task,
  this is exactly the reference code's rule ("random among never-tested units");
* outgoing: uniformly at random among the active units (before the swap).

Keyword arguments:

* ``sharing_ratio`` = 0.8: fraction of units active per task; Maximum Roaming's CelebA value
  (``celeba/train_MR.py``; Cityscapes 0.6, NYUv2 0.8). ETR-NLP Table 3 labels its Max Roaming
  row "gamma = 0.9"; pass 0.9 to follow that label instead.
* ``update_every`` = 0.1: roaming period as a fraction of an epoch (CelebA: ~10 updates per
  epoch). Below 1 the updates happen in :meth:`on_train_step` at global steps
  ``s > 0`` with ``s % (int(update_every * steps_per_epoch) + 1) == 0`` (the reference code's
  interval formula; its check runs after batch ``s`` and ours before it - one batch apart).
  ``update_every >= 1`` means every ``round(update_every)`` epochs, in :meth:`on_epoch_end`
  (the dense-prediction setting: 1.0).
* ``update_ratio`` = 1.0: a layer stops roaming after ``round(update_ratio * n_inactive)``
  updates (the reference code's stopping rule; with 1.0 every unit has then been visited by
  every task - "maximum roaming" reached). ``None`` roams until training ends (the
  lowest-usage rule keeps cycling through units).
* ``mask_seed`` = 0: seeds both the initial masks and the roaming choices. The choices of
  update ``u`` in unit ``l`` for task ``t`` are keyed by ``(mask_seed, u, l, t)`` through
  SeedSequence's hash (:func:`~mtlrepro.models.primitives.seeded_index`), never the global RNG
  nor a numpy ``Generator`` method, so a run resumed from a ``state_dict`` (masks, usage counts
  and the update counter are buffers) roams exactly like an uninterrupted one, with any numpy.
"""
from __future__ import annotations

import numpy as np
import torch

from ..registries import SHARING
from ..primitives import derive_seed, seeded_index
from .task_routing import MaskedUnit, TaskRouting

__all__ = ["MaxRoaming"]

_ROAM_TAG = 0x524F414D  # "ROAM": separates roaming streams from the mask-init streams


@SHARING.register("max_roaming")
class MaxRoaming(TaskRouting):
    task_conditional = True
    _track_usage = True
    version = 2  # 2: initial masks and roaming choices keyed by SeedSequence (1: numpy Generator)

    def __init__(self, backbone: str = "resnet18", out_dims: list[int] | None = None,
                 sharing_ratio: float = 0.8, update_every: float = 0.1,
                 update_ratio: float | None = 1.0, mask_seed: int = 0, **backbone_kwargs):
        if update_every <= 0:
            raise ValueError("update_every must be > 0 (fraction of an epoch, or epochs if >= 1)")
        self.update_every = float(update_every)
        self.update_ratio = None if update_ratio is None else float(update_ratio)
        super().__init__(backbone, out_dims, sharing_ratio=sharing_ratio, mask_seed=mask_seed,
                         **backbone_kwargs)
        self.register_buffer("roam_updates", torch.zeros((), dtype=torch.int64))

    # --- schedule -----------------------------------------------------------------------------
    def on_train_step(self, step: int, steps_per_epoch: int) -> None:
        if self.update_every >= 1:
            return
        interval = int(self.update_every * steps_per_epoch) + 1
        if step > 0 and step % interval == 0:
            self.roam()

    def on_epoch_end(self, epoch: int) -> None:
        if self.update_every < 1:
            return
        period = max(1, int(round(self.update_every)))
        if (epoch + 1) % period == 0:
            self.roam()

    # --- roaming ------------------------------------------------------------------------------
    def layer_update_limit(self, unit: MaskedUnit) -> int | None:
        if self.update_ratio is None:
            return None
        n_inactive = unit.mask.shape[1] - unit.n_active
        return int(round(self.update_ratio * n_inactive))

    @torch.no_grad()
    def roam(self) -> int:
        """One roaming update of every layer still roaming; returns how many layers changed."""
        u = int(self.roam_updates)
        changed = 0
        for layer, unit in enumerate(self.masked_units()):
            limit = self.layer_update_limit(unit)
            if limit is not None and u >= limit:
                continue
            mask = unit.mask.cpu().numpy().copy()
            usage = unit.usage.cpu().numpy().copy()
            if mask.all() or not mask.any(axis=1).all():
                continue  # sigma = 1 (nothing inactive) or a task with no active unit
            key = derive_seed(_ROAM_TAG, self.mask_seed, u, layer)
            for t in range(mask.shape[0]):
                inactive = np.flatnonzero(mask[t] == 0)
                active = np.flatnonzero(mask[t] > 0)
                if inactive.size == 0:
                    continue
                least = inactive[usage[t, inactive] == usage[t, inactive].min()]
                incoming = least[seeded_index(least.size, key, t, 0)]
                outgoing = active[seeded_index(active.size, key, t, 1)]
                mask[t, incoming], mask[t, outgoing] = 1.0, 0.0
                usage[t, incoming] += 1
            unit.mask.copy_(torch.from_numpy(mask))
            unit.usage.copy_(torch.from_numpy(usage))
            changed += 1
        self.roam_updates += 1
        return changed
