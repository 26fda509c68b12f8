"""AFA (Cui, Shen, Huang, Chen, Xu, Wang & Yin, "Adaptive Feature Aggregation in Deep Multi-Task
Convolutional Neural Networks", IEEE TCSVT 2021; CIKM 2020 short version) on any staged backbone.

One full backbone per task (plain conv -> BN units, as cross-stitch / NDDR-CNN) and AFA layers
that mix the ``T`` tasks' same-shaped ``C``-channel maps ``x_1 .. x_T`` with weights computed
from those maps (selective-kernel style: a softmax over the tasks, per channel, then per pixel).
Role ``j`` of task ``t`` is ``pi_t(j)``: ``pi_t(0) = t``, then the other tasks in ascending
order; one set of ``T`` weights serves every task (``y_1 = w_0 x_1 + w_1 x_2``,
``y_2 = w_0 x_2 + w_1 x_1`` for two tasks), as the authors' code does.

* CAM (channel aggregation module): ``s_t = GAP(x_t)`` (``C``), ``z = ReLU(W [s_1; ..; s_T])``,
  ``W: T C -> d``, ``d = max(floor(T C / r), L)``; ``a_j = U_j z`` (``U_j: d -> C``);
  ``w = softmax_j(a)`` per channel; ``y_t = sum_j w_j * x_{pi_t(j)}``.
* SAM (spatial aggregation module): ``m_t = mean_c(x_t)`` (``H x W``),
  ``g = ReLU(conv_kxk([m_1 .. m_T]))`` (``T -> 1`` channels), ``b_j = V_j vec(g)``
  (``V_j: HW -> HW``, a fully connected map over the grid); ``w = softmax_j(b)`` per pixel;
  ``y_t = sum_j w_j * x_{pi_t(j)}``.
* AFA layer: CAM -> ReLU -> SAM -> ReLU. No bias, no BN anywhere (the authors' final code of
  August 2020; their January / April 2020 versions had per-task fcs with bias and BatchNorm).
* Gradient protection (the authors' ``AFA_layer_*_data``, used in all their released networks and
  in SMTL's): for a protected task ``t`` (``protect``, default task 0) each module reads
  ``x_t.detach()`` and outputs ``ReLU(o_t + (x_t - x_t.detach()))``: the same value, but task
  ``t``'s network receives only its own gradient, passed straight through, and no other task's
  (their README: a dominant task's gradient otherwise swamps the other branch). The authors
  write ``(o + x) - x.detach()``: the same gradient, a value rounded once more.

Layout (default, the authors'): on a ResNet one AFA layer after EVERY block of the last encoder
stage (``planes == 512`` in their Bottleneck: 3 layers on ResNet-50's ``layer4``), the heads read
the last one's outputs; elsewhere (VGG16, SegNet: stages that are not a sequence of residual
blocks) one layer after the last encoder stage. ``stage`` / ``per_block`` change it.

Sources: ``zhenshen-mla/AFANet`` ``models/layer_afa.py`` (CAM ``r = 16``, ``L = 32``, SAM 7x7 conv,
Linear layers without bias) and ``models/net_pixel_afalayer.py`` (two tasks; DeepLab-v3+ on a
ResNet-50 of output stride 16, AFA after each ``layer4`` block, Kaiming-normal Linear weights,
``N(0, 2 / (k^2 out))`` convs); the ``T``-task form (one fc on all ``T`` descriptors, ``T`` role
maps, ``pi_t``) is ``Pengxin-Guo/SMTL`` ``nyu/layer_afa.py`` (Guo, Ye & Zhang, "Safe Multi-Task
Learning"; Yu Zhang co-authors CoNAL), which trains that network on Cityscapes (SAM grid 8x16)
and NYUv2 (18x24). Checked in float64 against both files (outputs and gradients, 2 and 3 tasks).

SAM's ``V_j`` act on a fixed grid: ``input_size`` (``(H, W)`` of the images) gives it, each
side ``ceil(side / stride)`` of the fused stage. A map of another size (the tiny profile) has
its ``g`` average-pooled to the grid and its logits ``b`` upsampled back (bilinear) before the
softmax, with a warning (``size_mismatch="error"`` refuses it); at the grid's size both steps
are skipped. Default ``input_size = (224, 224)``: the authors' image-task input (7x7 at layer4).

Keyword arguments: ``input_size`` ((224, 224)); ``stage`` (None: the last encoder stage);
``per_block`` (None: True on ResNets); ``parts`` (``("cam", "sam")``; one of them for the
ablations); ``reduction`` ``r`` (16), ``min_hidden`` ``L`` (32), ``kernel_size`` ``k`` (7);
``protect`` (``(0,)``; ``()`` = the authors' plain ``AFA_layer_cam`` / ``AFA_layer_sam``);
``size_mismatch`` (``"resize"`` / ``"error"``); ``backbone_kwargs`` go to every task network.
Initialisation (the authors' ``ResNet._init_weight``, which reaches the AFA modules): Linear
weights Kaiming-normal (fan_in), SAM's conv ``N(0, 2 / k^2)``; the backbones keep their own.
No identity-like start is defined: equal task maps pass unchanged at any init (convexity).

Parameters per AFA layer (:func:`afa_layer_params`), ``T`` tasks of ``C`` channels, grid
``H x W``: CAM ``2 T C d``, SAM ``T k^2 + T (H W)^2``. Measured on resnet50_dilated (output
stride 8) + aspp, 3 layers on ``layer4`` (C = 2048):

* Cityscapes ``[7, 1]``, 128x256 (grid 16x32): 79,269,000 (STL) + 3 x 2,621,538 = 87,133,614
  (87.13M; CoNAL prints 87.09M: +47,936, +0.055%);
* NYUv2 ``[13, 1, 3]``, 288x384 (grid 36x48): 118,904,785 + 3 x 13,676,691 = 159,934,858
  (159.93M; CoNAL prints 136.88M: +23,054,304, +16.8%).

Why they differ: CoNAL's counts are EXACTLY those of the authors' own network as SMTL ships it
(built and counted: 87,085,678 and 136,880,554), not LibMTL's: a ResNet-50 of output stride 16
(multi-grid dilations 2, 4, 8 in ``layer4``; SAM grids 8x16 / 18x24, a quarter of our area)
with, per task, ASPP (rates 6, 12, 18: the same parameters) and a DeepLab-v3+ decoder (a 1x1
48-channel projection of ``layer1`` + BN, concatenated with the upsampled ASPP output, then 3x3
convs 304 -> 256 and 256 -> 256, each + BN): +713,312 per task over ``aspp``. Nothing here is
fitted to the printed counts; that network needs an output-stride-16 option of the backbone and
a decoder reading ``layer1``, which this scheme does not build.

Parameter partition (as :mod:`.nddr_cnn`): network ``t`` and head ``t`` are task ``t``'s
(:class:`~mtlrepro.models.interface.PerTask`); the AFA layers, which read every task, are
shared. ``last_shared_layer()`` is the last AFA layer.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.protocol import StagedBackbone
from ..backbones.resnet import ResNetStages
from ..interface import MTLModel, build_task_networks
from ..registries import SHARING

__all__ = ["AFA", "AFALayer", "ChannelAggregation", "SpatialAggregation", "afa_layer_params",
           "cam_hidden"]

PARTS = ("cam", "sam")


def cam_hidden(n_tasks: int, channels: int, reduction: int = 16, min_hidden: int = 32) -> int:
    """CAM's bottleneck width ``d = max(floor(T C / r), L)``."""
    return max(int(n_tasks * channels / reduction), min_hidden)


