"""DPT's decoder (Ranftl et al., "Vision Transformers for Dense Prediction", ICCV 2021) as a task
head: the per-task decoder of GatedMTL's NYUD ViT tables (3 / 4), after ``dpt/vit.py``,
``dpt/blocks.py`` and ``dpt/models.py`` of ``isl-org/DPT``.

Input: the ViT encoder's map ``(B, 8C, h, w)`` (:mod:`mtlrepro.models.backbones.vit`: per hooked
block ``l`` its patch tokens and its class token broadcast, ``2C`` channels), ``h, w = H/16, W/16``.

1. **Reassemble** (DPT's ``act_postprocess1..4``), per hook ``l``: the readout - ``project``
   (DPT's default, ``ProjectReadout``: ``GELU(Linear(2C, C)([patch; cls]))``, here a 1x1 conv on
   the map), ``add`` (patch + cls) or ``ignore`` (patch) -; a 1x1 conv (bias) ``C -> c_l``; the
   resize to stride ``4 / 8 / 16 / 32``: ``ConvTranspose2d(k=s=4)``, ``ConvTranspose2d(k=s=2)``,
   identity, ``Conv2d(3x3, stride 2, pad 1)`` (all with bias). ``c = (96, 192, 384, 768)`` for
   ViT-B (``_make_encoder("vitb16_384")``); by default ``c = (C/8, C/4, C/2, C)``, which is that for
   C = 768 and ``(48, 96, 192, 384)`` for ViT-S (DPT has no ViT-S; the convention of
   Depth-Anything's ``vits`` config, ``DepthAnything/Depth-Anything-V2``, ``out_channels``).
2. ``layer{l}_rn``: ``Conv2d(c_l, f, 3x3, pad 1, no bias)`` (``_make_scratch``), ``f = features``.
3. Four ``FeatureFusionBlock_custom`` (``bn=False``, ``ReLU``, ``expand=False``,
   ``align_corners=True``), deepest first: ``out = [x +] RCU_1(skip)``, ``out = RCU_2(out)``,
   bilinear x2 upsampling (``align_corners=True``), ``Conv1x1(f, f, bias)``; a residual conv unit
   is ``x + conv(relu(conv(relu(x))))`` (3x3, bias). The x2 is done as a resize to the next skip's
   size (the same values when the sides are multiples of 32; also right for multiples of 16).
   ``refinenet4`` has no skip input; DPT still builds its unused ``RCU_1`` (``2 (9 f^2 + f)``
   parameters, 73,856 at f = 64): it is not built here.
4. **Head** (``DPTDepthModel``'s): ``Conv3x3(f, f/2)``, bilinear x2 (``align_corners=True``),
   ``Conv3x3(f/2, 32)``, ReLU, ``Conv1x1(32, out_dim)`` -> ``(B, out_dim, 16h, 16w) = (B, out_dim, H, W)``.
   One head design for every task (a choice): DPT's depth head without its final non-negativity
   ReLU (normals and logits are signed). DPT's segmentation model differs (BN in the fusion blocks,
   ``Conv3x3 -> BN -> ReLU -> Dropout(0.1) -> Conv1x1`` then x2, an auxiliary head); not used.

Parameters (:func:`dpt_head_params`, readout ``project``): ``4 (2C^2 + C)`` readouts,
``sum_l (C c_l + c_l)`` 1x1 convs, ``16 c_1^2 + 4 c_2^2 + 9 c_4^2 + c_1 + c_2 + c_4`` resizes,
``9 f sum_l c_l`` rn convs, ``130 f^2 + 18 f`` fusion blocks, ``9 f^2/2 + f/2 + 9 f/2 32 + 32 + 33 out_dim``
head. f = 64: ViT-B 12,824,192 + 33 out_dim, ViT-S 3,835,808 + 33 out_dim (f = 256: ViT-B
23,607,392 + 33 out_dim). Initialisation: PyTorch's defaults, as DPT's ``scratch`` / ``act_postprocess``.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..registries import HEADS

__all__ = ["DPTHead", "FusionBlock", "ResidualConvUnit", "dpt_head", "dpt_head_params", "default_channels",
           "READOUTS", "N_HOOKS"]

N_HOOKS = 4
READOUTS = ("project", "add", "ignore")
RESIZE_STRIDES = (4, 8, 16, 32)


def default_channels(vit_dim: int) -> tuple[int, ...]:
    """The reassemble widths ``(C/8, C/4, C/2, C)`` (DPT's ViT-B: 96, 192, 384, 768)."""
    return (vit_dim // 8, vit_dim // 4, vit_dim // 2, vit_dim)


def dpt_head_params(out_dim: int, vit_dim: int = 768, channels: Sequence[int] | None = None,
                    features: int = 64, readout: str = "project") -> int:
    """Learnable parameters of one :class:`DPTHead` (hand count, see the module docstring)."""
    C, f = vit_dim, features
    c1, c2, c3, c4 = channels or default_channels(vit_dim)
    n = 4 * (2 * C * C + C) if readout == "project" else 0
    n += sum(C * c + c for c in (c1, c2, c3, c4))
    n += 16 * c1 * c1 + c1 + 4 * c2 * c2 + c2 + 9 * c4 * c4 + c4
    n += 9 * f * (c1 + c2 + c3 + c4)
    n += 130 * f * f + 18 * f
    return n + 9 * f * (f // 2) + f // 2 + 9 * (f // 2) * 32 + 32 + 32 * out_dim + out_dim


def _size(t: Tensor) -> tuple[int, int]:
    return int(t.shape[-2]), int(t.shape[-1])


class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))``, 3x3 convs with bias (``ResidualConvUnit_custom``, no BN)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """``FeatureFusionBlock_custom``: ``[x + RCU_1(skip)] -> RCU_2 -> bilinear resize -> Conv1x1``."""

    def __init__(self, features: int, with_skip: bool = True):
        super().__init__()
        self.res_conf_unit1 = ResidualConvUnit(features) if with_skip else None
        self.res_conf_unit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: Tensor, skip: Tensor | None = None, size: tuple[int, int] | None = None) -> Tensor:
        if skip is not None:
            if self.res_conf_unit1 is None:
                raise ValueError("this fusion block (the deepest) takes no skip input")
            x = x + self.res_conf_unit1(skip)
        x = self.res_conf_unit2(x)
        if size is None:
            h, w = _size(x)
            size = (2 * h, 2 * w)
        return self.out_conv(F.interpolate(x, size=size, mode="bilinear", align_corners=True))


