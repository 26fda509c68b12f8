"""Cross-stitch networks (Misra et al., CVPR 2016) on any staged backbone (MTAN's SegNet baseline).

One full backbone per task (built with plain conv -> BN units) and a cross-stitch unit between
every two consecutive stages of the
:class:`~mtlrepro.models.backbones.protocol.StagedBackbone` protocol, mixing the tasks' stage
outputs (``out`` taps) before the next stage reads them. Each task's network keeps its own pass
state (with ``segnet``: task ``t``'s decoder unpools with ITS OWN network's pooling indices).
With ``segnet`` this is ``lorenmt/mtan`` ``im2im_pred/model_segnet_cross.py``: the 4 units of
``cs_enc`` sit before each encoder stage but the first (after the previous stage's max pool),
the 5 of ``cs_dec`` before each decoder stage's max-unpool. With ``resnet18``: 3 units, between
``layer1`` .. ``layer4`` (``cs_enc``), as Misra et al. place them after each pooling stage.
Not task-conditional: ``model(x)`` returns all ``T`` outputs.

``mixing`` (keyword argument):

* ``"mtan"`` (default): MTAN's implementation - each unit is ONE vector ``alpha`` of ``T``
  scalars, initialised to 1, and every task's next stage reads the same combination
  ``sum_k alpha[k] * x_k`` (``cs_unit_encoder = ones(4, T)``, ``cs_unit_decoder = ones(5, T)``).
  This is what reproduces the published counts: NYUv2 (``[13, 1, 3]``) 74,941,804 and Cityscapes
  (``[7, 1]``) 49,960,986 parameters, i.e. REFERENCE.md's 74,941,807 / 49,960,988 less MTAN's
  ``T`` ``logsigma`` scalars (see :mod:`mtlrepro.models.backbones.segnet`).
* ``"matrix"``: Misra et al.'s unit - a ``T x T`` matrix per unit, task ``t`` reads
  ``sum_k alpha[t, k] * x_k``, initialised to ``alpha_self`` on the diagonal and
  ``(1 - alpha_self) / (T - 1)`` elsewhere (``alpha_self`` = 0.9, the paper's preferred init).
  ``(units) * (T^2 - T)`` more parameters than ``"mtan"`` (9 units on SegNet).

Backbone keyword arguments (``width_mult``, ``track_running_stats``) pass through. The backbone
must be a ``StagedBackbone`` with at least two stages.

Initialisation: the backbone's (Xavier-normal convs, zero bias; MTAN's cross-stitch script alone
uses Xavier-uniform - same mean and variance family, a different distribution).

Parameter partition: network ``t`` and head ``t`` are task ``t``'s (:class:`PerTask`); the
cross-stitch units are shared. ``last_shared_layer()`` is the last cross-stitch unit (its
``weight`` is the ``alpha`` table).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..backbones.protocol import StagedBackbone
from ..interface import MTLModel, build_task_networks
from ..registries import SHARING

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
    """One backbone per task, linked by cross-stitch units between stages."""

    task_conditional = False

    def __init__(self, backbone: str = "segnet", out_dims: list[int] | None = None,
                 mixing: str = "mtan", alpha_self: float = 0.9, **backbone_kwargs):
        super().__init__()
        self._set_tasks(backbone, out_dims)
        self.mixing = mixing
        nets, heads, feature_dim = build_task_networks(backbone, self.out_dims, **backbone_kwargs)
        if not isinstance(nets[0], StagedBackbone) or nets[0].n_stages < 2:
            raise ValueError(f"cross_stitch needs a staged backbone with >= 2 stages "
                             f"(models.backbones.protocol.StagedBackbone); got {backbone!r}")
        self.nets = nets
        self.heads = heads
        self.feature_dim = feature_dim
        n_enc, n_dec = nets[0].n_encoder_stages, nets[0].n_decoder_stages
        # a unit before every stage but the first: encoder stages 1.. (cs_enc), decoder stages (cs_dec)
        self.cs_enc = nn.ModuleList([CrossStitchUnit(self.n_tasks, mixing, alpha_self)
                                     for _ in range(n_enc - 1)])
        self.cs_dec = nn.ModuleList([CrossStitchUnit(self.n_tasks, mixing, alpha_self)
                                     for _ in range(n_dec)])

    def forward(self, x: Tensor, task: int | None = None) -> list[Tensor]:
        if task is not None:
            raise ValueError("cross_stitch is not task-conditional: call model(x) (returns all tasks)")
        units = self.cross_stitch_units()
        states: list[dict] = [{} for _ in self.nets]
        xs = [net.forward_stem(x) for net in self.nets]
        for s in range(self.nets[0].n_stages):
            if s > 0:
                xs = units[s - 1](xs)
            xs = [net.forward_stage(s, h, st) for net, h, st in zip(self.nets, xs, states)]
        return [head(net.readout(z)) for net, head, z in zip(self.nets, self.heads, xs)]

    def units(self) -> list[nn.Module]:
        """The conv units of all ``T`` networks, network by network (26 each for SegNet)."""
        return [u for net in self.nets for u in net.units()]

    def last_shared_layer(self) -> nn.Module:
        return self.cross_stitch_units()[-1]

    def cross_stitch_units(self) -> list[CrossStitchUnit]:
        """In forward order: unit ``s - 1`` mixes the inputs of stage ``s``."""
        return list(self.cs_enc) + list(self.cs_dec)