def afa_layer_params(n_tasks: int, channels: int, grid: Sequence[int], parts: Sequence[str] = PARTS,
                     reduction: int = 16, min_hidden: int = 32, kernel_size: int = 7) -> int:
    """Parameters of one :class:`AFALayer`: CAM ``2 T C d``, SAM ``T k^2 + T (H W)^2``."""
    t, c, hw = n_tasks, channels, int(grid[0]) * int(grid[1])
    n = 0
    if "cam" in parts:
        n += 2 * t * c * cam_hidden(t, c, reduction, min_hidden)
    if "sam" in parts:
        n += t * kernel_size * kernel_size + t * hw * hw
    return n


def _mix(xs: list[Tensor], w: Tensor) -> list[Tensor]:
    """``y_t = sum_j w[:, j] * x_{pi_t(j)}`` with ``pi_t = (t, the others ascending)``."""
    T = len(xs)
    outs = []
    for t in range(T):
        order = [t] + [k for k in range(T) if k != t]
        outs.append(sum(w[:, j] * xs[k] for j, k in enumerate(order)))
    return outs


class ChannelAggregation(nn.Module):
    """CAM: per-channel softmax weights over the ``T`` roles from the tasks' pooled descriptors."""

    def __init__(self, n_tasks: int, channels: int, reduction: int = 16, min_hidden: int = 32):
        super().__init__()
        self.n_tasks, self.channels = n_tasks, channels
        d = cam_hidden(n_tasks, channels, reduction, min_hidden)
        self.fc = nn.Linear(n_tasks * channels, d, bias=False)
        self.trans = nn.Linear(d, n_tasks * channels, bias=False)  # the T role maps U_j, stacked
        for lin in (self.fc, self.trans):
            nn.init.kaiming_normal_(lin.weight)  # the authors' ResNet._init_weight

    def weights(self, xs: list[Tensor]) -> Tensor:
        """``(B, T, C, 1, 1)``: softmax over the roles."""
        s = torch.cat([x.mean(dim=(2, 3)) for x in xs], dim=1)
        a = self.trans(F.relu(self.fc(s))).view(-1, self.n_tasks, self.channels)
        return torch.softmax(a, dim=1)[..., None, None]

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        return _mix(xs, self.weights(xs))


