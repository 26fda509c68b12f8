"""ViT-B/16 and ViT-S/16 (timm, 384) as DPT encoders: GatedMTL Tables 3 / 4's shared NYUD encoder.

The network is timm's ``vit_base_patch16_384`` / ``vit_small_patch16_384`` (``create_timm``; width
``C`` = 768 / 384, 12 pre-norm blocks of ``C / 64`` heads, MLP ``4C``, one class token, learned
position embeddings for a 24x24 grid). As DPT's ``forward_flex`` (``dpt/vit.py`` of
``isl-org/DPT``) the encoder runs at any input size whose sides are multiples of 16 (NYUD's
480x640: a 30x40 grid), resizing the grid part of the position embedding bilinearly
(``align_corners=False``, DPT's ``_resize_pos_embed``; timm's own ``dynamic_img_size`` resizes
bicubically, so DPT's is used) and keeping the class token's:

    z_0 = [cls; patch(x)] + [pos_cls; resize(pos_grid, h, w)],   z_k = block_k(z_{k-1}).

DPT reads the outputs of blocks ``hooks = (2, 5, 8, 11)`` (``_make_pretrained_vitb16_384``; before
the final LayerNorm, which DPT never uses; ViT-S uses the same hooks). The encoder returns ONE map
``(B, 8C, H/16, W/16)``: for hook ``l`` channels ``[2Cl, 2Cl + C)`` are its patch tokens and
``[2Cl + C, 2C(l + 1))`` its class token broadcast over the grid - per pixel exactly the ``2C``
vector DPT's ``ProjectReadout`` concatenates, so every readout (``project`` / ``add`` /
``ignore``) is the per-task decoder's (:mod:`mtlrepro.models.heads.dpt`), and the representation
the heads share is one tensor (what MGDA-UB / GradNorm / RotoGrad differentiate).

Conv units: the patch embedding (``Conv2d(3, C, 16, stride 16, bias)``) is the only conv; it is
``make_unit(ConvSpec(3, C, 16, 16, 0, role="stem", norm=False, bias=True))`` and takes timm's tensors
(random init or pretrained) when the unit holds exactly one such ``Conv2d``. ``units()`` = [it];
``last_shared_layer()`` = the last block's ``mlp.fc2``. Not a staged backbone (tokens, not maps,
flow between blocks). timm's final ``norm`` and classifier ``head`` are dropped (unused by DPT);
blocks after the last hook too.

Parameters (hand count ``144 C^2 + 1503 C``: patch ``769C``, tokens ``578C``, 12 blocks of
``12C^2 + 13C``): ViT-B/16 86,088,960 (timm's 86,859,496 less ``norm`` 1,536 and ``head``
769,000); ViT-S/16 21,810,816 (timm's 22,196,584 less 768 and 385,000).

NYUD ``[40, 1, 3]`` with the default ``dpt`` heads (features 64; measured: torch 2.14.1, timm 1.0.31,
fvcore 0.1.5, ``complexity.count``, eval, MACs; STL = ``flops_all_tasks``, the sum of 3 networks):

=========  ============  ============  ===================  ===================  ==================
backbone   MTL params    STL params    MTL 480x640 / 384^2  STL 480x640 / 384^2  GatedMTL (MTL/STL)
=========  ============  ============  ===================  ===================  ==================
ViT-B/16   124,562,988   296,740,908   188.03 G / 83.67 G   446.86 G / 194.75 G  294 / 759 G
ViT-S/16   33,319,692    76,941,324    74.73 G / 32.57 G    153.14 G / 63.60 G   118 / 248 G
=========  ============  ============  ===================  ===================  ==================

(At 480x640, ViT-B: linear layers 102.01 G, attention matmuls 26.59 G, patch conv 0.71 G, each
decoder's convs about 19.5 G.) No convention reproduces GatedMTL's print: 1x is 36-41 % below it,
2x (FLOPs) 18-28 % above.

Under ``torch.jit.trace`` (fvcore) the blocks run timm's explicit attention (``q k^T`` softmax
``v``, the same function) instead of ``scaled_dot_product_attention``, which fvcore cannot count.

Backbone keyword arguments: ``pretrained`` (None, ``"in21k_ft_in1k"`` = timm's default tag
``augreg_in21k_ft_in1k``, or a timm tag of :data:`PRETRAINED_TAGS`; loaded offline by
:func:`~mtlrepro.models.pretrained_timm.create_timm`), ``hooks`` ((2, 5, 8, 11)), ``in_channels``
(3), ``features`` (64: the default ``dpt`` head's width, GatedMTL A.3), ``timm_kwargs`` (extra
``timm.create_model`` arguments, e.g. ``embed_dim`` / ``depth`` for a test-sized ViT; not with
``pretrained``).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..heads import HeadFactory
from ..pretrained_timm import create_timm
from ..registries import BACKBONES
from ..units import ConvSpec
from .protocol import Backbone

__all__ = ["ViTEncoder", "build_dpt_vitb", "build_dpt_vits", "vit_encoder_params", "resize_pos_embed",
           "VITB16_ENCODER_PARAMS", "VITS16_ENCODER_PARAMS", "DPT_HOOKS", "PATCH", "PRETRAINED_TAGS"]

PATCH = 16
DPT_HOOKS = (2, 5, 8, 11)   # DPT's hooks["vitb16_384"] (dpt/models.py)
VITB16_ENCODER_PARAMS = 86_088_960
VITS16_ENCODER_PARAMS = 21_810_816
#: the backbones' ``pretrained`` spellings -> timm's tag, per timm model
PRETRAINED_TAGS = {
    "vit_base_patch16_384": {"in21k_ft_in1k": "augreg_in21k_ft_in1k",
                             "augreg_in21k_ft_in1k": "augreg_in21k_ft_in1k",
                             "orig_in21k_ft_in1k": "orig_in21k_ft_in1k"},
    "vit_small_patch16_384": {"in21k_ft_in1k": "augreg_in21k_ft_in1k",
                              "augreg_in21k_ft_in1k": "augreg_in21k_ft_in1k"},
}


def vit_encoder_params(embed_dim: int, depth: int = 12, grid: int = 24, mlp_ratio: int = 4,
                       in_channels: int = 3) -> int:
    """Hand count of :class:`ViTEncoder`: patch conv, class token, position embeddings, blocks."""
    c = embed_dim
    block = 2 * c + (3 * c * c + 3 * c) + (c * c + c) + 2 * c + (mlp_ratio * c * c + mlp_ratio * c) \
        + (mlp_ratio * c * c + c)
    return in_channels * PATCH * PATCH * c + c + c + (1 + grid * grid) * c + depth * block


def resize_pos_embed(pos: Tensor, grid: tuple[int, int], size: tuple[int, int], prefix: int = 1) -> Tensor:
    """DPT's ``_resize_pos_embed``: the ``grid`` part of ``pos`` ``(1, prefix + gh*gw, C)`` resized
    bilinearly (``align_corners=False``) to ``size``; the prefix tokens' rows unchanged."""
    if tuple(size) == tuple(grid):
        return pos
    tok, g = pos[:, :prefix], pos[:, prefix:]
    g = g.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)
    g = F.interpolate(g, size=tuple(size), mode="bilinear", align_corners=False)
    return torch.cat([tok, g.permute(0, 2, 3, 1).reshape(1, size[0] * size[1], -1)], dim=1)


