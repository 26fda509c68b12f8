"""Alternatives to the standard convolution (ETR-NLP Table 2): the ``conv_alt`` sharing scheme.

Hard sharing (one encoder, all task heads on one pass, not task-conditional) whose conv units
are replaced by ``conv``:

=============  =================================================================================
``conv``       the standard learnable conv -> BN (identical to ``hard_sharing``)
``lbconv``     Local Binary Convolution (Juefei-Xu et al., CVPR 2017): a FIXED sparse binary
               (+-1 / 0) kxk conv ``C_in -> m`` (buffer, never learned) -> nonlinearity ->
               learnable 1x1 ``m -> C_out`` -> BN
``shift``      Shift (Wu et al., CVPR 2018; the paper cites [4] Chen et al. 2019 for the row):
               ``"shift_conv"`` = shift (:class:`~mtlrepro.models.primitives.Shift`: 8 groups
               of ``C // 9`` channels moved one pixel in the 8 directions) -> learnable 1x1 ->
               BN; ``"csc"`` = Wu et al.'s conv-shift-conv (``ShiftConv`` of their ShiftResNet
               code): 1x1 ``C_in -> mid`` -> BN -> ReLU -> shift -> 1x1 ``mid -> C_out`` -> BN,
               the stride after the shift
``depthwise``  depth-wise separable convs (MobileNet, Howard et al. 2017): ``dw_layers`` x
               [depth-wise kxk ``C -> C * dw_multiplier`` -> BN -> ReLU -> point-wise 1x1 ->
               BN], the first ``C_in -> C_out`` (strided), the next ``C_out -> C_out``
``ghost``      Ghost module (Han et al., CVPR 2020): primary conv ``C_in -> ceil(C_out / s)``
               (kernel ``ghost_kernel``) -> BN; cheap depth-wise ``ghost_dw`` x ``ghost_dw`` conv
               on its ReLU -> ``s - 1`` maps per primary map -> BN; output = both concatenated
               (first ``C_out`` channels)
``nlp``        the NLP block of the ``nlp`` scheme (:class:`NLPNet`'s unit, built by the same
               code with the same kwargs ``prims`` / ``groups`` / ``nlp_seed``): the published
               "NLPs" row and, with ``width_mult=2``, "NLPs (2x)"
=============  =================================================================================

Every unit returns the pre-activation (the backbone applies ReLU / the residual addition); all
fixed tensors (LBConv weights, NLP primitives) are buffers. Where the replaced layer has no BN
(plain VGG16: ``norm=False``, ``bias=True``) each learnable conv inside a unit carries a bias
instead of a BN, as the conv it replaces does.

Keyword arguments (``None`` = the backbone's entry of :data:`TABLE2_DEFAULTS`):

* ``conv`` = ``"conv"``: one of :data:`CONV_TYPES`.
* ``width_mult`` (backbone kwarg, ResNet18 and VGG16): channel multiplier, 2 = "NLPs (2x)";
  ``batch_norm`` (VGG16 backbone kwarg, default False).
* ``replace_stem`` = False / ``replace_downsample`` = False: ResNet18's 7x7 stem and its 1x1
  projection shortcuts stay learnable convs - the ``nlp`` scheme's handling (``nlp_stem`` /
  ``nlp_downsample``, for ``conv="nlp"`` they ARE those flags). VGG16 has no stem (all 13 convs
  have ``role="conv"``, see :mod:`mtlrepro.models.backbones.vgg`): all its convs are replaced.
* ``stride_mode`` = ``"in"`` (``"after"`` for ``nlp``): ``"in"`` puts a unit's stride in its
  spatial op (fixed conv, shift, depth-wise / primary conv); ``"after"`` runs the unit at the
  input resolution and subsamples the output (for ``nlp``: its ``"after"`` / ``"prims"``).
* ``lbconv``: ``lb_maps`` = 1.0 and ``lb_maps_of`` = ``"out"``: ``m = round(lb_maps * C_out)``
  intermediate maps (``"in"``: times ``C_in``); ``lb_sparsity`` = 0.5 (fraction of zero
  weights, exact per filter; the counts do not depend on it - fvcore counts the fixed conv
  densely); ``lb_act`` = ``"relu"`` (LBCNN's nonlinearity between the fixed and the 1x1 conv;
  ``"sigmoid"``, ``"none"``); ``lb_seed`` = 0.
* ``shift``: ``shift_layout`` = ``None`` -> ``"csc"`` on ResNet18, ``"shift_conv"`` on VGG16 (the
  only backbone-dependent default, see below); ``shift_mid`` = 1.0 (CSC ``mid = round(shift_mid
  * C_out)``, Wu et al.'s expansion).
* ``depthwise``: ``dw_layers`` = 2, ``dw_multiplier`` = 1.
* ``ghost``: ``ghost_ratio`` = 2 (s), ``ghost_kernel`` = ``None`` (the replaced conv's kernel, as
  GhostNet's Ghost-VGG-16 / Ghost-ResNet-56 experiments; GhostNet's own blocks use 1),
  ``ghost_dw`` = 3 (d).
* ``nlp``: ``prims`` / ``groups`` / ``nlp_seed`` as the ``nlp`` scheme (same defaults).

How the defaults were chosen: :func:`mtlrepro.fit.table2_layouts.search_table2_layouts` builds
every candidate of a small grid per alternative, counts ``active_parameter_count(0)`` with the 8 CelebA
groups (40 outputs) and fvcore MACs for one 64x64 image, and ranks by distance to the printed
#P / #F. The defaults, measured (published in brackets; gap = measured / published - 1):

========  =============================  ==========  =======  ========  =======  ===============
backbone  row (default layout)           #P          printed  MACs      printed  gap #P / #F
========  =============================  ==========  =======  ========  =======  ===============
ResNet18  Conv                           11,197,032  11.2M    148.47M   148M     -0.0% / +0.3%
ResNet18  LBConv (m = C_out)             1,604,200   1.61M    165.25M   165M     -0.4% / +0.2%
ResNet18  Shift (csc, mid = C_out)       2,832,488   2.81M    48.67M    42M      +0.8% / +15.9%
ResNet18  Depth-wise (2 separable)       2,912,040   2.91M    46.49M    45M      +0.1% / +3.3%
ResNet18  Ghost (s = 2, kxk primary)     5,721,576   5.77M    80.61M    46M      -0.8% / +75.2%
ResNet18  NLPs                           2,042,472   2.05M    42.75M    43M      -0.4% / -0.6%
ResNet18  NLPs (2x)                      8,090,792   8.11M    148.42M   148M     -0.2% / +0.3%
VGG16     Conv                           14,735,208  14.7M    1252.81M  1.25G    +0.2% / +0.2%
VGG16     LBConv (m = C_out)             1,835,176   1.84M    1433.16M  1.43G    -0.3% / +0.2%
VGG16     Shift (shift -> 1x1)           1,659,240   1.67M    139.22M   0.14G    -0.6% / -0.6%
VGG16     Depth-wise (2 separable)       3,553,286   3.57M    336.20M   0.34G    -0.5% / -1.1%
VGG16     Ghost (s = 2, kxk primary)     7,398,984   7.45M    631.39M   0.32G    -0.7% / +97.3%
VGG16     NLPs                           2,476,776   2.48M    216.67M   0.22G    -0.1% / -1.5%
VGG16     NLPs (2x)                      9,856,424   14.3M    848.47M   1.23G    -31.1% / -31.0%
========  =============================  ==========  =======  ========  =======  ===============

What the search shows (every count measured, none adjusted):

* LBConv: ``m = C_out`` is the only layout near both backbones; VGG16 is reproduced as
  printed (1.84M / 1.43G), ResNet18's #F as printed and its #P 1.60M where 1.61M is printed.
  ``m = C_in`` gives 1.43M / 157M and 1.66M / 1.27G.
* Shift: the two printed rows need different modules. VGG16's 1.67M / 0.14G is one shift ->
  1x1 per conv (1.66M / 0.139G; with ``batch_norm=True`` 1,667,688 / 141.4M, both as printed;
  a CSC would be 3.47M / 0.32G). ResNet18's 2.81M is twice shift -> 1x1 (1.43M / 27M) and
  matches a CSC with ``mid = C_out`` (2.83M), whose MACs are 16% over the printed 42M (the
  first 1x1 of the 3 strided units runs at the input resolution, as in Wu et al.'s code);
  ``replace_stem=True`` gives 2,827,496 / 44.54M.
* Depth-wise: one MobileNet separable conv per conv gives half the printed counts (1.47M /
  28M, 1.70M / 0.15G); two in sequence reproduce #P on ResNet18 (2.91M) and #F on VGG16
  (0.34G); a depth multiplier of 2 instead is 6% under on #P. ``replace_stem=True`` reproduces
  both ResNet18 cells (2,910,465 / 44.87M).
* Ghost: a primary conv with the replaced kernel and s = 2 halves the conv's parameters, as
  printed (5.72M vs 5.77M, 7.40M vs 7.45M), but also its MACs, where the paper prints about a
  quarter (46M, 0.32G). No candidate gives both: s = 4 gives the printed MACs (46.67M, 0.321G)
  with half the printed parameters (2.98M, 3.73M); a 1x1 primary conv gives 0.84M / 20M. The
  default follows the parameters and GhostNet's s = 2; the MACs gap is reported, not fitted.
* NLPs (2x) on VGG16: width 2 of the layout that reproduces NLPs (1x) on both backbones and
  NLPs (2x) on ResNet18 gives 9.86M / 0.85G against the printed 14.3M / 1.23G (-31%); no
  layout of the ``nlp`` family is fitted to that row.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..primitives import Shift, derive_seed
from ..registries import SHARING, register_conv_unit
from ..units import ConvBN, ConvSpec
from .etr_nlp import NLP_DEFAULT_PRIMS, _NLPUnits
from .hard_sharing import HardSharing

__all__ = ["ConvAlternatives", "CONV_TYPES", "TABLE2_DEFAULTS", "LocalBinaryConv", "LBConvUnit",
           "ShiftUnit", "DepthwiseSeparableUnit", "GhostUnit"]

CONV_TYPES: tuple[str, ...] = ("conv", "lbconv", "shift", "depthwise", "ghost", "nlp")

# Per-backbone defaults of the kwargs left None (chosen with fit.table2_layouts, see above).
TABLE2_DEFAULTS: dict[str, dict[str, Any]] = {
    "resnet18": {"shift_layout": "csc"},
    "vgg16": {"shift_layout": "shift_conv"},
    "*": {"shift_layout": "shift_conv"},
}


def _subsample(x: Tensor, stride: int) -> Tensor:
    return x[..., ::stride, ::stride] if stride > 1 else x


def _learnable(in_ch: int, out_ch: int, k: int, stride: int, spec: ConvSpec, groups: int = 1,
               padding: int | None = None) -> nn.Sequential:
    """conv -> BN when the replaced layer has BN; conv with the layer's bias setting otherwise."""
    pad = k // 2 if padding is None else padding
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, k, stride, pad, groups=groups,
                                         bias=spec.bias)]
    if spec.norm:
        layers.append(nn.BatchNorm2d(out_ch, track_running_stats=spec.track_running_stats))
    return nn.Sequential(*layers)


