r"""Task Switching Networks (Sun, Probst, Paudel, Popović, Kanakis, Patel, Dai & Van Gool, ICCV 2021).

ONE encoder-decoder serves every task; the task switches it through conditioning parameters that
a small task-embedding network produces. One task runs per forward (``task_conditional``).

* Task code ``v_t`` (a fixed buffer, ``d`` dims): ``"khot"`` (the paper's orthogonal codes, its
  code's ``latent_z_task``: ``d // T`` ones in block ``t``, ``v_s^T v_t = 0`` for ``s != t``) or
  ``"gaussian"`` (``v_t ~ N(0, I_d)``, drawn from ``code_seed``).
* Task embedding network (the code's ``Intermediate_Generator``): ``l_t = (FC -> LeakyReLU(0.2))^n_fc
  (PixelNorm(v_t))``, ``PixelNorm(v) = v / sqrt(mean(v^2) + 1e-8)``, every FC ``d -> d``.
* Conditional convolution (the code's ``convrelu``): ``y = LeakyReLU(gamma_t * N(conv(x)) + beta_t)``
  with ``(gamma_t, beta_t) = A l_t``, one affine ``A: d -> 2C`` per module (bias 1 on gamma, 0 on
  beta) and ``N`` an affine-free InstanceNorm (AdaIN, ``norm="instance"``) or BatchNorm (the code's
  ``AdaBn``, ``norm="batch"``). Every FC is the code's equalised-learning-rate ``SLinear``:
  weights ``N(0, 1)`` used as ``w * sqrt(2 / fan_in)``. Instance norm of a 1x1 map (ASPP's image
  pooling branch) is undefined; that module applies ``gamma, beta`` to the raw conv output.
* Output: ONE layer of width ``W = max(out_dims)``; task ``t`` reads its ``out_dims[t]`` channels by
  adaptive average pooling along the channel axis (the authors' ``adaptive_avg_pool3d``).

Decoders (``decoder``):

* ``"unet"`` - the authors' ``ResNetUNet2_2`` with the ResNet's own widths: a conditional 1x1 on
  the stem (pre max-pool) and on each stage output; going up, ``cat(up(x), skip_s) -> 3x3`` of widths
  ``up_widths = (512, 256, 256, 128)``, then ``up`` to the input size, a 3x3 to ``final_width = 64``,
  and a 1x1 to ``W`` (convs with bias; ``up`` = bilinear, ``align_corners=True``, to the skip's size,
  so it also runs on the dilated ResNet-50, whose last three stages share stride 8).
* ``"aspp"`` - LibMTL's DeepLab head (:mod:`..heads.aspp`) with every conv -> BN -> ReLU a conditional
  convolution (bias-free convs, dropout 0.5 kept), output upsampled to the input size.
* ``"head"`` - any backbone: FiLM ``gamma_t * z + beta_t`` on the encoder's representation, then ONE
  head (the backbone's default or ``head=``) of width ``W``. ``"auto"``: ``"aspp"`` when ``head="aspp"``,
  another ``head`` -> ``"head"``, a dense ResNet (default head ``aspp``) -> ``"unet"``, else ``"head"``.

Each task's pass runs the whole network, encoder included (``supports_batched_tasks`` is False:
``forward_all`` and the synchronized step loop over the tasks).

Parameters (:func:`tsn_params`; conditioning ``C`` channels costs ``2 C (d + 1)``, the embedding
network ``n_fc (d^2 + d)``). Dilated ResNet-50, ``d = 512``, ``n_fc = 8`` (the authors' defaults):

* ``unet``: 54,579,719 (Cityscapes [7, 1]) / 54,580,109 (NYUv2 [13, 1, 3]) = 54.58M both;
* ``aspp``: 43,571,527 / 43,573,069 = 43.57M.

CoNAL prints 50.58M for both: its count is NOT reproduced. The ``unet`` count differs from it in one
digit only (typo or coincidence: CoNAL's TSN code is unpublished); no natural ASPP layout we tried
(FiLM on the 7 ASPP norms, the encoder's BNs or its stage outputs; ``d`` in 32..2048, ``n_fc`` in
0..8) gives 50.58M. What follows the authors (GuoleiSun/TSNs ``model.py``, ``train-new2-2-kevis-loader.py``):
codes, mapping network, SLinear, AdaIN, LeakyReLU(0.01) after each conditional conv, the U-Net, the
pooled single output. Chosen: ``d = 512`` (their constructor default; their PASCAL script passes
``5 x 20``), the ResNet-50 widths in the skips and first up-convs, the ASPP variant, shared running
statistics for ``norm="batch"``. Training is the trainer's: the authors step the optimizer after
each task's own batch (Adam, lr 1e-6 on the encoder, 1e-4 elsewhere); a ``synchronized`` update sums
the tasks' gradients on one batch and steps once.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.resnet import ResNetStages
from ..heads import head_factory
from ..interface import MTLModel
from ..registries import BACKBONES, SHARING
from ..units import ConvBN

__all__ = ["TSN", "TaskEmbedding", "CondConv", "UNetDecoder", "ASPPDecoder", "HeadDecoder",
           "tsn_params", "DECODERS", "CODES", "NORMS"]

DECODERS = ("auto", "unet", "aspp", "head")
CODES = ("khot", "gaussian")
NORMS = ("instance", "batch")
UP_WIDTHS = (512, 256, 256, 128)


def _conv(i: int, o: int, k: int, bias: bool = True) -> int:
    return i * o * k * k + (o if bias else 0)


def tsn_params(out_dims: Sequence[int], decoder: str, encoder_params: int, widths: Sequence[int],
               stem_width: int = 64, latent_dim: int = 512, n_fc: int = 8,
               up_widths: Sequence[int] = UP_WIDTHS, final_width: int = 64, aspp_ch: int = 256) -> int:
    """Hand count of a :class:`TSN` (``decoder`` ``"unet"`` or ``"aspp"``; ``widths`` = the stage
    widths, the last one what ASPP reads)."""
    W, d = max(out_dims), latent_dim
    cond = lambda c: 2 * c * (d + 1)  # noqa: E731  (one affine A: d -> 2C per conditional module)
    n = encoder_params + n_fc * (d * d + d)
    if decoder == "unet":
        chans = [stem_width, *widths]
        n += sum(_conv(c, c, 1) + cond(c) for c in chans)
        x = chans[-1]
        for skip, u in zip(chans[-2::-1], up_widths):
            n += _conv(skip + x, u, 3) + cond(u)
            x = u
        return n + _conv(x, final_width, 3) + cond(final_width) + _conv(final_width, W, 1)
    if decoder == "aspp":
        F_, c = widths[-1], aspp_ch
        n += F_ * c * (2 + 27) + 5 * c * c + 9 * c * c + 7 * cond(c)
        return n + _conv(c, W, 1)
    raise ValueError(f"tsn_params counts 'unet' / 'aspp', got {decoder!r}")


class ScaledLinear(nn.Module):
    """The authors' ``SLinear``: ``y = x (w sqrt(2 / fan_in))^T + b``, ``w ~ N(0, 1)``, ``b = 0``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = math.sqrt(2.0 / in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class TaskEmbedding(nn.Module):
    """Fixed task codes ``(T, d)`` (buffer) -> PixelNorm -> ``n_fc`` x (ScaledLinear, LeakyReLU(0.2))."""

    def __init__(self, n_tasks: int, latent_dim: int = 512, n_fc: int = 8, code: str = "khot",
                 code_seed: int = 0):
        super().__init__()
        if code not in CODES:
            raise ValueError(f"code must be one of {CODES}, got {code!r}")
        if code == "khot":
            k = latent_dim // n_tasks
            if k < 1:
                raise ValueError(f"khot codes need latent_dim >= n_tasks ({latent_dim} < {n_tasks})")
            codes = torch.zeros(n_tasks, latent_dim)
            for t in range(n_tasks):
                codes[t, t * k:(t + 1) * k] = 1
        else:
            codes = torch.randn(n_tasks, latent_dim, generator=torch.Generator().manual_seed(int(code_seed)))
        self.register_buffer("codes", codes)
        layers: list[nn.Module] = []
        for _ in range(n_fc):
            layers += [ScaledLinear(latent_dim, latent_dim), nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*layers)

    def forward(self, task: int) -> Tensor:
        v = self.codes[task:task + 1]
        v = v / torch.sqrt(v.square().mean(dim=1, keepdim=True) + 1e-8)
        return self.mapping(v)  # (1, d)


