"""Shape helpers shared by the dense-map metrics."""
from __future__ import annotations

import torch

__all__ = ["flatten_single_channel"]


def flatten_single_channel(x: torch.Tensor, name: str) -> torch.Tensor:
    """A one-channel map batch, ``(B, 1, H, W)`` or ``(B, H, W)``, as ``(B, H*W)``; else ValueError naming ``name``."""
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"{name} must be (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"{name} must be (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)