class _Unit(nn.Module):
    """Base: ``stride_mode`` handling. ``"in"``: the first spatial op gets the stride;
    ``"after"``: everything runs at stride 1 and the output is subsampled."""

    def __init__(self, spec: ConvSpec, stride_mode: str):
        super().__init__()
        if stride_mode not in ("in", "after"):
            raise ValueError(f"stride_mode must be 'in' or 'after', got {stride_mode!r}")
        self.spec = spec
        self.stride_mode = stride_mode
        self.s_in = spec.stride if stride_mode == "in" else 1
        self.s_after = 1 if stride_mode == "in" else spec.stride

    def body(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return _subsample(self.body(x), self.s_after)


class LocalBinaryConv(nn.Module):
    """Fixed sparse binary convolution (LBCNN): weight buffer ``(out_ch, in_ch, k, k)`` with
    values in {-1, 0, +1}, exactly ``max(1, round((1 - sparsity) * in_ch * k * k))`` non-zeros
    per filter at random positions; output scaled by the fixed ``1 / sqrt(non-zeros)`` (buffer)
    so that it roughly keeps the input's variance. Nothing here is learnable."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, sparsity: float = 0.5, seed: int = 0):
        super().__init__()
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        k = int(kernel_size)
        self.in_ch, self.out_ch, self.kernel_size, self.stride = int(in_ch), int(out_ch), k, int(stride)
        self.padding = k // 2 if padding is None else int(padding)
        self.sparsity = float(sparsity)
        fan_in = self.in_ch * k * k
        nnz = max(1, int(round((1.0 - self.sparsity) * fan_in)))
        g = torch.Generator().manual_seed(int(seed))
        order = torch.rand(self.out_ch, fan_in, generator=g).argsort(dim=1)
        support = torch.zeros(self.out_ch, fan_in)
        support.scatter_(1, order[:, :nnz], 1.0)
        signs = torch.randint(0, 2, (self.out_ch, fan_in), generator=g).float() * 2 - 1
        self.register_buffer("weight", (signs * support).view(self.out_ch, self.in_ch, k, k))
        self.register_buffer("scale", torch.tensor(1.0 / math.sqrt(nnz)))
        self.nnz_per_filter = nnz

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        return y * self.scale.to(y.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_ch}, {self.out_ch}, k={self.kernel_size}, stride={self.stride}, "
                f"sparsity={self.sparsity} (fixed)")


_ACTS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "none": nn.Identity}


class LBConvUnit(_Unit):
    """Fixed binary kxk conv ``C_in -> m`` -> nonlinearity -> learnable 1x1 ``m -> C_out`` (-> BN)."""

    def __init__(self, spec: ConvSpec, maps: int, sparsity: float = 0.5, act: str = "relu",
                 seed: int = 0, stride_mode: str = "in"):
        super().__init__(spec, stride_mode)
        if act not in _ACTS:
            raise ValueError(f"lb_act must be one of {sorted(_ACTS)}, got {act!r}")
        self.maps = int(maps)
        self.fixed = LocalBinaryConv(spec.in_ch, self.maps, spec.kernel_size, self.s_in, spec.padding,
                                     sparsity, seed)
        self.act = _ACTS[act]()
        self.pointwise = _learnable(self.maps, spec.out_ch, 1, 1, spec)

    def body(self, x: Tensor) -> Tensor:
        return self.pointwise(self.act(self.fixed(x)))


class ShiftUnit(_Unit):
    """``"shift_conv"``: shift -> 1x1 (-> BN); ``"csc"``: 1x1 -> BN -> ReLU -> shift -> 1x1 (-> BN)."""

    def __init__(self, spec: ConvSpec, layout: str = "shift_conv", mid: int | None = None,
                 stride_mode: str = "in"):
        super().__init__(spec, stride_mode)
        if layout not in ("shift_conv", "csc"):
            raise ValueError(f"shift_layout must be 'shift_conv' or 'csc', got {layout!r}")
        self.layout = layout
        if layout == "shift_conv":
            self.expand = None
            self.shift = Shift(spec.in_ch, stride=self.s_in)
            self.pointwise = _learnable(spec.in_ch, spec.out_ch, 1, 1, spec)
        else:
            m = int(mid if mid is not None else spec.out_ch)
            self.expand = nn.Sequential(*_learnable(spec.in_ch, m, 1, 1, spec), nn.ReLU(inplace=True))
            self.shift = Shift(m, stride=self.s_in)
            self.pointwise = _learnable(m, spec.out_ch, 1, 1, spec)

    def body(self, x: Tensor) -> Tensor:
        if self.expand is not None:
            x = self.expand(x)
        return self.pointwise(self.shift(x))


class DepthwiseSeparableUnit(_Unit):
    """``layers`` depth-wise separable convs in sequence, each: depth-wise kxk ``C -> C *
    multiplier`` (-> BN) -> ReLU -> point-wise 1x1 (-> BN); the first maps ``C_in -> C_out``
    (and carries the stride), the others ``C_out -> C_out``, with a ReLU between them.
    ``layers=1`` is MobileNet's replacement of one conv."""

    def __init__(self, spec: ConvSpec, multiplier: int = 1, layers: int = 1, stride_mode: str = "in"):
        super().__init__(spec, stride_mode)
        if layers < 1 or multiplier < 1:
            raise ValueError("dw_layers and dw_multiplier must be >= 1")
        self.multiplier, self.layers = int(multiplier), int(layers)
        seps: list[nn.Module] = []
        in_ch, stride, pad = spec.in_ch, self.s_in, spec.padding
        for i in range(self.layers):
            mid = in_ch * self.multiplier
            if i:
                seps.append(nn.ReLU(inplace=True))
            seps += [*_learnable(in_ch, mid, spec.kernel_size, stride, spec, groups=in_ch, padding=pad),
                     nn.ReLU(inplace=True), *_learnable(mid, spec.out_ch, 1, 1, spec)]
            in_ch, stride, pad = spec.out_ch, 1, spec.kernel_size // 2
        self.body_layers = nn.Sequential(*seps)

    def body(self, x: Tensor) -> Tensor:
        return self.body_layers(x)


class GhostUnit(_Unit):
    """Ghost module: ``y1 = primary(x)`` (``ceil(C_out / ratio)`` maps, -> BN), ``y2 =
    cheap(ReLU(y1))`` (depth-wise ``dw_size``, ``ratio - 1`` maps per primary map, -> BN),
    output ``cat(y1, y2)[:, :C_out]`` (pre-activation, like every unit)."""

    def __init__(self, spec: ConvSpec, ratio: int = 2, kernel_size: int | None = None, dw_size: int = 3,
                 stride_mode: str = "in"):
        super().__init__(spec, stride_mode)
        if ratio < 2:
            raise ValueError("ghost_ratio must be >= 2")
        k = spec.kernel_size if kernel_size is None else int(kernel_size)
        self.init_ch = math.ceil(spec.out_ch / ratio)
        self.new_ch = self.init_ch * (ratio - 1)
        pad = spec.padding if k == spec.kernel_size else k // 2
        self.primary = _learnable(spec.in_ch, self.init_ch, k, self.s_in, spec, padding=pad)
        self.cheap = _learnable(self.init_ch, self.new_ch, dw_size, 1, spec, groups=self.init_ch)

    def body(self, x: Tensor) -> Tensor:
        y1 = self.primary(x)
        y2 = self.cheap(F.relu(y1))
        return torch.cat([y1, y2], dim=1)[:, : self.spec.out_ch]


@SHARING.register("conv_alt")
class ConvAlternatives(_NLPUnits, HardSharing):
    """Hard sharing whose conv units are replaced by ``conv`` (ETR-NLP Table 2); see the module
    docstring for every keyword argument and how its default was chosen."""

    task_conditional = False

    def __init__(self, backbone: str = "resnet18", out_dims: list[int] | None = None, conv: str = "conv",
                 replace_stem: bool = False, replace_downsample: bool = False,
                 stride_mode: str | None = None,
                 lb_maps: float = 1.0, lb_maps_of: str = "out", lb_sparsity: float = 0.5,
                 lb_act: str = "relu", lb_seed: int = 0,
                 shift_layout: str | None = None, shift_mid: float = 1.0,
                 dw_multiplier: int = 1, dw_layers: int = 2,
                 ghost_ratio: int = 2, ghost_kernel: int | None = None, ghost_dw: int = 3,
                 prims: Sequence[Any] = NLP_DEFAULT_PRIMS, groups: int = 2, nlp_seed: int = 0,
                 **backbone_kwargs):
        if conv not in CONV_TYPES:
            raise ValueError(f"conv must be one of {CONV_TYPES}, got {conv!r}")
        defaults = TABLE2_DEFAULTS.get(backbone, TABLE2_DEFAULTS["*"])
        self.conv = conv
        self.replace_stem, self.replace_downsample = bool(replace_stem), bool(replace_downsample)
        if stride_mode is None:
            stride_mode = "after" if conv == "nlp" else "in"
        if stride_mode not in ("in", "after"):
            raise ValueError(f"stride_mode must be 'in' or 'after', got {stride_mode!r}")
        self.alt_stride_mode = stride_mode
        if lb_maps_of not in ("in", "out"):
            raise ValueError(f"lb_maps_of must be 'in' or 'out', got {lb_maps_of!r}")
        self.lb_maps, self.lb_maps_of = float(lb_maps), lb_maps_of
        if lb_act not in _ACTS:
            raise ValueError(f"lb_act must be one of {sorted(_ACTS)}, got {lb_act!r}")
        self.lb_sparsity, self.lb_act, self.lb_seed = float(lb_sparsity), lb_act, int(lb_seed)
        self.shift_layout = shift_layout if shift_layout is not None else defaults["shift_layout"]
        if self.shift_layout not in ("shift_conv", "csc"):
            raise ValueError(f"shift_layout must be 'shift_conv' or 'csc', got {self.shift_layout!r}")
        self.shift_mid = float(shift_mid)
        self.dw_multiplier, self.dw_layers = int(dw_multiplier), int(dw_layers)
        self.ghost_ratio, self.ghost_dw = int(ghost_ratio), int(ghost_dw)
        self.ghost_kernel = None if ghost_kernel is None else int(ghost_kernel)
        self._nlp_setup(prims, groups, nlp_seed, replace_stem, replace_downsample,
                        "prims" if stride_mode == "in" else "after")
        super().__init__(backbone, out_dims, **backbone_kwargs)

    def replaces(self, spec: ConvSpec) -> bool:
        """Whether the unit ``spec`` gets the alternative (else a standard conv -> BN)."""
        if self.conv == "conv":
            return False
        if spec.role == "stem":
            return self.replace_stem
        if spec.role == "downsample":
            return self.replace_downsample
        return True

    def make_unit(self, spec: ConvSpec) -> nn.Module:
        if not self.replaces(spec):
            return ConvBN(spec)
        sm = self.alt_stride_mode
        if self.conv == "nlp":
            return self.make_nlp(spec)  # the ``nlp`` scheme's unit, verbatim
        if self.conv == "lbconv":
            base = spec.out_ch if self.lb_maps_of == "out" else spec.in_ch
            return LBConvUnit(spec, max(1, int(round(self.lb_maps * base))), self.lb_sparsity, self.lb_act,
                              derive_seed(self.lb_seed, spec.index), sm)
        if self.conv == "shift":
            return ShiftUnit(spec, self.shift_layout, max(1, int(round(self.shift_mid * spec.out_ch))), sm)
        if self.conv == "depthwise":
            return DepthwiseSeparableUnit(spec, self.dw_multiplier, self.dw_layers, sm)
        return GhostUnit(spec, self.ghost_ratio, self.ghost_kernel, self.ghost_dw, sm)


# conv_alt's ``conv`` IS its conv unit, and hard sharing with one of them is conv_alt (hard sharing
# with NLP blocks is the ``nlp`` scheme: see etr_nlp.py)
for _unit in ("lbconv", "shift", "depthwise", "ghost"):
    register_conv_unit("hard_sharing", _unit, "conv_alt", conv=_unit)
    register_conv_unit("conv_alt", _unit, "conv_alt", conv=_unit)
register_conv_unit("conv_alt", "nlp", "conv_alt", conv="nlp")