class SpatialAggregation(nn.Module):
    """SAM: per-pixel softmax weights over the ``T`` roles from the tasks' channel means."""

    def __init__(self, n_tasks: int, grid: Sequence[int], kernel_size: int = 7, size_mismatch: str = "resize"):
        super().__init__()
        if size_mismatch not in ("resize", "error"):
            raise ValueError(f"size_mismatch must be 'resize' or 'error', got {size_mismatch!r}")
        self.n_tasks, self.grid, self.size_mismatch = n_tasks, (int(grid[0]), int(grid[1])), size_mismatch
        hw = self.grid[0] * self.grid[1]
        self.conv = nn.Conv2d(n_tasks, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.trans = nn.Linear(hw, n_tasks * hw, bias=False)  # the T role maps V_j, stacked
        nn.init.normal_(self.conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size)))
        nn.init.kaiming_normal_(self.trans.weight)

    def weights(self, xs: list[Tensor]) -> Tensor:
        """``(B, T, 1, H, W)``: softmax over the roles."""
        size = tuple(xs[0].shape[-2:])
        g = F.relu(self.conv(torch.cat([x.mean(dim=1, keepdim=True) for x in xs], dim=1)))
        off_grid = size != self.grid
        if off_grid:
            if self.size_mismatch == "error":
                raise ValueError(f"SAM built for a {self.grid} grid got a {size} map; "
                                 f"pass the model's input_size")
            warnings.warn(f"AFA SAM: {size} map on a {self.grid} grid (input_size differs from the "
                          f"input): pooled to the grid and upsampled back", stacklevel=2)
            g = F.adaptive_avg_pool2d(g, self.grid)
        b = self.trans(g.flatten(1)).view(-1, self.n_tasks, *self.grid)
        if off_grid:
            b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
        return torch.softmax(b, dim=1).unsqueeze(2)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        return _mix(xs, self.weights(xs))