class CondConv(nn.Module):
    """conv -> affine-free norm -> ``gamma_t * . + beta_t`` (from ``A l_t``) -> LeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int, k: int, latent_dim: int, norm: str = "instance",
                 dilation: int = 1, bias: bool = True, negative_slope: float = 0.01):
        super().__init__()
        pad = dilation * (k // 2)
        self.conv = nn.Conv2d(in_ch, out_ch, k, padding=pad, dilation=dilation, bias=bias)
        self.norm = nn.BatchNorm2d(out_ch, affine=False) if norm == "batch" else None
        self.style = ScaledLinear(latent_dim, 2 * out_ch)
        with torch.no_grad():
            self.style.bias[:out_ch] = 1.0
        self.negative_slope = negative_slope

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        y = self.conv(x)
        if self.norm is not None:
            y = self.norm(y)
        elif y.shape[-1] * y.shape[-2] > 1:
            y = F.instance_norm(y)
        gamma, beta = self.style(w)[..., None, None].chunk(2, dim=1)
        return F.leaky_relu(y * gamma + beta, self.negative_slope)


def _up(x: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class UNetDecoder(nn.Module):
    """The authors' ``ResNetUNet2_2`` decoder on ``[stem, stage1..4]`` maps of ``chans`` channels."""

    def __init__(self, chans: Sequence[int], out_width: int, latent_dim: int, norm: str,
                 up_widths: Sequence[int] = UP_WIDTHS, final_width: int = 64, negative_slope: float = 0.01):
        super().__init__()
        cc = lambda i, o, k: CondConv(i, o, k, latent_dim, norm, negative_slope=negative_slope)  # noqa: E731
        self.skips = nn.ModuleList([cc(c, c, 1) for c in chans])
        ups, x = [], chans[-1]
        for skip, u in zip(chans[-2::-1], up_widths):
            ups.append(cc(skip + x, u, 3))
            x = u
        self.ups = nn.ModuleList(ups)
        self.final = cc(x, final_width, 3)
        self.out = nn.Conv2d(final_width, out_width, 1)

    def forward(self, feats: list[Tensor], w: Tensor, size: Sequence[int]) -> Tensor:
        x = self.skips[-1](feats[-1], w)
        for i, up in enumerate(self.ups):
            s = len(feats) - 2 - i
            skip = self.skips[s](feats[s], w)
            x = up(torch.cat([_up(x, skip.shape[-2:]), skip], dim=1), w)
        return self.out(self.final(_up(x, size), w))


