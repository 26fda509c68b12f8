"""Non-learnable primitives (NLPs) and the NLP block of ETR-NLP (Ding et al., CVPR 2023, Sec. 3.1).

The five primitive types of the paper (any subset is expressible, so all 31 configurations of
Table 1 / Table S1 can be built):

=========  =========================================================================  =========
name       operation (stride 1, "same" padding unless ``stride`` > 1)                 per input
                                                                                      channel
=========  =========================================================================  =========
``avg``    average pooling, ``kernel_size`` (odd), ``count_include_pad=False``         1 output
``max``    max pooling, ``kernel_size`` (odd)                                          1 output
``conv``   fixed random conv (LBCNN): ``depthwise`` or full, ``binary`` (+-1) or real  ``expansion``
           (N(0,1)) weights, ``sparsity`` = fraction of zero weights, ``kernel_size``
``shift``  Shift (Wu et al. 2018): channels split into 9 groups, 8 shifted by           1 output
           ``dilation`` pixels in the 8 directions, the rest (identity) unshifted
``noise``  Perturbation (PNN): ``x + n`` with a fixed random additive mask ``n`` of    ``expansion``
           standard deviation ``level`` (one mask per output channel and position)
=========  =========================================================================  =========

No primitive has a learnable parameter: fixed weights, noise seeds and levels are buffers.
Every primitive returns ``(B, C * expansion, H', W')`` with the outputs of input channel ``c``
contiguous (channels ``c*e .. c*e+e-1``).

:class:`NLPBlock` = primitives in parallel -> concat -> channel shuffle (so that each group of
the following 1x1 conv sees, for its input channels, one feature from EVERY primitive: Fig. 4)
-> group-wise learnable 1x1 conv -> BN.

Choices where the paper is silent (and why):

* **Stride** (``NLPBlock(stride_mode=...)``): ``"after"`` (default) runs the primitives and the
  1x1 recombination at the input resolution and subsamples its output; ``"prims"`` applies the
  stride inside the primitives (strided pooling / fixed conv, shift then subsample, subsample
  then add noise). The outputs are identical for pooling, fixed conv and shift (the 1x1 is
  pointwise) and equally distributed for noise; ``"prims"`` is ``stride**2`` cheaper on strided
  layers. ``"after"`` is the default because it is the layout that reproduces the published
  FLOPs: fvcore counts 42.75M (published 43M) for the NLPs ResNet18 at 64x64 and 148.4M
  (published 148M) for NLPs (2x), against 35.5M / 119.7M with ``"prims"``, while the parameter
  counts (2.04M / 8.09M vs 2.05M / 8.11M) do not depend on it.
* **Fixed conv scale**: raw weights are exactly in {-1, 0, +1} (LBCNN); the output is multiplied
  by a fixed ``scale`` (default ``1/sqrt(nnz per filter)``) so that, like pooling, the primitive
  roughly preserves the input's variance - otherwise the concatenated features differ in scale
  by ~sqrt(fan-in) before the shared 1x1 conv.
* **Sparsity** is exact per filter: each filter has ``max(1, round((1-s) * fan_in))`` non-zeros
  at random positions (LBCNN draws Bernoulli masks; exact counts make the requested sparsity a
  property rather than an expectation).
* **Noise** is uniform (PNN) scaled to standard deviation ``level`` (``U(-sqrt(3) level,
  sqrt(3) level)``); ``distribution="gaussian"`` gives N(0, level^2). The mask depends on the
  output size, so it is generated lazily per spatial size, deterministically from the seed
  (cached in a non-persistent buffer; the seed and level are persistent buffers).
* **Channel shuffle with unequal expansions** is generalised as "all outputs of input channel
  ``c`` are contiguous, in primitive order" - identical to ``torch.channel_shuffle(y, k)`` when
  every primitive has expansion 1 (the paper's pseudocode).
* **Groups** of the 1x1 conv: the requested number must divide both ``in_ch`` and ``out_ch``
  (so each group covers whole input channels); otherwise the largest common divisor
  ``gcd(groups, in_ch, out_ch)`` is used and stored in ``NLPBlock.groups``. The paper's
  pseudocode uses ``groups=C_in`` (one output per group), which cannot produce ``C_out != C_in``
  channels and would give ResNet18 ~0.3M parameters, far from the published 2.05M / 8.0M; the
  layouts are therefore a keyword argument (see ``mtlrepro.fit.nlp_layouts.search_nlp_layouts``).

Primitive specs are strings ``"avg:k=9"``, ``"conv:k=3,e=2,sparsity=0.5"``, ``"noise:level=0.1"``,
dicts ``{"type": "avg", "kernel_size": 9}`` or tuples ``("avg", {"k": 9})``; ``k`` and ``e`` are
short for ``kernel_size`` and ``expansion``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlrepro.registry import Registry

__all__ = [
    "Primitive", "AvgPool", "MaxPool", "FixedConv", "Shift", "Perturb", "NLPBlock", "PRIMITIVES",
    "parse_prim", "build_primitive", "derive_seed", "seeded_keys", "seeded_subset", "seeded_index",
    "PRIMITIVE_TYPES",
]

PRIMITIVES: Registry[type["Primitive"]] = Registry("non-learnable primitive")
PRIMITIVE_TYPES = ("avg", "max", "conv", "shift", "noise")
_ALIASES = {"k": "kernel_size", "e": "expansion", "s": "sparsity", "d": "dilation"}


def _seed_words(parts: Sequence[int]) -> list[int]:
    words: list[int] = []
    for p in parts:  # SeedSequence wants non-negative 32-bit words: split each int in two
        p = int(p) & 0xFFFF_FFFF_FFFF_FFFF
        words += [p & 0xFFFFFFFF, p >> 32]
    return words


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy SeedSequence), independent of global RNG."""
    state = np.random.SeedSequence(_seed_words(parts)).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF


