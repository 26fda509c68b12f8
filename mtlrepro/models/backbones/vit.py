"""DPT's encoder (Ranftl et al., "Vision Transformers for Dense Prediction", ICCV 2021) on timm's ViTs.

``dpt_vitb`` / ``dpt_vits``: timm's ``vit_base_patch16_384`` / ``vit_small_patch16_384`` (GatedMTL
Tables 3 and 4; Appendix A.3: ImageNet-21k pretrained, fine-tuned on ImageNet-1k at 384 - timm's
``augreg_in21k_ft_in1k`` weights) followed by DPT's **reassemble** blocks, i.e. everything DPT
calls ``pretrained`` (``dpt/vit.py``, ``_make_vit_b16_backbone``); the per-task DPT decoder (DPT's
``scratch``) is the head :mod:`mtlrepro.models.heads.dpt`. With hard sharing the ViT and the
reassemble blocks are shared and each task has its decoder; DPT trains ``pretrained`` at 1e-5 and
``scratch`` at 1e-4, which is the recipe's ``encoder_lr`` / ``lr`` split.

* tokens: the outputs of blocks 3, 6, 9, 12 (DPT's ``hooks=[2, 5, 8, 11]`` for ViT-B/16), before
  the final LayerNorm (dropped, unused); the class token is merged by DPT's default ``readout=
  "project"``: ``GELU(Linear(2D, D)([t_i, t_cls]))`` per hook;
* reassemble (tokens as an ``H/16 x W/16`` map): 1x1 conv to ``widths`` channels, then a 4x4/4
  transposed conv (stride 4), a 2x2/2 transposed conv (stride 8), nothing (stride 16), a 3x3/2
  conv (stride 32). ``widths``: DPT's ``[96, 192, 384, 768]`` for ViT-B (D = 768); DPT has no
  ViT-S, so ViT-S (D = 384) takes the same fractions of D, ``[48, 96, 192, 384]`` (a choice);
* any input whose sides are multiples of 32 (NYUD's 480x640: 30x40 tokens; the position
  embeddings are interpolated by timm's ``dynamic_img_size``, as DPT's ``forward_flex`` does).

The patch embedding (a 16x16/16 conv with bias) is built by ``make_unit`` (``ConvSpec(norm=False,
bias=True)``), timm's weights copied into it; ``units()`` is that unit. The encoder returns the
four reassembled maps (a list); methods that need one representation tensor (MGDA-UB, GradNorm's
shared layer is ``last_shared_layer()``, the last reassemble conv) are not used with DPT here.

Parameters of the encoder (no heads): ViT-B/16 97,522,368 (the ViT without its final norm 86,088,960),
ViT-S/16 24,670,560 (21,810,816); hand-counted in ``tests/models/test_dpt.py``.
``pretrained``: ``"in21k_ft_in1k"`` (timm's ``augreg_in21k_ft_in1k``), offline through
:mod:`mtlrepro.models.pretrained_timm`; missing weights stop with a message naming them.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..heads import HeadFactory
from ..registries import BACKBONES
from ..units import ConvSpec
from .protocol import Backbone

__all__ = ["DPTViTEncoder", "build_dpt_vitb", "build_dpt_vits", "HOOKS"]

HOOKS = (2, 5, 8, 11)
_TIMM = {"dpt_vitb": "vit_base_patch16_384", "dpt_vits": "vit_small_patch16_384"}
_TAGS = {"in21k_ft_in1k": "augreg_in21k_ft_in1k"}


class ProjectReadout(nn.Module):
    """DPT's ``ProjectReadout``: every patch token concatenated with the class token, Linear + GELU."""

    def __init__(self, dim: int, start_index: int = 1):
        super().__init__()
        self.start = start_index
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, x: Tensor) -> Tensor:
        readout = x[:, :1].expand(-1, x.shape[1] - self.start, -1)
        return self.project(torch.cat([x[:, self.start:], readout], dim=-1))


