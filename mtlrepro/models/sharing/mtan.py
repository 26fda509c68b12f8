"""MTAN: Multi-Task Attention Network (Liu, Johns & Davison, CVPR 2019), on any staged backbone.

One shared backbone (its convs built by ``make_unit``, i.e. conv -> BN) and, per task, one
soft-attention module at every stage of it, reading the stage taps of the
:class:`~mtlrepro.models.backbones.protocol.StagedBackbone` protocol (``first`` / ``last``: the
stage's first / last block output, ``input``: what a decoder stage's blocks read, ``out``: the
stage's output). Not task-conditional: ``model(x)`` runs the shared network once and every
task's attention path on it, and returns all ``T`` outputs. With ``segnet`` this is
``lorenmt/mtan`` ``im2im_pred/model_segnet_mtan.py``; other backbones get the same rules (as
LibMTL's MTAN on ResNet encoders).

Per task ``t``, with ``a`` the task's attended feature carried from stage to stage and
``fit(a, y)`` = ``a`` max-pooled to ``y``'s size (a 2x2/2 max pool when that is half of ``a``'s,
rounded down - the backbones' own pooling; an adaptive max pool otherwise; nothing when equal):

* encoder stage ``s``: mask = ``att_t,s(first_s)`` for ``s = 0``, else
  ``att_t,s(cat(first_s, fit(a, first_s)))``; ``a = mask * last_s``; then, unless ``s`` is the
  last stage, ``a = fit(block_s(a), out_s)`` where ``block_s`` is a SHARED conv block (Conv3x3 ->
  BN -> ReLU) to the next stage's width (the last encoder stage of a backbone with a decoder
  keeps its width);
* decoder stage ``d``: ``a = block'_d(upsample_bilinear(a, size of input_d))`` (shared conv block
  to the stage's width), mask = ``att'_t,d(cat(input_d, a))``, ``a = mask * last_d``;
* head: ``head_t(readout(a))`` (the backbone's readout: identity for SegNet, global average
  pooling for ResNet18 / VGG16).

On SegNet this is MTAN's exact computation: the encoder ``fit`` after ``block_s`` is its
``max_pool2d(2)``, the one at the next gate does nothing, and ``input_d`` is its unpooled
``g_upsampl[d]``. On ResNet18 the pooling to the next stage's resolution happens at the gate
(``out_s`` is not downsampled: the stride is in the next stage's first block).

An attention module is Conv1x1 -> BN -> ReLU -> Conv1x1 -> BN -> Sigmoid (all convs with bias);
its input width is ``widths[0]`` (first stage), ``2 * widths[s]`` (encoder) or ``widths[s-1] +
widths[s]`` (decoder); output width the width ``C`` it gates, hidden width the backbone's
``attention_hidden(C)`` (default ``C``). The shared blocks are the backbone's
``make_attention_block`` where it provides one, else the Conv3x3 -> BN -> ReLU above
(:class:`~mtlrepro.models.backbones.protocol.StagedBackbone`). SegNet, ResNet18 and VGG16 take
the defaults; ``resnet50_dilated`` declares LibMTL's ResNet-50 rule
(``LibMTL/architecture/MTAN.py``, ``_transform_resnet_MTAN`` with expansion 4): hidden ``C / 4``,
and a stride-1 Bottleneck of ``C_next / 4`` planes with a 1x1 conv -> BN projection shortcut.
Bilinear upsampling uses ``align_corners=True`` as MTAN does.

Parameters (SegNet): NYUv2 (``out_dims=[13, 1, 3]``) 44,229,073; Cityscapes (``[7, 1]``)
41,206,984. MTAN's printed counts (REFERENCE.md: 44,229,076 and 41,206,986) also hold
``logsigma``, the ``T`` uncertainty-weighting scalars every MTAN multi-task script keeps in its
model; they belong to a loss weighting, not to the network (see
:mod:`mtlrepro.models.backbones.segnet`). The shared encoder attention blocks number 5 on SegNet
(64->128, 128->256, 256->512, 512->512, 512->512): the fifth, feeding the decoder's attention
path, is 2,360,832 of the total. On ResNet18 (no decoder) there are 3 (64->128, 128->256,
256->512). On ``resnet50_dilated`` + ``aspp``: NYUv2 92,347,921, Cityscapes 72,044,232, LibMTL's
measured counts (REFERENCE.md, CoNAL's setting); with the generic rule it would be 146,679,633 /
113,882,696.

Keyword arguments: none of its own; ``backbone_kwargs`` go to the backbone (``width_mult``,
``track_running_stats``). The backbone must be a ``StagedBackbone``.

Initialisation follows MTAN: Xavier-normal conv weights with zero bias, BN weight 1 / bias 0 -
on every backbone, including ``resnet50_dilated``, where LibMTL leaves its attention modules and
Bottleneck blocks at PyTorch's default initialisation (same shapes and counts, other draws).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.protocol import StagedBackbone, StageTaps
from ..interface import PerTask, UnitMTLModel
from ..registries import SHARING
from ..units import ConvBN, ConvSpec
from ..weight_init import init_xavier

__all__ = ["MTAN", "attention_block", "conv_block", "fit_to"]


def attention_block(in_ch: int, hidden: int, out_ch: int) -> nn.Sequential:
    """MTAN's ``att_layer``: Conv1x1 -> BN -> ReLU -> Conv1x1 -> BN -> Sigmoid."""
    return nn.Sequential(nn.Conv2d(in_ch, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, out_ch, 1), nn.BatchNorm2d(out_ch), nn.Sigmoid())