class ASPPDecoder(nn.Module):
    """DeepLab-v3's ASPP head (rates 12/24/36) built of conditional convolutions."""

    def __init__(self, in_ch: int, out_width: int, latent_dim: int, norm: str, ch: int = 256,
                 rates: Sequence[int] = (12, 24, 36), dropout: float = 0.5, negative_slope: float = 0.01):
        super().__init__()
        cc = lambda i, o, k, r=1: CondConv(i, o, k, latent_dim, norm, r, False, negative_slope)  # noqa: E731
        self.branches = nn.ModuleList([cc(in_ch, ch, 1)] + [cc(in_ch, ch, 3, int(r)) for r in rates])
        self.pool = cc(in_ch, ch, 1)
        self.project = cc((len(rates) + 2) * ch, ch, 1)
        self.dropout = nn.Dropout(dropout)
        self.conv = cc(ch, ch, 3)
        self.out = nn.Conv2d(ch, out_width, 1)

    def forward(self, feats: list[Tensor], w: Tensor, size: Sequence[int]) -> Tensor:
        z = feats[-1]
        pooled = F.interpolate(self.pool(F.adaptive_avg_pool2d(z, 1), w), size=z.shape[-2:],
                               mode="bilinear", align_corners=False)
        y = torch.cat([b(z, w) for b in self.branches] + [pooled], dim=1)
        y = self.conv(self.dropout(self.project(y, w)), w)
        return _up(self.out(y), size)


class HeadDecoder(nn.Module):
    """FiLM ``gamma_t * z + beta_t`` on the representation (vector or map), then one shared head."""

    def __init__(self, feature_dim: int, head: nn.Module, latent_dim: int):
        super().__init__()
        self.style = ScaledLinear(latent_dim, 2 * feature_dim)
        with torch.no_grad():
            self.style.bias[:feature_dim] = 1.0
        self.out = head

    def forward(self, feats: list[Tensor], w: Tensor, size: Sequence[int]) -> Tensor:
        z = feats[-1]
        gamma, beta = self.style(w).reshape(1, -1, *([1] * (z.dim() - 2))).chunk(2, dim=1)
        return self.out(z * gamma + beta)


def pool_channels(y: Tensor, d: int) -> Tensor:
    """Adaptive average pooling of ``y``'s channel axis (dim 1) to ``d`` channels."""
    if y.shape[1] == d:
        return y
    pooled = F.adaptive_avg_pool3d(y.unsqueeze(1), (d, *y.shape[2:])) if y.dim() == 4 else \
        F.adaptive_avg_pool1d(y.unsqueeze(1), d)
    return pooled.squeeze(1)