class AFALayer(nn.Module):
    """CAM -> ReLU -> SAM -> ReLU on ``T`` maps; protected tasks get a straight-through gradient."""

    def __init__(self, n_tasks: int, channels: int, grid: Sequence[int], parts: Sequence[str] = PARTS,
                 reduction: int = 16, min_hidden: int = 32, kernel_size: int = 7,
                 protect: Sequence[int] = (0,), size_mismatch: str = "resize"):
        super().__init__()
        parts = tuple(parts)
        if not parts or any(p not in PARTS for p in parts) or len(set(parts)) != len(parts):
            raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {parts!r}")
        if any(not 0 <= int(t) < n_tasks for t in protect):
            raise ValueError(f"protect lists tasks of 0 .. {n_tasks - 1}, got {tuple(protect)!r}")
        self.n_tasks, self.parts, self.protect = n_tasks, parts, frozenset(int(t) for t in protect)
        self.cam = ChannelAggregation(n_tasks, channels, reduction, min_hidden) if "cam" in parts else None
        self.sam = SpatialAggregation(n_tasks, grid, kernel_size, size_mismatch) if "sam" in parts else None

    def modules_in_order(self) -> list[nn.Module]:
        return [m for m in (self.cam, self.sam) if m is not None]

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        for module in self.modules_in_order():
            ins = [x.detach() if t in self.protect else x for t, x in enumerate(xs)]
            outs = module(ins)
            xs = [F.relu(o + (x - x.detach())) if t in self.protect else F.relu(o)
                  for t, (o, x) in enumerate(zip(outs, xs))]
        return xs


@SHARING.register("afa")
class AFA(MTLModel):
    """One backbone per task, linked by AFA layers in the last encoder stage (see the module doc)."""

    task_conditional = False
    version = 1

    def __init__(self, backbone: str = "resnet50_dilated", out_dims: list[int] | None = None,
                 input_size: Sequence[int] = (224, 224), stage: int | None = None,
                 per_block: bool | None = None, parts: Sequence[str] = PARTS, reduction: int = 16,
                 min_hidden: int = 32, kernel_size: int = 7, protect: Sequence[int] = (0,),
                 size_mismatch: str = "resize", **backbone_kwargs):
        super().__init__()
        self._set_tasks(backbone, out_dims)
        nets, heads, feature_dim = build_task_networks(backbone, self.out_dims, **backbone_kwargs)
        net = nets[0]
        if not isinstance(net, StagedBackbone):
            raise ValueError(f"afa needs a staged backbone "
                             f"(models.backbones.protocol.StagedBackbone); got {backbone!r}")
        self.stage = net.n_encoder_stages - 1 if stage is None else int(stage)
        if not 0 <= self.stage < net.n_stages:
            raise ValueError(f"afa: stage {self.stage} out of range for {net.n_stages} stages")
        residual = isinstance(net, ResNetStages)
        if per_block and not residual:
            raise ValueError(f"afa: per_block=True needs a ResNet (a stage of residual blocks); "
                             f"{backbone!r} is not one")
        self.per_block = residual if per_block is None else bool(per_block)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        stride = net.strides[self.stage]
        self.grid = tuple(math.ceil(s / stride) for s in self.input_size)
        self.nets, self.heads, self.feature_dim = nets, heads, feature_dim
        n_layers = len(net.stages[self.stage]) if self.per_block else 1
        self.afa = nn.ModuleList([
            AFALayer(self.n_tasks, net.widths[self.stage], self.grid, parts, reduction, min_hidden,
                     kernel_size, protect, size_mismatch) for _ in range(n_layers)])

    def forward(self, x: Tensor, task: int | None = None) -> list[Tensor]:
        if task is not None:
            raise ValueError("afa is not task-conditional: call model(x) (returns all tasks)")
        states: list[dict] = [{} for _ in self.nets]
        xs = [net.forward_stem(x) for net in self.nets]
        for s in range(self.nets[0].n_stages):
            if s == self.stage and self.per_block:
                for b, fuse in enumerate(self.afa):
                    xs = fuse([net.stages[s][b](h) for net, h in zip(self.nets, xs)])
                continue
            xs = [net.forward_stage(s, h, st) for net, h, st in zip(self.nets, xs, states)]
            if s == self.stage:
                xs = self.afa[0](xs)
        return [head(net.readout(z)) for net, head, z in zip(self.nets, self.heads, xs)]

    def units(self) -> list[nn.Module]:
        """The conv units of all ``T`` networks, network by network."""
        return [u for net in self.nets for u in net.units()]

    def afa_layers(self) -> list[AFALayer]:
        """In forward order."""
        return list(self.afa)

    def last_shared_layer(self) -> nn.Module:
        return self.afa[-1]