# Discrete draws (which units, which index) are defined by SeedSequence's hash, not by a numpy
# ``Generator`` method: numpy keeps a Generator's stream only "on the same build of numpy ... on
# the same machine" (numpy.random compatibility policy; NEP 19 lets methods such as ``choice`` and
# ``integers`` change algorithm between releases), while ``SeedSequence.generate_state`` is the
# fixed hash (O'Neill's seed_seq design) that every seeded BitGenerator starts from.
def seeded_keys(n: int, *parts: int) -> np.ndarray:
    """``n`` uint64 keys, a fixed function of the integers ``parts`` (SeedSequence's hash)."""
    return np.random.SeedSequence(_seed_words(parts)).generate_state(int(n), np.uint64)


def seeded_subset(pool: Sequence[int] | np.ndarray, k: int, *parts: int) -> np.ndarray:
    """``k`` distinct elements of ``pool``, uniform over its k-subsets: the elements whose keys
    (:func:`seeded_keys` of ``parts``, one per element) are the ``k`` smallest, in key order.
    i.i.d. keys make every order of the pool equally likely, so its first ``k`` are a uniform
    k-subset; equal 64-bit keys (probability ~n^2 / 2^65) fall back to pool order."""
    pool = np.asarray(pool)
    if not 0 <= k <= pool.size:
        raise ValueError(f"cannot draw {k} of {pool.size} elements")
    return pool[np.argsort(seeded_keys(pool.size, *parts), kind="stable")[:k]]


def seeded_index(n: int, *parts: int) -> int:
    """An index in ``range(n)``, uniform: the position of the smallest of ``n`` keys."""
    if n < 1:
        raise ValueError(f"cannot draw an index of an empty range (n={n})")
    return int(np.argmin(seeded_keys(n, *parts)))


def _randn_float32(g: torch.Generator, *shape: int) -> Tensor:
    """N(0, 1) in float32, the same on every CPU: drawn in float64 and rounded. (float32
    ``torch.randn`` on CPU takes an AVX2 Box-Muller kernel or the scalar one by
    ``ATEN_CPU_CAPABILITY``, whose results differ in the last bits.)"""
    return torch.randn(*shape, generator=g, dtype=torch.float64).float()


class Primitive(nn.Module):
    """Base: a parameter-free map ``(B, C, H, W) -> (B, C * expansion, H / stride, W / stride)``."""

    expansion: int = 1

    def __init__(self, channels: int, stride: int = 1):
        super().__init__()
        if stride < 1:
            raise ValueError("stride must be >= 1")
        self.channels = int(channels)
        self.stride = int(stride)

    @property
    def out_channels(self) -> int:
        return self.channels * self.expansion


def _odd(k: int, name: str) -> int:
    k = int(k)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"{name}: kernel_size must be odd and >= 1 for 'same' padding, got {k}")
    return k


