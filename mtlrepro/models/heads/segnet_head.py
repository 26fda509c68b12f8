"""SegNet's per-task dense head: MTAN's prediction layer (``conv_layer(pred=True)``).

``Conv3x3(F, F) -> Conv1x1(F, out_dim)``, both with bias, no BN and no activation between them
(``lorenmt/mtan`` ``im2im_pred/model_segnet_*.py``); it returns raw ``(B, out_dim, H, W)``
scores (the problems apply log-softmax / normalisation in their losses and metrics). Parameters:
``9 F^2 + F + F out_dim + out_dim`` (:func:`segnet_head_params`; F = 64: 37,504 + 65 out_dim).
Xavier-normal weights, zero biases, as MTAN.
"""
from __future__ import annotations

from torch import nn

from ..registries import HEADS
from ..weight_init import init_xavier

__all__ = ["segnet_head", "segnet_head_params"]


def segnet_head_params(out_dim: int, feat: int = 64) -> int:
    """Parameters of one head: Conv3x3(feat, feat) + Conv1x1(feat, out_dim), both with bias."""
    return 9 * feat * feat + feat + feat * out_dim + out_dim


@HEADS.register("segnet")
def segnet_head(in_ch: int, out_dim: int) -> nn.Sequential:
    """MTAN's prediction layer: Conv3x3(in, in) -> Conv1x1(in, out_dim), Xavier-normal init."""
    head = nn.Sequential(nn.Conv2d(in_ch, in_ch, 3, padding=1), nn.Conv2d(in_ch, out_dim, 1))
    init_xavier(head)
    return head
