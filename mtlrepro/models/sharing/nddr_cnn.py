"""NDDR-CNN (Gao, Ma, Zhao, Liu & Yuille, "NDDR-CNN: Layerwise Feature Fusing in Multi-Task CNNs
by Neural Discriminative Dimensionality Reduction", CVPR 2019) on any staged backbone.

One full backbone per task (plain conv -> BN units, as cross-stitch) and, after the stem (when
the backbone declares a learned one, ``stem_width``) and after EVERY stage of the
:class:`~mtlrepro.models.backbones.protocol.StagedBackbone` protocol (the last included), one
NDDR layer: with ``x_1 .. x_T`` the ``T`` tasks' ``C``-channel maps at that point,

    ``y_t = ReLU(BN_t(W_t * cat(x_1, .., x_T)))``,   ``W_t``: a 1x1 conv ``T C -> C``, no bias,

and task ``t``'s network continues on ``y_t``. Not task-conditional: ``model(x)`` returns all
``T`` outputs; each network keeps its own pass state (SegNet's pooling indices).

Sources (LibMTL, whose setting CoNAL uses, ships no NDDR-CNN architecture, so the details are
the authors'): the paper's layer (concatenation -> 1x1 conv -> BN -> ReLU), its TensorFlow code
(``nddr_layer``: a slim conv with a batch-norm normalizer, hence no bias,
``init_weights=[0.9, 0.1]``) and its PyTorch port (``NDDRNet`` on VGG-16 DeepLab-LargeFOV: one
NDDR after every stage, each closed by its pool, the last included;
``BatchNorm2d(momentum=0.05)``; its default applies BN after the ReLU, which changes no
parameter count). On a ResNet the stem (conv + max pool) is the analogue of VGG's
first pooled stage, and the parameter counts agree: with the stem and the four layers, no conv
bias, resnet50_dilated + aspp gives 101,583,240 (Cityscapes ``[7, 1]``) and 169,100,113 (NYUv2
``[13, 1, 3]``), CoNAL's printed 101.58M / 169.10M; without the stem layer 101.57M / 169.04M,
with conv bias 101.59M / 169.11M.

Keyword arguments:

* ``init_weights`` (``(0.9, 0.1)``): ``W_t`` starts as ``init_weights[0] * I`` on task ``t``'s
  own block and ``init_weights[1] / (T - 1) * I`` on each other task's (the paper's two-task
  ``[0.9, 0.1]``; for ``T > 2`` the other share is split evenly as the authors' MTL-NAS code
  does, so every row still sums to 1); ``T = 1``: the identity;
* ``bn_momentum`` (0.05): the NDDR layers' BN momentum (PyTorch convention; TF decay 0.95);
* ``at_stem`` (None): put an NDDR layer after the stem; None = when the backbone has
  ``stem_width`` (ResNets), an error when True on a backbone without one;
* ``backbone_kwargs`` (``width_mult``, ``track_running_stats``, ``head``, ...) go to every task
  network; ``track_running_stats`` also to the NDDR layers' BN.

NDDR layer parameters, per fusion point of width ``C``: ``T (T C^2 + 2 C)`` (``T`` convs and BNs).

Parameter partition (as :mod:`.cross_stitch`): network ``t`` and head ``t`` are task ``t``'s
(:class:`~mtlrepro.models.interface.PerTask`); the NDDR layers, which read every task, are
shared. ``last_shared_layer()`` is the last NDDR layer.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..backbones.protocol import StagedBackbone
from ..interface import MTLModel, build_task_networks
from ..registries import SHARING

__all__ = ["NDDRCNN", "NDDRLayer", "nddr_layer_params"]


def nddr_layer_params(n_tasks: int, channels: int) -> int:
    """Parameters of one :class:`NDDRLayer`: ``T`` bias-free 1x1 convs ``T C -> C`` and ``T`` BNs."""
    return n_tasks * (n_tasks * channels * channels + 2 * channels)


class NDDRLayer(nn.Module):
    """Fuses ``T`` same-shaped ``C``-channel maps: output ``t`` = ReLU(BN_t(conv_t(cat(xs))))."""

    def __init__(self, n_tasks: int, channels: int, init_weights: Sequence[float] = (0.9, 0.1),
                 bn_momentum: float = 0.05, track_running_stats: bool = True):
        super().__init__()
        if len(init_weights) != 2:
            raise ValueError(f"init_weights must be (own, others), got {init_weights!r}")
        self.n_tasks, self.channels = n_tasks, channels
        self.convs = nn.ModuleList([nn.Conv2d(n_tasks * channels, channels, 1, bias=False)
                                    for _ in range(n_tasks)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(channels, momentum=bn_momentum,
                                                 track_running_stats=track_running_stats)
                                  for _ in range(n_tasks)])
        self.relu = nn.ReLU(inplace=True)
        own, other = (float(init_weights[0]), float(init_weights[1]) / (n_tasks - 1)) if n_tasks > 1 else (1.0, 0.0)
        eye = torch.eye(channels)
        with torch.no_grad():
            for t, conv in enumerate(self.convs):
                blocks = [eye * (own if k == t else other) for k in range(n_tasks)]
                conv.weight.copy_(torch.cat(blocks, dim=1).view(channels, n_tasks * channels, 1, 1))

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        x = torch.cat(xs, dim=1)
        return [self.relu(bn(conv(x))) for conv, bn in zip(self.convs, self.bns)]


@SHARING.register("nddr_cnn")
class NDDRCNN(MTLModel):
    """One backbone per task, fused by NDDR layers after the stem and every stage."""

    task_conditional = False

    def __init__(self, backbone: str = "resnet50_dilated", out_dims: list[int] | None = None,
                 init_weights: tuple[float, float] = (0.9, 0.1), bn_momentum: float = 0.05,
                 at_stem: bool | None = None, **backbone_kwargs):
        super().__init__()
        self._set_tasks(backbone, out_dims)
        nets, heads, feature_dim = build_task_networks(backbone, self.out_dims, **backbone_kwargs)
        net = nets[0]
        if not isinstance(net, StagedBackbone):
            raise ValueError(f"nddr_cnn needs a staged backbone "
                             f"(models.backbones.protocol.StagedBackbone); got {backbone!r}")
        stem_width = net.stem_width
        if at_stem and stem_width is None:
            raise ValueError(f"nddr_cnn: at_stem=True but {backbone!r} declares no stem_width "
                             f"(its stem is the identity)")
        self.at_stem = stem_width is not None if at_stem is None else bool(at_stem)
        self.nets, self.heads, self.feature_dim = nets, heads, feature_dim
        trs = backbone_kwargs.get("track_running_stats", True)

        def layer(c: int) -> NDDRLayer:
            return NDDRLayer(self.n_tasks, c, init_weights, bn_momentum, trs)

        self.nddr_stem = layer(stem_width) if self.at_stem else None
        self.nddr = nn.ModuleList([layer(w) for w in net.widths])  # after stage s

    def forward(self, x: Tensor, task: int | None = None) -> list[Tensor]:
        if task is not None:
            raise ValueError("nddr_cnn is not task-conditional: call model(x) (returns all tasks)")
        states: list[dict] = [{} for _ in self.nets]
        xs = [net.forward_stem(x) for net in self.nets]
        if self.nddr_stem is not None:
            xs = self.nddr_stem(xs)
        for s, fuse in enumerate(self.nddr):
            xs = fuse([net.forward_stage(s, h, st) for net, h, st in zip(self.nets, xs, states)])
        return [head(net.readout(z)) for net, head, z in zip(self.nets, self.heads, xs)]

    def units(self) -> list[nn.Module]:
        """The conv units of all ``T`` networks, network by network."""
        return [u for net in self.nets for u in net.units()]

    def nddr_layers(self) -> list[NDDRLayer]:
        """In forward order (the stem's first when present)."""
        return ([self.nddr_stem] if self.nddr_stem is not None else []) + list(self.nddr)

    def last_shared_layer(self) -> nn.Module:
        return self.nddr[-1]