@PRIMITIVES.register("avg")
class AvgPool(Primitive):
    def __init__(self, channels: int, kernel_size: int = 3, stride: int = 1, seed: int = 0):
        super().__init__(channels, stride)
        self.kernel_size = _odd(kernel_size, "avg")

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel_size
        if k == 1:
            return x[..., ::self.stride, ::self.stride] if self.stride > 1 else x
        return F.avg_pool2d(x, k, self.stride, k // 2, count_include_pad=False)

    def extra_repr(self) -> str:
        return f"k={self.kernel_size}, stride={self.stride}"


@PRIMITIVES.register("max")
class MaxPool(Primitive):
    def __init__(self, channels: int, kernel_size: int = 3, stride: int = 1, seed: int = 0):
        super().__init__(channels, stride)
        self.kernel_size = _odd(kernel_size, "max")

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel_size
        if k == 1:
            return x[..., ::self.stride, ::self.stride] if self.stride > 1 else x
        return F.max_pool2d(x, k, self.stride, k // 2)

    def extra_repr(self) -> str:
        return f"k={self.kernel_size}, stride={self.stride}"


@PRIMITIVES.register("conv")
class FixedConv(Primitive):
    """Convolution with fixed random weights (local binary convolution, LBCNN).

    ``weight`` buffer: ``(C * expansion, 1, k, k)`` if ``depthwise`` else ``(C * expansion, C, k, k)``;
    values in {-1, 0, +1} if ``binary`` else N(0, 1) at the non-zero positions; each filter has
    exactly ``max(1, round((1 - sparsity) * fan_in))`` non-zeros. ``scale`` (buffer) multiplies
    the output: ``"auto"`` = 1/sqrt(non-zeros per filter).
    """

    def __init__(self, channels: int, kernel_size: int = 3, stride: int = 1, depthwise: bool = True,
                 binary: bool = True, sparsity: float = 0.5, expansion: int = 1,
                 scale: float | str = "auto", seed: int = 0):
        super().__init__(channels, stride)
        self.kernel_size = _odd(kernel_size, "conv")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        self.expansion = int(expansion)
        self.depthwise, self.binary, self.sparsity = bool(depthwise), bool(binary), float(sparsity)
        k = self.kernel_size
        cin = 1 if self.depthwise else self.channels
        n_out = self.channels * self.expansion
        fan_in = cin * k * k
        nnz = max(1, int(round((1.0 - self.sparsity) * fan_in)))
        g = torch.Generator().manual_seed(int(seed))
        order = torch.rand(n_out, fan_in, generator=g).argsort(dim=1, stable=True)  # ties: index order
        support = torch.zeros(n_out, fan_in)
        support.scatter_(1, order[:, :nnz], 1.0)
        if self.binary:
            values = torch.randint(0, 2, (n_out, fan_in), generator=g).float() * 2 - 1
        else:
            values = _randn_float32(g, n_out, fan_in)
        self.register_buffer("weight", (values * support).view(n_out, cin, k, k))
        s = 1.0 / math.sqrt(nnz) if scale == "auto" else float(scale)
        self.register_buffer("scale", torch.tensor(s))
        self.nnz_per_filter = nnz

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype)
        groups = self.channels if self.depthwise else 1
        y = F.conv2d(x, w, None, self.stride, self.kernel_size // 2, 1, groups)
        return y * self.scale.to(y.dtype)

    def extra_repr(self) -> str:
        kind = ("depthwise" if self.depthwise else "full") + (" binary" if self.binary else " real")
        return f"{kind}, k={self.kernel_size}, e={self.expansion}, sparsity={self.sparsity}, stride={self.stride}"


@PRIMITIVES.register("shift")
class Shift(Primitive):
    """Shift (Wu et al., CVPR 2018): 8 channel groups of size C//9 move ``dilation`` pixels in
    the 8 compass directions (zero fill); the remaining channels (>= C//9) stay in place."""

    DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))

    def __init__(self, channels: int, stride: int = 1, dilation: int = 1, seed: int = 0):
        super().__init__(channels, stride)
        self.dilation = int(dilation)
        self.group = channels // 9

    def forward(self, x: Tensor) -> Tensor:
        d, g = self.dilation, self.group
        if g == 0 or d == 0:
            out = x
        else:
            H, W = x.shape[-2:]
            xp = F.pad(x[:, : 8 * g], (d, d, d, d))
            parts = []
            for i, (dy, dx) in enumerate(self.DIRECTIONS):
                # output(y, x) = input(y - dy*d, x - dx*d): the content moves by (dy, dx)
                parts.append(xp[:, i * g:(i + 1) * g, d - dy * d: d - dy * d + H, d - dx * d: d - dx * d + W])
            parts.append(x[:, 8 * g:])
            out = torch.cat(parts, dim=1)
        return out[..., ::self.stride, ::self.stride] if self.stride > 1 else out

    def extra_repr(self) -> str:
        return f"dilation={self.dilation}, group={self.group}, stride={self.stride}"