def _ints(t: Tensor) -> tuple[int, int]:
    """``t``'s spatial size as ints (under tracing the sizes are traced; the graph is shape-specific)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return int(t.shape[-2]), int(t.shape[-1])


@contextmanager
def _explicit_attention(blocks: Sequence[nn.Module]) -> Iterator[None]:
    """timm's non-fused attention path while tracing (fvcore counts its matmuls, not SDPA)."""
    attns = [b.attn for b in blocks if hasattr(getattr(b, "attn", None), "fused_attn")]
    was = [a.fused_attn for a in attns]
    for a in attns:
        a.fused_attn = False
    try:
        yield
    finally:
        for a, w in zip(attns, was):
            a.fused_attn = w


def _take_conv(unit: nn.Module, conv: nn.Conv2d) -> bool:
    """Copy ``conv``'s tensors into ``unit`` when it holds exactly one Conv2d of its shapes."""
    cs = [m for m in unit.modules() if isinstance(m, nn.Conv2d)]
    if len(cs) != 1 or cs[0].weight.shape != conv.weight.shape or (cs[0].bias is None) != (conv.bias is None) \
            or any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in unit.modules()):
        return False
    with torch.no_grad():
        cs[0].weight.copy_(conv.weight)
        if conv.bias is not None:
            cs[0].bias.copy_(conv.bias)
    return True


