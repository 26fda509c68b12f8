"""SegNet multi-task backbone with pluggable conv units (MTAN's layout; ETR-NLP Tables 3b, 5, 6).

Topology = the shared network of MTAN's ``im2im_pred/model_segnet_{split,mtan,single}.py``
(Liu et al., CVPR 2019), which Maximum Roaming and ETR-NLP reuse for Cityscapes and NYUv2:

* building block Conv3x3 (padding 1, with bias) -> BN -> ReLU; widths 64, 128, 256, 512, 512;
* encoder: five stages of 2-2-3-3-3 blocks (the first block of a stage changes the width), each
  stage followed by a 2x2/2 max pool that keeps its indices;
* decoder: the mirror, 3-3-3-2-2 blocks; each stage starts with a 2x2 max-unpool using the
  indices of the matching encoder stage, then its first block maps the width down
  (512 -> 512, 512 -> 256, 256 -> 128, 128 -> 64, 64 -> 64) and the others keep it. The last
  stage outputs 64 channels at the input resolution: that map is what the heads see
  (``feature_dim = 64``);
* per-task head: MTAN's ``conv_layer(pred=True)``, the registered ``segnet`` head
  (:mod:`mtlrepro.models.heads.segnet_head`).

The encoder + decoder hold 24,943,296 parameters (``SEGNET_PARAMS``); with one 13-class head that
is MTAN's single-task NYUv2 SegNet, 24,981,069, and with a 7-class head its Cityscapes one,
24,980,679 (REFERENCE.md) - exact. MTAN's multi-task counts (split 25,055,188 / 25,017,674 etc.)
also include ``logsigma``, one learnable scalar per task for uncertainty weighting that every
MTAN multi-task script puts into its model; our models do not hold it (it belongs to a loss
weighting, and an unused parameter would break gradient-based weightings), so they are exactly
``n_tasks`` below those numbers. See ``tests/models/test_segnet.py``.

All 26 convolutions (13 encoder + 13 decoder: the layers Maximum Roaming masks) are built by
``make_unit(ConvSpec)`` with ``role="conv"``, ``bias=True``, ``norm=True``; a unit returns the
pre-activation and the ReLU follows here. As for VGG16, the first conv (3 -> 64) is an ordinary
3x3 conv, not a stem in ResNet's sense, so the schemes that keep ResNet18's stem learnable
(``nlp``/``etr_nlp``'s ``nlp_stem``) treat it like the others. Unit indices follow forward order.

Stages (:class:`~mtlrepro.models.backbones.protocol.StagedBackbone`): 10 - the 5 encoder stages
(blocks, then the 2x2/2 max pool that keeps its indices: ``last`` is the pre-pool map, ``out``
the pooled one) and the 5 decoder stages (``n_decoder_stages = 5``: the max-unpool with the
matching encoder stage's indices and pre-pool size - handed over in the pass's ``state`` - then
the blocks: ``input`` is the unpooled map). Widths ``(64, 128, 256, 512, 512, 512, 256, 128, 64,
64) * width_mult``, output strides 2, 4, 8, 16, 32, 16, 8, 4, 2, 1; no stem; ``readout`` is the
identity (the heads read the full-resolution 64-channel map). Why the decoder belongs to the
backbone and not to the heads: see :mod:`~mtlrepro.models.backbones.protocol`. MTAN and
cross-stitch act at all 10 stages.

Backbone keyword arguments:

* ``width_mult`` (1.0): channel multiplier of every conv; ``feature_dim = 64 * width_mult``.
* ``track_running_stats`` (True): BatchNorm running statistics (MTAN keeps them).
* ``in_channels`` (3).

Input sizes: any ``H, W`` (MTAN's are 128x256 for Cityscapes and 288x384 for NYUv2, multiples
of 32). Max-unpooling restores each encoder stage's exact size, so sizes that are not multiples
of 32 work as well (pooling floors; the unpooled map gets the pre-pool size back).

Initialisation follows MTAN: Xavier-normal conv weights with zero bias (heads included), BN
weight 1 / bias 0.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..heads import HeadFactory
from ..registries import BACKBONES
from ..units import ConvSpec
from ..weight_init import init_xavier
from .protocol import Backbone, StagedBackbone, StageTaps, spatial_size

__all__ = ["SegNetEncoder", "SegNetStage", "build_segnet", "SEGNET_WIDTHS", "SEGNET_ENC_DEPTHS",
           "SEGNET_DEC_DEPTHS", "SEGNET_PARAMS"]

SEGNET_WIDTHS = (64, 128, 256, 512, 512)
SEGNET_ENC_DEPTHS = (2, 2, 3, 3, 3)
SEGNET_DEC_DEPTHS = (3, 3, 3, 2, 2)
SEGNET_PARAMS = 24_943_296  # 26 conv3x3(bias) + BN units, no head


class SegNetStage(nn.Module):
    """A run of conv units, each followed by a ReLU. ``forward`` gives the last block's output;
    :meth:`first_last` also the first block's (what MTAN's attention modules read)."""

    def __init__(self, units: list[nn.Module]):
        super().__init__()
        self.units = nn.ModuleList(units)
        self.relu = nn.ReLU(inplace=True)

    def first_last(self, x: Tensor) -> tuple[Tensor, Tensor]:
        first = x = self.relu(self.units[0](x))
        for u in self.units[1:]:
            x = self.relu(u(x))
        return first, x

    def forward(self, x: Tensor) -> Tensor:
        for u in self.units:
            x = self.relu(u(x))
        return x


class SegNetEncoder(StagedBackbone):
    """SegNet encoder + decoder; ``forward`` returns the ``(B, 64 * width_mult, H, W)`` map."""

    strides = (2, 4, 8, 16, 32, 16, 8, 4, 2, 1)
    n_decoder_stages = 5

    def __init__(self, make_unit, width_mult: float = 1.0, track_running_stats: bool = True,
                 in_channels: int = 3):
        super().__init__()
        w = [int(round(c * width_mult)) for c in SEGNET_WIDTHS]
        self._units: list[nn.Module] = []

        def stage(in_ch: int, out_ch: int, n: int) -> SegNetStage:
            units = []
            for k in range(n):
                spec = ConvSpec(in_ch if k == 0 else out_ch, out_ch, 3, 1, 1, index=len(self._units),
                                role="conv", norm=True, bias=True,
                                track_running_stats=track_running_stats)
                u = make_unit(spec)
                self._units.append(u)
                units.append(u)
            return SegNetStage(units)

        enc, c = [], in_channels
        for width, n in zip(w, SEGNET_ENC_DEPTHS):
            enc.append(stage(c, width, n))
            c = width
        dec = []
        for d, n in enumerate(SEGNET_DEC_DEPTHS):
            out = w[max(3 - d, 0)]  # 512, 256, 128, 64, 64
            dec.append(stage(c, out, n))
            c = out
        self.enc = nn.ModuleList(enc)
        self.dec = nn.ModuleList(dec)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(kernel_size=2, stride=2)
        #: output widths of the 5 encoder stages, then of the 5 decoder stages
        self.widths = tuple(w) + tuple(w[max(3 - d, 0)] for d in range(5))
        self.out_features = c
        init_xavier(self)

    # --- introspection ------------------------------------------------------------------------
    def units(self) -> list[nn.Module]:
        """The 26 conv units in forward order (13 encoder, 13 decoder)."""
        return list(self._units)

    def last_shared_layer(self) -> nn.Module:
        """The last conv unit of the decoder (conv -> BN before the heads' input ReLU)."""
        return self._units[-1]

    # --- stages (StagedBackbone) --------------------------------------------------------------
    @property
    def stages(self) -> tuple[SegNetStage, ...]:
        return (*self.enc, *self.dec)

    def stage_taps(self, s: int, h: Tensor, state: dict) -> StageTaps:
        """Encoder stage ``s < 5``: blocks, then the max pool (its indices and the pre-pool size
        go to ``state``); decoder stage ``5 + d``: max-unpool with encoder stage ``4 - d``'s
        indices to its pre-pool size, then the blocks."""
        n_enc = len(self.enc)
        if s < n_enc:
            first, last = self.enc[s].first_last(h)
            state.setdefault("sizes", []).append(spatial_size(last))
            pooled, idx = self.pool(last)
            state.setdefault("indices", []).append(idx)
            return StageTaps(input=h, first=first, last=last, out=pooled)
        d = s - n_enc
        u = self.unpool(h, state["indices"][-d - 1], output_size=state["sizes"][-d - 1])
        first, last = self.dec[d].first_last(u)
        return StageTaps(input=u, first=first, last=last, out=last)

    def forward(self, x: Tensor) -> Tensor:
        idx, sizes = [], []
        for stage in self.enc:
            x = stage(x)
            sizes.append(spatial_size(x))
            x, i = self.pool(x)
            idx.append(i)
        for d, stage in enumerate(self.dec):
            x = stage(self.unpool(x, idx[-d - 1], output_size=sizes[-d - 1]))
        return x


@BACKBONES.register("segnet")
def build_segnet(make_unit, **kwargs) -> Backbone:
    enc = SegNetEncoder(make_unit, **kwargs)
    return Backbone(encoder=enc, feature_dim=enc.out_features, make_head=HeadFactory("segnet", enc.out_features))