@PRIMITIVES.register("noise")
class Perturb(Primitive):
    """Additive fixed noise (Perturbative Neural Networks): ``x + n``, ``std(n) = level``.

    Input channel ``c`` is replicated ``expansion`` times, each copy with its own fixed mask.
    The mask for output size ``(H', W')`` is drawn from a generator seeded by
    ``(seed, C, expansion, H', W')``, so it is identical across runs, devices and resumes.
    """

    def __init__(self, channels: int, level: float = 0.1, stride: int = 1, expansion: int = 1,
                 distribution: str = "uniform", seed: int = 0):
        super().__init__(channels, stride)
        if distribution not in ("uniform", "gaussian"):
            raise ValueError("distribution must be 'uniform' or 'gaussian'")
        self.expansion = int(expansion)
        self.distribution = distribution
        self.register_buffer("seed", torch.tensor(int(seed), dtype=torch.int64))
        self.register_buffer("level", torch.tensor(float(level)))
        self.register_buffer("noise", None, persistent=False)
        self._seed, self._level = int(seed), float(level)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._seed, self._level = int(self.seed), float(self.level)
        self.noise = None  # regenerate from the loaded seed / level

    def make_noise(self, h: int, w: int) -> Tensor:
        """The (C * expansion, h, w) mask, std ``level``, on CPU in float32."""
        n = self.channels * self.expansion
        g = torch.Generator().manual_seed(derive_seed(self._seed, self.channels, self.expansion, h, w))
        if self.distribution == "uniform":
            unit = (torch.rand(n, h, w, generator=g) * 2 - 1) * math.sqrt(3.0)
        else:
            unit = _randn_float32(g, n, h, w)
        return unit * self._level

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[..., ::self.stride, ::self.stride]
        h, w = x.shape[-2:]
        noise = self.noise
        if noise is None or noise.shape[-2:] != (h, w) or noise.device != x.device:
            noise = self.make_noise(h, w).to(x.device)
            self.noise = noise
        if self.expansion > 1:
            x = x.repeat_interleave(self.expansion, dim=1)
        return x + noise.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"level={self._level}, e={self.expansion}, {self.distribution}, seed={self._seed}, "
                f"stride={self.stride}")


def parse_prim(spec: Any) -> tuple[str, dict]:
    """Normalise a primitive spec to ``(type, kwargs)``; see the module docstring for formats."""
    if isinstance(spec, str):
        name, _, rest = spec.partition(":")
        kwargs: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, val = item.partition("=")
            if not eq:
                raise ValueError(f"primitive spec {spec!r}: expected key=value, got {item!r}")
            kwargs[key.strip()] = _literal(val.strip())
    elif isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("type")
        kwargs = spec
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str):
        name, kwargs = spec[0], dict(spec[1])
    else:
        raise TypeError(f"cannot parse primitive spec {spec!r}")
    name = name.strip().lower()
    PRIMITIVES.get(name)  # unknown names raise with suggestions
    return name, {_ALIASES.get(k, k): v for k, v in kwargs.items()}


def _literal(val: str) -> Any:
    low = val.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(val)
        except ValueError:
            pass
    return val


def build_primitive(spec: Any, channels: int, stride: int = 1, seed: int = 0) -> Primitive:
    name, kwargs = parse_prim(spec)
    cls = PRIMITIVES.get(name)
    try:
        return cls(channels, stride=stride, seed=seed, **kwargs)
    except TypeError as e:
        raise TypeError(f"primitive {name!r}: {e}") from None


def prims_expansion(prims: Sequence[Any]) -> int:
    """Total primitive outputs per input channel (E) of a primitive list, without building it."""
    total = 0
    for spec in prims:
        name, kwargs = parse_prim(spec)
        total += int(kwargs.get("expansion", 1)) if name in ("conv", "noise") else 1
    return total


