"""The staged-backbone protocol: a backbone as a sequence of stages of known width and stride.

Two layers of contract:

1. **Builder** (every backbone): ``BACKBONES`` maps a name to ``f(make_unit, **backbone_kwargs)
   -> Backbone``. Every convolution is built by ``make_unit(ConvSpec)`` (the sharing scheme's
   conv unit, :mod:`mtlrepro.models.units`). The :class:`Backbone` holds the ``encoder`` (a
   module returning the representation the heads read, with ``units()`` - its conv units in
   forward order - and ``last_shared_layer()`` - the last module with parameters, for
   GradNorm), its ``feature_dim`` and its default head factory ``make_head(out_dim)``.
   Unit-wise schemes (hard sharing, task routing, Max Roaming, ETR, attentive, ...) need only this.

2. **Stages** (what stage-wise schemes - MTAN, cross-stitch, NDDR, gating - need): the encoder is
   a :class:`StagedBackbone`, a stem followed by ``S`` stages, each ``[opening op] -> blocks ->
   [closing op]``:

   * ``stages``: the ``S`` stage modules in forward order (an attribute or a property);
   * ``widths[s]`` / ``strides[s]``: channels and output stride (input pixels per feature
     pixel) of stage ``s``'s output; ``n_decoder_stages``: how many of the last stages decode
     (upsample back towards the input; 0 for classification encoders);
   * ``stem_width``: channels of ``forward_stem``'s output when the stem is a learned block
     (ResNets: conv + max pool, 64 channels), None when it is the identity (VGG16, SegNet);
     NDDR-CNN fuses the stem's output as it fuses every stage's;
   * ``forward_stem(x)``; ``stage_taps(s, h, state) -> StageTaps``: run stage ``s`` on ``h``
     (the previous stage's output, or the stem's) and return its four taps; ``state`` is one
     dict per pass through which stages hand things to later stages (SegNet's pooling indices);
     ``forward_stage(s, h, state)`` = its ``out``;
   * ``forward_features(x) -> list[Tensor]`` (one per stage) and ``forward_taps(x)``;
   * ``readout(h)``: the last stage's output -> what the heads read (global average pooling for
     classification encoders, identity for dense ones); ``forward(x)`` equals
     ``readout(forward_features(x)[-1])``.

   * what MTAN builds on it (defaults = MTAN's SegNet rule): ``attention_hidden(width)``, the
     hidden width of an attention module gating ``width`` channels (default ``width``), and
     ``make_attention_block(in_ch, out_ch, track_running_stats)``, the shared block of the
     attention path between stages (default None: the scheme's own Conv3x3 -> BN -> ReLU).

   The taps: ``input`` (what the blocks read: after the opening op, e.g. SegNet's max-unpool),
   ``first`` / ``last`` (first / last block's output: MTAN's attention reads ``first`` and gates
   ``last``), ``out`` (after the closing op, e.g. VGG's / SegNet's max pool: the next stage's
   input, what cross-stitch mixes). ``first``, ``last`` and ``out`` have ``widths[s]`` channels.

Built in: ``resnet18`` (stem = 7x7 conv + max pool, 4 stages of 2 BasicBlocks), ``vgg16`` (5
conv stages, each closed by its max pool), ``segnet`` (5 encoder stages closed by an
index-keeping max pool, then 5 decoder stages opened by the max-unpool with the matching
encoder stage's indices). SegNet's decoder is part of the BACKBONE, not of a head: every
published SegNet multi-task model (MTAN's hard sharing, Max Roaming, ETR-NLP) shares it across
tasks, the per-task head being only MTAN's Conv3x3 -> Conv1x1, and MTAN / cross-stitch act at
every decoder stage as at every encoder stage.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["Backbone", "StagedBackbone", "StageTaps", "spatial_size"]


@dataclass
class Backbone:
    """What a backbone builder returns: the encoder, its output width, its default head factory
    (called at construction only, so models hold no closures and deep-copy / pickle cleanly)."""

    encoder: nn.Module
    feature_dim: int
    make_head: Callable[[int], nn.Module]


@dataclass
class StageTaps:
    """The intermediate maps of one stage (see the module docstring)."""

    input: Tensor
    first: Tensor
    last: Tensor
    out: Tensor


def spatial_size(t: Tensor) -> tuple[int, ...]:
    """``t``'s spatial size (``H, W``), e.g. for ``max_unpool2d(output_size=...)``. Under
    ``torch.jit.trace`` (fvcore) sizes are traced tensors, which the unpool's size check
    rejects; the traced graph is shape-specific anyway, so they become plain ints there."""
    if torch.jit.is_tracing():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return tuple(int(v) for v in t.shape[-2:])
    return t.shape[-2:]


class StagedBackbone(nn.Module):
    """Base of the staged encoders: implements the generic passes on top of ``stage_taps``.

    Subclasses set ``widths``, ``strides`` (and ``n_decoder_stages``), provide ``stages``,
    ``stage_taps``, ``units`` and ``last_shared_layer``, and override ``forward_stem`` /
    ``readout`` where they are not the identity. They may keep a hand-written ``forward`` (the
    built-in ones do: it predates the protocol); ``tests/models/test_staged_backbones.py`` checks
    that it equals the staged pass.
    """

    stages: Sequence[nn.Module]
    widths: tuple[int, ...]
    strides: tuple[int, ...]
    n_decoder_stages: int = 0
    stem_width: int | None = None

    @property
    def n_stages(self) -> int:
        return len(self.widths)

    @property
    def n_encoder_stages(self) -> int:
        return self.n_stages - self.n_decoder_stages

    def forward_stem(self, x: Tensor) -> Tensor:
        """What runs before stage 0 (identity unless overridden)."""
        return x

    def stage_taps(self, s: int, h: Tensor, state: dict) -> StageTaps:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_stage(self, s: int, h: Tensor, state: dict) -> Tensor:
        """Stage ``s`` on ``h``; stages of one pass must run in order with one ``state`` dict."""
        return self.stage_taps(s, h, state).out

    def attention_hidden(self, width: int) -> int:
        """Hidden width of an MTAN attention module gating ``width`` channels (MTAN: ``width``)."""
        return width

    def make_attention_block(self, in_ch: int, out_ch: int, track_running_stats: bool = True) -> nn.Module | None:
        """MTAN's shared attention-path block ``in_ch -> out_ch`` between stages; None = the
        scheme's default (MTAN's Conv3x3 -> BN -> ReLU)."""
        return None

    def readout(self, h: Tensor) -> Tensor:
        """The last stage's output -> the representation the heads read (identity unless overridden)."""
        return h

    def forward_taps(self, x: Tensor) -> list[StageTaps]:
        """Every stage's taps, in forward order."""
        state: dict = {}
        h = self.forward_stem(x)
        taps = []
        for s in range(self.n_stages):
            taps.append(self.stage_taps(s, h, state))
            h = taps[-1].out
        return taps

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Every stage's output (``widths[s]`` channels, ``strides[s]`` output stride)."""
        state: dict = {}
        h = self.forward_stem(x)
        feats = []
        for s in range(self.n_stages):
            h = self.forward_stage(s, h, state)
            feats.append(h)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        state: dict = {}
        h = self.forward_stem(x)
        for s in range(self.n_stages):
            h = self.forward_stage(s, h, state)
        return self.readout(h)

    def units(self) -> list[nn.Module]:  # pragma: no cover - abstract
        raise NotImplementedError

    def last_shared_layer(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError
