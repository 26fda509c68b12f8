"""Cross-stitch networks (Misra et al., CVPR 2016) on SegNet, as in MTAN's baseline.

Follows ``lorenmt/mtan`` ``im2im_pred/model_segnet_cross.py``: one full SegNet per task (the
``segnet`` backbone, built with plain conv -> BN units) and a cross-stitch unit before each
encoder stage but the first (4) and before each decoder stage's max-unpool (5). Task ``t``'s
decoder unpools with ITS OWN network's pooling indices. Not task-conditional: ``model(x)``
returns all ``T`` outputs.

``mixing`` (keyword argument):

* ``"mtan"`` (default): MTAN's implementation - each unit is ONE vector ``alpha`` of ``T``
  scalars, initialised to 1, and every task's next stage reads the same combination
  ``sum_k alpha[k] * x_k`` (``cs_unit_encoder = ones(4, T)``, ``cs_unit_decoder = ones(5, T)``).
  This is what reproduces the published counts: NYUv2 (``[13, 1, 3]``) 74,941,804 and Cityscapes
  (``[7, 1]``) 49,960,986 parameters, i.e. REFERENCE.md's 74,941,807 / 49,960,988 less MTAN's
  ``T`` ``logsigma`` scalars (see :mod:`mtlrepro.models.segnet`).
* ``"matrix"``: Misra et al.'s unit - a ``T x T`` matrix per unit, task ``t`` reads
  ``sum_k alpha[t, k] * x_k``, initialised to ``alpha_self`` on the diagonal and
  ``(1 - alpha_self) / (T - 1)`` elsewhere (``alpha_self`` = 0.9, the paper's preferred init).
  ``9 * (T^2 - T)`` more parameters than ``"mtan"``.

Backbone keyword arguments (``width_mult``, ``track_running_stats``) pass through. The backbone
must provide SegNet's stage-wise interface (``down`` / ``up``): only ``segnet`` does.

Initialisation: the backbone's (Xavier-normal convs, zero bias; MTAN's cross-stitch script alone
uses Xavier-uniform - same mean and variance family, a different distribution).

Parameter partition: network ``t`` and head ``t`` are task ``t``'s (:class:`PerTask`); the
cross-stitch units are shared. ``last_shared_layer()`` is the last cross-stitch unit (its
``weight`` is the ``alpha`` table).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..base import SHARING, MTLModel, build_task_networks
from ..segnet import unpool_size

__all__ = ["CrossStitch", "CrossStitchUnit"]


class CrossStitchUnit(nn.Module):
    """Mixes ``T`` same-shaped activations: ``weight`` is ``(T,)`` (mode ``"mtan"``: one shared
    combination) or ``(T, T)`` (``"matrix"``: row ``t`` is task ``t``'s combination)."""

    def __init__(self, n_tasks: int, mixing: str = "mtan", alpha_self: float = 0.9):
        super().__init__()
        self.mixing = mixing
        if mixing == "mtan":
            self.weight = nn.Parameter(torch.ones(n_tasks))
        elif mixing == "matrix":
            off = (1.0 - alpha_self) / (n_tasks - 1) if n_tasks > 1 else 0.0
            w = torch.full((n_tasks, n_tasks), off)
            w.fill_diagonal_(alpha_self if n_tasks > 1 else 1.0)
            self.weight = nn.Parameter(w)
        else:
            raise ValueError(f"mixing must be 'mtan' or 'matrix', got {mixing!r}")

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        if self.mixing == "mtan":
            mixed = sum(self.weight[k] * x for k, x in enumerate(xs))
            return [mixed] * len(xs)
        return [sum(self.weight[t, k] * x for k, x in enumerate(xs)) for t in range(len(xs))]


@SHARING.register("cross_stitch")
class CrossStitch(MTLModel):
    """One SegNet per task, linked by cross-stitch units between stages."""

    task_conditional = False

    def __init__(self, backbone: str = "segnet", out_dims: list[int] | None = None,
                 mixing: str = "mtan", alpha_self: float = 0.9, **backbone_kwargs):
        super().__init__()
        self._set_tasks(backbone, out_dims)
        self.mixing = mixing
        nets, heads, _ = build_task_networks(backbone, self.out_dims, **backbone_kwargs)
        if not all(hasattr(nets[0], a) for a in ("down", "up", "enc", "dec")):
            raise ValueError(f"cross_stitch needs a SegNet-style backbone with a stage-wise forward "
                             f"(backbone 'segnet'); got {backbone!r}")
        self.nets = nets
        self.heads = heads
        self.feature_dim = nets[0].out_features
        n_enc, n_dec = len(nets[0].enc), len(nets[0].dec)
        self.cs_enc = nn.ModuleList([CrossStitchUnit(self.n_tasks, mixing, alpha_self)
                                     for _ in range(n_enc - 1)])
        self.cs_dec = nn.ModuleList([CrossStitchUnit(self.n_tasks, mixing, alpha_self)
                                     for _ in range(n_dec)])

    def forward(self, x: Tensor, task: int | None = None) -> list[Tensor]:
        if task is not None:
            raise ValueError("cross_stitch is not task-conditional: call model(x) (returns all tasks)")
        T = self.n_tasks
        xs = [x] * T
        idx: list[list[Tensor]] = [[] for _ in range(T)]
        sizes: list = []
        for s in range(len(self.nets[0].enc)):
            if s > 0:
                xs = self.cs_enc[s - 1](xs)
            outs = []
            for t, net in enumerate(self.nets):
                _, last, pooled, i = net.down(s, xs[t])
                idx[t].append(i)
                outs.append(pooled)
                if t == 0:
                    sizes.append(unpool_size(last))
            xs = outs
        for d in range(len(self.nets[0].dec)):
            xs = self.cs_dec[d](xs)
            xs = [net.up(d, xs[t], idx[t][-d - 1], sizes[-d - 1])[2] for t, net in enumerate(self.nets)]
        return [h(z) for h, z in zip(self.heads, xs)]

    def units(self) -> list[nn.Module]:
        """The conv units of all ``T`` networks, network by network (26 each for SegNet)."""
        return [u for net in self.nets for u in net.units()]

    def last_shared_layer(self) -> nn.Module:
        return self.cs_dec[-1]

    def cross_stitch_units(self) -> list[CrossStitchUnit]:
        return list(self.cs_enc) + list(self.cs_dec)