class NLPBlock(nn.Module):
    """Primitives in parallel -> concat -> channel shuffle -> group-wise 1x1 conv -> BN.

    ``(B, in_ch, H, W) -> (B, out_ch, H/stride, W/stride)``. Learnable: the 1x1 conv
    (``in_ch * E / groups * out_ch`` weights, E = total primitive outputs per input channel) and
    the BN affine parameters.

    ``compute_layout`` (class attribute; ``"auto"``, ``"nchw"``, ``"channels_last"``): the
    memory layout the primitives and the 1x1 run in. ``"auto"`` = channels-last on CPU, the
    input's layout elsewhere. Why: PyTorch's CPU average pooling is 6-15x faster channels-last
    (vectorised over channels) and the 1x1 up to 2x; ResNet18 ETR-NLP, B = 16, one thread:
    eval forward 311 -> 211 ms, forward + backward 718 -> 586 ms. Results equal the NCHW
    computation up to float rounding (``tests/models/test_primitives.py``); the output is
    returned in the input's layout.
    """

    compute_layout: str = "auto"

    def __init__(self, in_ch: int, out_ch: int, prims: Sequence[Any], groups: int = 1, stride: int = 1,
                 seed: int = 0, norm: bool = True, bias: bool = False, track_running_stats: bool = True,
                 stride_mode: str = "after"):
        super().__init__()
        if not prims:
            raise ValueError("NLPBlock needs at least one primitive")
        if stride_mode not in ("after", "prims"):
            raise ValueError(f"stride_mode must be 'after' or 'prims', got {stride_mode!r}")
        self.in_ch, self.out_ch, self.stride = int(in_ch), int(out_ch), int(stride)
        self.stride_mode = stride_mode
        prim_stride = self.stride if stride_mode == "prims" else 1
        self.prims = nn.ModuleList(build_primitive(p, in_ch, prim_stride, derive_seed(seed, i))
                                   for i, p in enumerate(prims))
        self.expansions = [p.expansion for p in self.prims]
        self.E = sum(self.expansions)
        self.requested_groups = int(groups)
        self.groups = math.gcd(math.gcd(max(1, int(groups)), self.in_ch), self.out_ch)
        self.conv1x1 = nn.Conv2d(self.in_ch * self.E, self.out_ch, 1, groups=self.groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_ch, track_running_stats=track_running_stats) if norm else None

    def compute_channels_last(self, x: Tensor) -> bool:
        """Whether this call computes the primitives and the 1x1 in channels-last layout."""
        layout = self.compute_layout
        if layout == "auto":
            return x.device.type == "cpu"
        if layout not in ("nchw", "channels_last"):
            raise ValueError(f"NLPBlock.compute_layout must be 'auto', 'nchw' or 'channels_last', got {layout!r}")
        return layout == "channels_last"

    def features(self, x: Tensor) -> Tensor:
        """The shuffled primitive features ``(B, in_ch * E, H', W')`` (channel ``c * E + j`` =
        output ``j`` of input channel ``c``), channels-last when :meth:`compute_channels_last`."""
        B = x.shape[0]
        if self.compute_channels_last(x):
            # one layout change of the input; each primitive's (B, C*e, H, W) output read as
            # (B, H, W, C, e) and ONE concat along e gives the shuffled features already in
            # channels-last memory order (no second copy for the shuffle)
            xl = x.contiguous(memory_format=torch.channels_last)
            outs = [p(xl) for p in self.prims]
            H, W = outs[0].shape[-2:]
            parts = [o.permute(0, 2, 3, 1).reshape(B, H, W, self.in_ch, e)
                     for o, e in zip(outs, self.expansions)]
            y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=4)
            return y.reshape(B, H, W, self.in_ch * self.E).permute(0, 3, 1, 2)
        outs = [p(x) for p in self.prims]
        if len(outs) == 1:
            return outs[0]
        parts = [o.reshape(B, self.in_ch, e, *o.shape[-2:]) for o, e in zip(outs, self.expansions)]
        y = torch.cat(parts, dim=2)  # (B, C, E, H, W): channel c's features from every primitive
        return y.reshape(B, self.in_ch * self.E, *y.shape[-2:])

    def forward(self, x: Tensor) -> Tensor:
        channels_last_in = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        y = self.conv1x1(self.features(x))
        if self.stride > 1 and self.stride_mode == "after":
            y = y[..., ::self.stride, ::self.stride]
        # back to the caller's layout (the block's output is 1/E the size of its features)
        y = y.contiguous(memory_format=torch.channels_last if channels_last_in else torch.contiguous_format)
        return self.bn(y) if self.bn is not None else y

    def extra_repr(self) -> str:
        return (f"in={self.in_ch}, out={self.out_ch}, E={self.E}, groups={self.groups}, "
                f"stride={self.stride} ({self.stride_mode})")