class ViTEncoder(nn.Module):
    """timm's ViT with a ``make_unit`` patch embedding; ``forward`` -> ``(B, 8C, H/16, W/16)``."""

    stride = PATCH

    def __init__(self, make_unit: Callable[[ConvSpec], nn.Module], name: str, pretrained: str | None = None,
                 hooks: Sequence[int] = DPT_HOOKS, in_channels: int = 3, timm_kwargs: dict | None = None):
        super().__init__()
        if pretrained is not None and timm_kwargs:
            raise ValueError(f"timm_kwargs {sorted(timm_kwargs)} change the architecture; not with pretrained weights")
        net = create_timm(name, pretrained, in_chans=in_channels, num_classes=0, **(timm_kwargs or {}))
        self.hooks = tuple(int(h) for h in hooks)
        if len(self.hooks) != 4 or list(self.hooks) != sorted(set(self.hooks)) or not 0 <= self.hooks[0] \
                or self.hooks[-1] >= len(net.blocks):
            raise ValueError(f"hooks must be 4 increasing block indices below {len(net.blocks)}, got {hooks}")
        if net.num_prefix_tokens != 1 or getattr(net, "no_embed_class", False) or net.cls_token is None:
            raise ValueError(f"{name}: DPT needs one class token with a position embedding")
        self.name, self.embed_dim = name, int(net.embed_dim)
        self.out_features = 2 * len(self.hooks) * self.embed_dim
        proj: nn.Conv2d = net.patch_embed.proj
        if tuple(proj.kernel_size) != (PATCH, PATCH) or tuple(proj.stride) != (PATCH, PATCH):
            raise ValueError(f"{name}: patch size {proj.kernel_size}, DPT's reassemble needs 16")
        spec = ConvSpec(in_channels, self.embed_dim, PATCH, PATCH, 0, index=0, role="stem", norm=False, bias=True)
        self.patch_embed = make_unit(spec).to(dtype=proj.weight.dtype)
        if not _take_conv(self.patch_embed, proj) and pretrained is not None:
            raise ValueError(f"conv unit {type(self.patch_embed).__name__} does not hold exactly one "
                             f"Conv2d(3, {self.embed_dim}, 16, bias): cannot take the pretrained patch embedding")
        gh, gw = net.patch_embed.grid_size
        self.grid = (int(gh), int(gw))
        self.cls_token, self.pos_embed = net.cls_token, net.pos_embed
        self.pos_drop, self.norm_pre = net.pos_drop, net.norm_pre
        self.blocks = nn.ModuleList(list(net.blocks)[: self.hooks[-1] + 1])

    def forward_tokens(self, x: Tensor) -> list[Tensor]:
        """The hooked blocks' outputs ``(B, 1 + h w, C)`` (class token first)."""
        H, W = _ints(x)
        if H % PATCH or W % PATCH:
            raise ValueError(f"{self.name}: input sides must be multiples of {PATCH}, got {H}x{W}")
        p = self.patch_embed(x)
        h, w = _ints(p)
        t = torch.cat([self.cls_token.expand(p.shape[0], -1, -1), p.flatten(2).transpose(1, 2)], dim=1)
        t = self.norm_pre(self.pos_drop(t + resize_pos_embed(self.pos_embed, self.grid, (h, w))))
        outs = []
        with _explicit_attention(self.blocks) if torch.jit.is_tracing() else nullcontext():
            for k, blk in enumerate(self.blocks):
                t = blk(t)
                if k in self.hooks:
                    outs.append(t)
        return outs

    def forward(self, x: Tensor) -> Tensor:
        h, w = _ints(x)
        h, w = h // PATCH, w // PATCH
        maps = []
        for t in self.forward_tokens(x):
            patches = t[:, 1:].transpose(1, 2).reshape(t.shape[0], self.embed_dim, h, w)
            maps += [patches, t[:, 0, :, None, None].expand(-1, -1, h, w)]
        return torch.cat(maps, dim=1)

    def units(self) -> list[nn.Module]:
        return [self.patch_embed]

    def last_shared_layer(self) -> nn.Module:
        """The last hooked block's last linear layer (``mlp.fc2``)."""
        return self.blocks[-1].mlp.fc2


def _build(name: str, make_unit, kwargs: dict) -> Backbone:
    pretrained = kwargs.pop("pretrained", None)
    features = int(kwargs.pop("features", 64))
    tags = PRETRAINED_TAGS[name]
    if pretrained is not None and pretrained not in tags:
        raise ValueError(f"{name} has no pretrained weights {pretrained!r}; it has {', '.join(tags)}")
    enc = ViTEncoder(make_unit, name, pretrained=tags.get(pretrained), **kwargs)
    return Backbone(encoder=enc, feature_dim=enc.out_features,
                    make_head=HeadFactory("dpt", enc.out_features, features=features))


@BACKBONES.register("dpt_vitb")
def build_dpt_vitb(make_unit, **kwargs) -> Backbone:
    """timm's ViT-B/16 (384) encoder and its default ``dpt`` head factory (features 64)."""
    return _build("vit_base_patch16_384", make_unit, kwargs)


@BACKBONES.register("dpt_vits")
def build_dpt_vits(make_unit, **kwargs) -> Backbone:
    """timm's ViT-S/16 (384) encoder and its default ``dpt`` head factory (features 64)."""
    return _build("vit_small_patch16_384", make_unit, kwargs)


build_dpt_vitb.pretrained_weights = tuple(PRETRAINED_TAGS["vit_base_patch16_384"])
build_dpt_vits.pretrained_weights = tuple(PRETRAINED_TAGS["vit_small_patch16_384"])