def _resolve_decoder(decoder: str, head: str | None, head_kwargs: dict | None, bb, backbone: str) -> str:
    """``decoder`` with ``"auto"`` resolved (module docstring); refuses what cannot be built."""
    enc = bb.encoder
    if decoder == "auto":
        dense_resnet = isinstance(enc, ResNetStages) and getattr(bb.make_head, "name", None) == "aspp"
        decoder = ("aspp" if head == "aspp" else "head") if head is not None else \
            ("unet" if dense_resnet else "head")
    if decoder != "head" and (head_kwargs or head not in (None, "aspp") or (decoder == "unet" and head)):
        raise ValueError(f"decoder {decoder!r} is TSN's own output layer; head={head!r} / head_kwargs "
                         f"do not apply (decoder='head' takes them)")
    if decoder == "unet" and not isinstance(enc, ResNetStages):
        raise ValueError(f"decoder 'unet' needs a ResNet encoder (stem + 4 stages), got {backbone!r}")
    if decoder == "aspp" and not hasattr(enc, "forward_features"):
        raise ValueError(f"decoder 'aspp' needs a staged encoder, got {backbone!r}")
    return decoder


@SHARING.register("tsn")
class TSN(MTLModel):
    """Task Switching Network: one task-conditioned encoder-decoder; see the module docstring."""

    task_conditional = True
    version = 1

    def __init__(self, backbone: str = "resnet50_dilated", out_dims: list[int] | None = None,
                 decoder: str = "auto", latent_dim: int = 512, n_fc: int = 8, code: str = "khot",
                 code_seed: int = 0, norm: str = "instance", negative_slope: float = 0.01,
                 up_widths: Sequence[int] = UP_WIDTHS, final_width: int = 64, **backbone_kwargs):
        super().__init__()
        self._set_tasks(backbone, out_dims)
        head, head_kwargs = backbone_kwargs.pop("head", None), backbone_kwargs.pop("head_kwargs", None)
        if decoder not in DECODERS or norm not in NORMS:
            raise ValueError(f"decoder must be one of {DECODERS} and norm one of {NORMS}; "
                             f"got {decoder!r}, {norm!r}")
        bb = BACKBONES.get(backbone)(ConvBN, **backbone_kwargs)
        self.encoder, self.feature_dim = bb.encoder, bb.feature_dim
        decoder = _resolve_decoder(decoder, head, head_kwargs, bb, backbone)
        self.decoder_kind, self.latent_dim, self.n_fc = decoder, int(latent_dim), int(n_fc)
        self.embedding = TaskEmbedding(self.n_tasks, self.latent_dim, self.n_fc, code, code_seed)
        W = max(self.out_dims)
        if decoder == "unet":
            chans = [self.encoder.stem_width, *self.encoder.widths]
            self.decoder = UNetDecoder(chans, W, self.latent_dim, norm, up_widths, final_width, negative_slope)
        elif decoder == "aspp":
            self.decoder = ASPPDecoder(self.encoder.widths[-1], W, self.latent_dim, norm,
                                       negative_slope=negative_slope)
        else:
            make_head = head_factory(bb.feature_dim, bb.make_head, head, head_kwargs)
            self.decoder = HeadDecoder(bb.feature_dim, make_head(W), self.latent_dim)

    def features(self, x: Tensor) -> list[Tensor]:
        """What the decoder reads: ``[stem (pre max-pool), stage1..4]`` (unet), the staged maps
        (aspp), or ``[encoder(x)]`` (head)."""
        enc = self.encoder
        if self.decoder_kind == "unet":
            h = enc.relu(enc.stem(x))
            feats = [h]
            h = enc.maxpool(h)
            for stage in enc.stages:
                h = stage(h)
                feats.append(h)
            return feats
        if self.decoder_kind == "aspp":
            return enc.forward_features(x)
        return [enc(x)]

    def forward(self, x: Tensor, task: int | None = None) -> Tensor:
        if task is None:
            raise ValueError("TSN is task-conditional: call model(x, task=t) or model.forward_all(x)")
        if not 0 <= task < self.n_tasks:
            raise IndexError(f"task {task} out of range for {self.n_tasks} tasks")
        w = self.embedding(int(task))
        y = self.decoder(self.features(x), w, x.shape[-2:])
        return pool_channels(y, self.out_dims[task])

    def units(self) -> list[nn.Module]:
        return self.encoder.units()

    def last_shared_layer(self) -> nn.Module:
        """The output layer (every parameter is shared)."""
        return self.decoder.out
