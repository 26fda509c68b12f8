"""Hard parameter sharing: one shared encoder, one head per task (the de-facto MTL baseline).

``HardSharing(backbone="resnet18", out_dims, **backbone_kwargs)``; not task-conditional:
``model(x)`` returns the list of all ``T`` head outputs, ``decode(encode(x), t)`` one of them.
With ResNet18 and ``sum(out_dims) == 40`` it has exactly 11,197,032 parameters (torchvision's
11,176,512 encoder + ``Linear(512, 40)`` worth of heads), the published 11.2M.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..interface import UnitMTLModel
from ..registries import SHARING
from ..units import ConvBN, ConvSpec

__all__ = ["HardSharing"]


@SHARING.register("hard_sharing")
class HardSharing(UnitMTLModel):
    """Plain backbone + per-task heads. No scheme kwargs; ``backbone_kwargs`` go to the backbone
    (``width_mult``, ``track_running_stats``, ``downsample_norm`` for ResNet18)."""

    task_conditional = False

    def __init__(self, backbone: str = "resnet18", out_dims: list[int] | None = None, **backbone_kwargs):
        super().__init__(backbone, out_dims or [], **backbone_kwargs)

    def make_unit(self, spec: ConvSpec) -> nn.Module:
        return ConvBN(spec)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor, task: int) -> Tensor:
        return self.heads[task](z)