class DPTViTEncoder(nn.Module):
    """A timm ViT + DPT's readout and reassemble blocks; ``forward`` returns four maps at strides 4-32."""

    strides = (4, 8, 16, 32)

    def __init__(self, make_unit, vit: nn.Module, widths: tuple[int, int, int, int], hooks=HOOKS):
        super().__init__()
        self.vit, self.hooks = vit, tuple(hooks)
        vit.norm = nn.Identity()          # DPT reads the blocks' outputs: the final norm is unused
        dim, proj = vit.embed_dim, vit.patch_embed.proj
        unit = make_unit(ConvSpec(proj.in_channels, proj.out_channels, proj.kernel_size[0], proj.stride[0],
                                  0, index=0, role="stem", norm=False, bias=True))
        convs = [m for m in unit.modules() if isinstance(m, nn.Conv2d)]
        if len(convs) == 1:
            with torch.no_grad():
                convs[0].weight.copy_(proj.weight)
                convs[0].bias.copy_(proj.bias)
        vit.patch_embed.proj = unit
        self._units = [unit]
        self.readouts = nn.ModuleList(ProjectReadout(dim, vit.num_prefix_tokens) for _ in hooks)
        w = widths
        self.post = nn.ModuleList([
            nn.Sequential(nn.Conv2d(dim, w[0], 1), nn.ConvTranspose2d(w[0], w[0], 4, stride=4)),
            nn.Sequential(nn.Conv2d(dim, w[1], 1), nn.ConvTranspose2d(w[1], w[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(dim, w[2], 1)),
            nn.Sequential(nn.Conv2d(dim, w[3], 1), nn.Conv2d(w[3], w[3], 3, stride=2, padding=1)),
        ])
        self.widths, self.out_features = tuple(w), tuple(w)

    def forward(self, x: Tensor) -> list[Tensor]:
        h_tok, w_tok = x.shape[-2] // 16, x.shape[-1] // 16
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"DPT needs input sides that are multiples of 32, got {tuple(x.shape[-2:])}")
        v = self.vit
        t = v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x))))
        taps = []
        for i, blk in enumerate(v.blocks):
            t = blk(t)
            if i in self.hooks:
                taps.append(t)
            if i >= self.hooks[-1]:
                break
        out = []
        for tok, readout, post in zip(taps, self.readouts, self.post):
            m = readout(tok).transpose(1, 2).reshape(tok.shape[0], -1, h_tok, w_tok)
            out.append(post(m))
        return out

    def units(self) -> list[nn.Module]:
        return list(self._units)

    def last_shared_layer(self) -> nn.Module:
        return self.post[-1][-1]


def _build(name: str, make_unit, kwargs: dict) -> Backbone:
    from ..pretrained_timm import create_timm
    pretrained = kwargs.pop("pretrained", None)
    if pretrained is not None and pretrained not in _TAGS:
        raise ValueError(f"{name}: pretrained {pretrained!r}; known: {', '.join(_TAGS)}")
    vit_kwargs = dict(kwargs.pop("vit_kwargs", {}) or {})      # tests: a smaller ViT of the same design
    if kwargs:
        raise TypeError(f"{name}: unexpected keyword argument(s) {sorted(kwargs)}")
    vit = create_timm(_TIMM[name], _TAGS.get(pretrained) if pretrained else None, dynamic_img_size=True,
                      num_classes=0, **vit_kwargs)
    dim = vit.embed_dim
    widths = (dim // 8, dim // 4, dim // 2, dim)               # ViT-B: DPT's (96, 192, 384, 768)
    enc = DPTViTEncoder(make_unit, vit, widths)
    return Backbone(encoder=enc, feature_dim=widths[-1], make_head=HeadFactory("dpt", widths[-1], widths=widths))


@BACKBONES.register("dpt_vitb")
def build_dpt_vitb(make_unit, **kwargs) -> Backbone:
    """timm's ViT-B/16 (384) + DPT's reassemble; default head ``dpt`` (features 64)."""
    return _build("dpt_vitb", make_unit, kwargs)


@BACKBONES.register("dpt_vits")
def build_dpt_vits(make_unit, **kwargs) -> Backbone:
    """timm's ViT-S/16 (384) + DPT's reassemble; default head ``dpt`` (features 64)."""
    return _build("dpt_vits", make_unit, kwargs)


build_dpt_vitb.pretrained_weights = build_dpt_vits.pretrained_weights = tuple(_TAGS)