class _Readout(nn.Module):
    """The readout of one hook on its ``(B, 2C, h, w)`` slice -> ``(B, C, h, w)``."""

    def __init__(self, vit_dim: int, mode: str):
        super().__init__()
        if mode not in READOUTS:
            raise ValueError(f"readout {mode!r}: one of {', '.join(READOUTS)}")
        self.mode, self.vit_dim = mode, vit_dim
        self.project = nn.Sequential(nn.Conv2d(2 * vit_dim, vit_dim, 1), nn.GELU()) if mode == "project" else None

    def forward(self, z: Tensor) -> Tensor:
        if self.project is not None:
            return self.project(z)
        patches = z[:, : self.vit_dim]
        return patches if self.mode == "ignore" else patches + z[:, self.vit_dim:]


def _resize(c: int, stride: int) -> nn.Module:
    if stride == 4:
        return nn.ConvTranspose2d(c, c, 4, stride=4)
    if stride == 8:
        return nn.ConvTranspose2d(c, c, 2, stride=2)
    if stride == 16:
        return nn.Identity()
    return nn.Conv2d(c, c, 3, stride=2, padding=1)


class DPTHead(nn.Module):
    """Reassemble -> ``layer_rn`` -> four fusion blocks -> DPT's depth head (see the module docstring)."""

    def __init__(self, in_features: int, out_dim: int, features: int = 256, channels: Sequence[int] | None = None,
                 readout: str = "project"):
        super().__init__()
        if in_features % (2 * N_HOOKS):
            raise ValueError(f"dpt head: in_features {in_features} is not 2 x {N_HOOKS} hooks x the ViT width")
        C = in_features // (2 * N_HOOKS)
        channels = tuple(int(c) for c in (channels or default_channels(C)))
        if len(channels) != N_HOOKS:
            raise ValueError(f"dpt head: channels needs {N_HOOKS} widths, got {channels}")
        f = int(features)
        self.vit_dim, self.channels, self.features = C, channels, f
        self.readouts = nn.ModuleList(_Readout(C, readout) for _ in range(N_HOOKS))
        self.postprocess = nn.ModuleList(nn.Sequential(nn.Conv2d(C, c, 1), _resize(c, s))
                                         for c, s in zip(channels, RESIZE_STRIDES))
        self.layer_rn = nn.ModuleList(nn.Conv2d(c, f, 3, padding=1, bias=False) for c in channels)
        # refinenets[l] fuses level l (DPT's refinenet{l+1}); the deepest has no skip input
        self.refinenets = nn.ModuleList(FusionBlock(f, with_skip=l < N_HOOKS - 1) for l in range(N_HOOKS))
        self.output_conv = nn.Sequential(
            nn.Conv2d(f, f // 2, 3, padding=1), _Up2(), nn.Conv2d(f // 2, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, out_dim, 1))

    def reassemble(self, z: Tensor) -> list[Tensor]:
        """The four reassembled maps ``(B, c_l, H/s_l, W/s_l)``, strides 4 / 8 / 16 / 32."""
        w = 2 * self.vit_dim
        return [post(read(z[:, l * w:(l + 1) * w]))
                for l, (read, post) in enumerate(zip(self.readouts, self.postprocess))]

    def forward(self, z: Tensor) -> Tensor:
        rn = [conv(m) for conv, m in zip(self.layer_rn, self.reassemble(z))]
        path = None
        for l in reversed(range(N_HOOKS)):
            size = _size(rn[l - 1]) if l > 0 else None
            path = self.refinenets[l](rn[l], size=size) if path is None else \
                self.refinenets[l](path, rn[l], size=size)
        return self.output_conv(path)


class _Up2(nn.Module):
    """Bilinear x2 upsampling, ``align_corners=True`` (DPT's ``Interpolate``)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


@HEADS.register("dpt")
def dpt_head(in_features: int, out_dim: int, **kwargs) -> DPTHead:
    """DPT's decoder on the ViT encoder's ``(B, 8C, h, w)`` map (``features`` (DPT: 256; the ViT
    backbones' default head: 64), ``channels``, ``readout`` as :class:`DPTHead`)."""
    return DPTHead(in_features, out_dim, **kwargs)
