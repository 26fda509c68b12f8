"""GatedMTL's conv unit: ``T + 1`` branches of one convolution (shared + one per task) behind a gate.

A backbone written once with ``make_unit(spec)`` (:mod:`mtlrepro.models.units`) becomes a GatedMTL
encoder when every unit is a :class:`GatedUnit`: the activations flowing between units are the
``T + 1`` streams stacked along the batch, ``((T + 1) B, C, H, W)`` stream-major (stream 0 the
shared branch ``psi``, stream ``1 + t`` task ``t``'s ``phi_t``), so the backbone's own ReLUs,
residual additions, pools and up-samplings act on every stream separately and unchanged. A unit

    (psi', phi'_1..T) = GateMix(psi, phi_1..T)           (Eq. 2-3, :mod:`.gates`)
    psi^{l+1} = F(psi'; Psi^l),  phi_t^{l+1} = F(phi'_t; Phi_t^l)

with ``F`` conv -> BN (:class:`~mtlrepro.models.units.ConvBN`), run as one grouped convolution on
accelerators (:func:`~mtlrepro.models.batched.per_task_conv_bn`). The unit whose input is the image
(``spec.index == 0``) has no gate: all streams are the image there (Algorithm 1: psi^0 = phi_t^0 = x).
So every non-first conv of the backbone is a gated layer (GatedMTL Sec. 3.1: "the original encoder
layers are substituted with gated MTL layers"), the 1x1 projection shortcuts included.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..batched import per_task_conv_bn
from ..interface import PerTask
from ..units import ConvBN, ConvSpec
from .gates import GateMix

__all__ = ["GatedUnit", "stream_view"]


def stream_view(x: Tensor, n_streams: int) -> Tensor:
    """``((S B), ...)`` -> ``(S, B, ...)``."""
    if x.shape[0] % n_streams:
        raise ValueError(f"a gated unit got a batch of {x.shape[0]}, not a multiple of its {n_streams} streams")
    return x.view(n_streams, x.shape[0] // n_streams, *x.shape[1:])


class GatedUnit(nn.Module):
    """Shared and task-specific conv -> BN branches of one layer, and the gate in front of them."""

    def __init__(self, spec: ConvSpec, n_tasks: int, alpha_init: float = 1.0, mix_input: str = "gated"):
        super().__init__()
        self.spec, self.n_tasks = spec, int(n_tasks)
        self.mix = GateMix(n_tasks, spec.in_ch, alpha_init, mix_input) if spec.index != 0 else None
        self.shared = ConvBN(spec)
        self.tasks = PerTask([ConvBN(spec) for _ in range(n_tasks)])

    def branches(self) -> list[ConvBN]:
        """``[shared, task 0, ..., task T-1]``: the stream order."""
        return [self.shared, *self.tasks]

    def forward(self, x: Tensor) -> Tensor:
        n = self.n_tasks + 1
        if self.mix is not None:
            x = self.mix(stream_view(x, n)).flatten(0, 1)
        return per_task_conv_bn(self.branches(), x)