def conv_block(in_ch: int, out_ch: int, track_running_stats: bool = True) -> nn.Sequential:
    """MTAN's ``conv_layer``: Conv3x3(bias) -> BN -> ReLU."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1),
                         nn.BatchNorm2d(out_ch, track_running_stats=track_running_stats),
                         nn.ReLU(inplace=True))


def fit_to(a: Tensor, like: Tensor) -> Tensor:
    """``a`` max-pooled to ``like``'s spatial size: unchanged when equal, a 2x2/2 max pool when
    ``like`` is ``a``'s size halved and rounded down, an adaptive max pool otherwise."""
    src, dst = tuple(a.shape[-2:]), tuple(like.shape[-2:])
    if src == dst:
        return a
    if all(d == s // 2 for s, d in zip(src, dst)):
        return F.max_pool2d(a, kernel_size=2, stride=2)
    return F.adaptive_max_pool2d(a, dst)


@SHARING.register("mtan")
class MTAN(UnitMTLModel):
    """Shared staged backbone + per-task attention at every stage; see the module docstring."""

    task_conditional = False
    version = 2  # 2: attention width and shared block read from the backbone (LibMTL's on resnet50_dilated)

    def __init__(self, backbone: str = "segnet", out_dims: list[int] | None = None, **backbone_kwargs):
        super().__init__(backbone, out_dims or [], **backbone_kwargs)
        enc = self.encoder
        if not isinstance(enc, StagedBackbone):
            raise ValueError(f"mtan needs a staged backbone (models.backbones.protocol.StagedBackbone); "
                             f"got {backbone!r}")
        trs = backbone_kwargs.get("track_running_stats", True)
        w = list(enc.widths)
        n, n_enc = enc.n_stages, enc.n_encoder_stages
        # encoder block s: to the next encoder stage's width; the last encoder stage keeps its own
        # (it feeds the decoder's first block); none after the last stage of the whole backbone
        enc_out = [w[s + 1] if s + 1 < n_enc else w[s] for s in range(n_enc if n > n_enc else n_enc - 1)]
        hid = enc.attention_hidden

        def block(i: int, o: int) -> nn.Module:
            own = enc.make_attention_block(i, o, trs)
            return conv_block(i, o, trs) if own is None else own

        self.enc_att = PerTask([nn.ModuleList(
            [attention_block(w[0], hid(w[0]), w[0])]
            + [attention_block(2 * w[s], hid(w[s]), w[s]) for s in range(1, n_enc)])
            for _ in range(self.n_tasks)])
        self.dec_att = PerTask([nn.ModuleList(
            [attention_block(w[s - 1] + w[s], hid(w[s]), w[s]) for s in range(n_enc, n)])
            for _ in range(self.n_tasks)])
        self.enc_block_att = nn.ModuleList([block(w[s], c) for s, c in enumerate(enc_out)])
        self.dec_block_att = nn.ModuleList([block(w[s - 1], w[s]) for s in range(n_enc, n)])
        for m in (self.enc_att, self.dec_att, self.enc_block_att, self.dec_block_att):
            init_xavier(m)

    def make_unit(self, spec: ConvSpec) -> nn.Module:
        return ConvBN(spec)

    def _task_path(self, taps: list[StageTaps], t: int) -> Tensor:
        a = None
        for s, att in enumerate(self.enc_att[t]):
            tap = taps[s]
            g = tap.first if a is None else torch.cat((tap.first, fit_to(a, tap.first)), dim=1)
            a = att(g) * tap.last
            if s < len(self.enc_block_att):
                a = fit_to(self.enc_block_att[s](a), tap.out)
        for d, att in enumerate(self.dec_att[t]):
            tap = taps[len(self.enc_att[t]) + d]
            a = F.interpolate(a, size=tap.input.shape[-2:], mode="bilinear", align_corners=True)
            a = self.dec_block_att[d](a)
            a = att(torch.cat((tap.input, a), dim=1)) * tap.last
        return self.heads[t](self.encoder.readout(a))

    def forward(self, x: Tensor, task: int | None = None) -> list[Tensor]:
        if task is not None:
            raise ValueError("mtan is not task-conditional: call model(x) (returns all tasks)")
        taps = self.encoder.forward_taps(x)
        return [self._task_path(taps, t) for t in range(self.n_tasks)]

    def last_shared_layer(self) -> nn.Module:
        """The shared backbone's last conv unit (its output is gated by every task's last
        attention module)."""
        return self.encoder.last_shared_layer()
