"""GatedMTL's inference network: the gated model with every unselected channel removed (Sec. 3.1).

Since the gates do not depend on the input, a trained model is a static network: a task channel
whose gate is 0 is never read (Eq. 2 takes the shared one), a shared channel no task selects is
never read, and a channel nothing reads need not be computed. Which channels are read is found
structurally, for any backbone: on a float64 copy whose convolution / BN / head tensors are redrawn
at random (the gates kept), with every ReLU made the identity, the gradient of a random projection
of all task outputs with respect to each unit's output is non-zero exactly on the channels that
reach an output (a product with a gate of 0 is an exact zero; nothing else in these networks zeroes
a gradient for every input). Residual paths are followed by the same gradient, so a channel an
identity shortcut carries to a later selected layer stays.

:func:`prune` replaces every :class:`~.unit.GatedUnit` by a :class:`PrunedUnit`: per stream a
convolution and BN holding only the live output channels (real, smaller parameters, so fvcore
counts the pruned graph's parameters and FLOPs: :func:`mtlrepro.complexity.count_pruned`), written into a zero tensor of the full width for
the next gate. Its outputs equal the gated model's in eval mode (tested in float64 to 1e-10).
Input channels are not pruned: a selected input ``G phi_t + (1 - G) psi`` has no dead channel.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from .unit import GatedUnit, stream_view

__all__ = ["live_channels", "prune", "PrunedUnit", "PROBE_SIDE"]

#: the liveness probe's largest side (every backbone here takes 64: multiples of 32 and 16)
PROBE_SIDE = 64


@contextmanager
def _identity_relus() -> Iterator[None]:
    forward = nn.ReLU.forward
    nn.ReLU.forward = lambda self, x: x  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.ReLU.forward = forward  # type: ignore[method-assign]


def _redraw(model: nn.Module, gen: torch.Generator) -> None:
    """Random non-zero weights everywhere but the gates; BN statistics 0 / 1."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                for p in m.parameters(recurse=False):
                    p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) + 0.5)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.zero_()
                m.running_var.fill_(1.0)


def live_channels(model, input_shape: tuple[int, ...], seed: int = 0) -> list[Tensor]:
    """Per gated unit (forward order), a ``(T + 1, C_out)`` bool: stream ``k``'s output channel ``c``
    reaches a task output."""
    probe = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    gen = torch.Generator().manual_seed(seed)
    _redraw(probe, gen)
    units = [u for u in probe.gated_units() if isinstance(u, GatedUnit)]
    outs: dict[int, Tensor] = {}

    def keep(i):
        def hook(_m, _inp, out):
            out.retain_grad()
            outs[i] = out
        return hook

    handles = [u.register_forward_hook(keep(i)) for i, u in enumerate(units)]
    try:
        with _identity_relus():
            c, *hw = input_shape   # which channels are read does not depend on the size: probe small
            x = torch.rand((1, c, *[min(int(n), PROBE_SIDE) for n in hw]), generator=gen, dtype=torch.float64)
            ys = probe(x)
            total = sum((torch.rand(y.shape, generator=gen, dtype=y.dtype) * y).sum() for y in ys)
            total.backward()
    finally:
        for h in handles:
            h.remove()
    live = []
    for i, u in enumerate(units):
        g = outs[i].grad
        s = u.n_tasks + 1
        if g is None:
            live.append(torch.zeros(s, u.spec.out_ch, dtype=torch.bool))
            continue
        g = stream_view(g, s)
        live.append(g.abs().flatten(3).sum(dim=(1, 3)) > 0)
    return live


def _slice_conv_bn(branch: nn.Module, idx: Tensor) -> nn.Module:
    conv: nn.Conv2d = branch[0]
    c = nn.Conv2d(conv.in_channels, len(idx), conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, bias=conv.bias is not None).to(conv.weight)
    with torch.no_grad():
        c.weight.copy_(conv.weight[idx])
        if conv.bias is not None:
            c.bias.copy_(conv.bias[idx])
    layers: list[nn.Module] = [c]
    if len(branch) > 1:
        bn: nn.BatchNorm2d = branch[1]
        n = nn.BatchNorm2d(len(idx), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                           track_running_stats=bn.track_running_stats).to(conv.weight)
        with torch.no_grad():
            if bn.affine:
                n.weight.copy_(bn.weight[idx])
                n.bias.copy_(bn.bias[idx])
            if bn.track_running_stats:
                n.running_mean.copy_(bn.running_mean[idx])
                n.running_var.copy_(bn.running_var[idx])
                n.num_batches_tracked.copy_(bn.num_batches_tracked)
        layers.append(n)
    return nn.Sequential(*layers)


class PrunedUnit(nn.Module):
    """A gated unit at inference: fixed binary gates and mix weights (buffers), per stream only the
    live output channels computed."""

    def __init__(self, unit: GatedUnit, live: Tensor):
        super().__init__()
        self.spec, self.n_streams = unit.spec, unit.n_tasks + 1
        self.mix_input = unit.mix.mix_input if unit.mix is not None else "gated"
        with torch.no_grad():
            if unit.mix is not None:
                self.register_buffer("gates", unit.mix.gates().detach().clone())
                self.register_buffer("mix_weights", unit.mix.mix_weights().detach().clone())
            else:
                self.gates = self.mix_weights = None
        self.branches = nn.ModuleList()
        self.kept: list[int] = []
        for k, b in enumerate(unit.branches()):
            idx = live[k].nonzero().flatten()
            if len(idx):
                self.register_buffer(f"idx{k}", idx)
                self.branches.append(_slice_conv_bn(b, idx))
                self.kept.append(k)
        self.live_out = [int(live[k].sum()) for k in range(self.n_streams)]

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        s = self.spec
        f = lambda n: (n + 2 * s.padding - s.dilation * (s.kernel_size - 1) - 1) // s.stride + 1  # noqa: E731
        return f(h), f(w)

    def forward(self, x: Tensor) -> Tensor:
        xs = stream_view(x, self.n_streams)
        if self.gates is not None:
            view = (self.n_streams - 1, 1, -1) + (1,) * (xs.dim() - 3)
            g, w = self.gates.to(xs.dtype).view(view), self.mix_weights.to(xs.dtype).view(view)
            sel = g * xs[1:] + (1 - g) * xs[:1]
            mixed = (w * (sel if self.mix_input == "gated" else xs[1:])).sum(0, keepdim=True)
            xs = torch.cat([mixed, sel])
        h, w_ = self._out_hw(xs.shape[-2], xs.shape[-1])
        out = xs.new_zeros(self.n_streams, xs.shape[1], self.spec.out_ch, h, w_)
        for k, branch in zip(self.kept, self.branches):
            out[k, :, getattr(self, f"idx{k}")] = branch(xs[k])
        return out.flatten(0, 1)


def _replace_all(root: nn.Module, new: dict[int, nn.Module]) -> None:
    """Put ``new[id(m)]`` in place of every module ``m`` it names, in one walk of ``root`` (children
    of every module, and the forward-order unit lists backbones keep for ``units()``)."""
    for parent in list(root.modules()):
        for attr, child in list(parent.named_children()):
            if id(child) in new:
                setattr(parent, attr, new[id(child)])
    for lst in (v for v in vars(root.encoder).values() if isinstance(v, list)):
        for i, m in enumerate(lst):
            if id(m) in new:
                lst[i] = new[id(m)]


def prune(model, input_shape: tuple[int, ...]) -> nn.Module:
    """The static inference network of a gated model (a copy; ``model`` is unchanged)."""
    from .vit import PrunedOutputGated

    static = copy.deepcopy(model)
    layers = static.gated_units()
    units = [u for u in layers if isinstance(u, GatedUnit)]
    live = live_channels(model, input_shape) if units else []
    replace = {id(u): PrunedUnit(u, lv) for u, lv in zip(units, live)}
    replace.update({id(u): PrunedOutputGated(u) for u in layers   # a ViT's output-gated layers: read off the gates
                    if not isinstance(u, GatedUnit)})
    _replace_all(static, replace)
    return static.eval()
