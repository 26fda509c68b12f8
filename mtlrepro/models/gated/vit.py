"""GatedMTL on a ViT (Appendix E): output-gated linear layers and per-task LayerNorms on task streams.

For the q / k / v projections (Eq. 7-9), the attention output projection and the two FFN linears,
each task ``t`` chooses per output feature between its own projection of its own features and the
shared projection of the beta-mixed task features:

    psi_in = sum_t softmax_t(beta)_t (.) phi_t                           (the shared embedding, Eq. 3)
    y_t    = G_t (.) f_t(phi_t) + (1 - G_t) (.) f(psi_in)                 (Eq. 7-9, G = 1[sigmoid(alpha) > 0.5])

so the shared branch has no state of its own between layers (its input is always the mix), and the
activations are the ``T`` task streams stacked along the batch, ``(T B, N, C)``; attention, GELU and
the residual additions run on every stream unchanged. The patch embedding (the ViT's one conv) is
gated the same way on its output (:class:`OutputGatedConv`, the image being every task's input).
LayerNorms become per-task (:class:`PerTaskLayerNorm`). The class token and position embeddings stay
shared (they are added, not projected).

Pruning is read off the gates (a gated output is consumed where it is produced): task ``t`` keeps the
rows of ``f_t`` whose gate is 1, the shared projection the rows some task's gate is 0
(:func:`prune_output_gated`). The attention products are not reduced ("does not support structured
pruning for attention matrix computations", Sec. 5).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..interface import PerTask
from ..units import ConvSpec
from .gates import GateMix

__all__ = ["load_vit_task", "OutputGate", "GatedLinear", "OutputGatedConv", "PerTaskLayerNorm", "gate_vit_blocks", "LinearSpec",
           "PrunedOutputGated"]


@dataclass(frozen=True)
class LinearSpec:
    """What the gating export needs of a gated layer: position, role and gate width (``in_ch``)."""

    index: int
    role: str
    in_ch: int


class OutputGate(GateMix):
    """``alpha`` ``(T, C_out)`` on the outputs and ``beta`` ``(C_in, T)`` on the inputs."""

    def __init__(self, n_tasks: int, c_in: int, c_out: int, alpha_init: float):
        super().__init__(n_tasks, c_out, alpha_init)
        self.beta = nn.Parameter(torch.zeros(c_in, n_tasks))
        self.in_channels = int(c_in)

    def forward(self, streams: Tensor) -> Tensor:  # pragma: no cover - the layers combine it themselves
        raise NotImplementedError

    def mix_inputs(self, xs: Tensor) -> Tensor:
        """``(T, B, ..., C_in)`` -> the shared embedding ``(B, ..., C_in)`` (channels last)."""
        w = self.mix_weights().to(xs.dtype)                       # (T, C_in)
        return (w.view(w.shape[0], *([1] * (xs.dim() - 2)), w.shape[1]) * xs).sum(0)

    def select(self, own: Tensor, shared: Tensor, channel_dim: int) -> Tensor:
        """``G (.) own + (1 - G) (.) shared``, ``own`` ``(T, B, ...)``, the gate along ``channel_dim``."""
        g = self.gates().to(own.dtype)
        shape = [g.shape[0]] + [1] * (own.dim() - 1)
        shape[channel_dim] = g.shape[1]
        g = g.view(shape)
        return g * own + (1 - g) * shared.unsqueeze(0)


class GatedLinear(nn.Module):
    """One linear layer of a ViT block as ``T`` task projections and a shared one behind a gate."""

    def __init__(self, linear: nn.Linear, n_tasks: int, spec: LinearSpec, alpha_init: float):
        super().__init__()
        self.spec, self.n_tasks = spec, int(n_tasks)
        self.shared = _copy_linear(linear)
        self.tasks = PerTask([_copy_linear(linear) for _ in range(n_tasks)])
        self.mix = OutputGate(n_tasks, linear.in_features, linear.out_features, alpha_init)

    def branches(self) -> list[nn.Linear]:
        return [self.shared, *self.tasks]

    def forward(self, x: Tensor) -> Tensor:
        xs = x.view(self.n_tasks, x.shape[0] // self.n_tasks, *x.shape[1:])
        w = torch.stack([t.weight for t in self.tasks])                      # (T, out, in)
        own = torch.einsum("tb...i,toi->tb...o", xs, w)
        if self.shared.bias is not None:
            b = torch.stack([t.bias for t in self.tasks])
            own = own + b.view(b.shape[0], *([1] * (own.dim() - 2)), b.shape[1])
        shared = self.shared(self.mix.mix_inputs(xs))
        return self.mix.select(own, shared, own.dim() - 1).flatten(0, 1)


class OutputGatedConv(nn.Module):
    """The patch embedding: ``T`` task convs and a shared one on the image, gated on their outputs."""

    def __init__(self, spec: ConvSpec, n_tasks: int, alpha_init: float):
        super().__init__()
        if spec.norm:
            raise ValueError("OutputGatedConv is the ViT's patch embedding: a conv without BN")
        self.spec, self.n_tasks = spec, int(n_tasks)
        make = lambda: nn.Conv2d(spec.in_ch, spec.out_ch, spec.kernel_size, spec.stride, spec.padding,  # noqa: E731
                                 dilation=spec.dilation, bias=spec.bias)
        self.shared = make()
        self.tasks = PerTask([make() for _ in range(n_tasks)])
        self.mix = OutputGate(n_tasks, spec.in_ch, spec.out_ch, alpha_init)

    def branches(self) -> list[nn.Conv2d]:
        return [self.shared, *self.tasks]

    def forward(self, x: Tensor) -> Tensor:
        xs = x.view(self.n_tasks, x.shape[0] // self.n_tasks, *x.shape[1:])
        own = torch.stack([c(xs[t]) for t, c in enumerate(self.tasks)])
        shared = self.shared(xs[0])          # every stream is the image
        return self.mix.select(own, shared, 2).flatten(0, 1)


class PerTaskLayerNorm(nn.Module):
    """Task ``t``'s own LayerNorm on its stream of ``(T B, N, C)``."""

    def __init__(self, ln: nn.LayerNorm, n_tasks: int):
        super().__init__()
        self.n_tasks, self.eps, self.shape = int(n_tasks), ln.eps, ln.normalized_shape
        self.weight = nn.Parameter(ln.weight.detach().clone().repeat(n_tasks, 1))
        self.bias = nn.Parameter(ln.bias.detach().clone().repeat(n_tasks, 1))

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x, self.shape, eps=self.eps).view(self.n_tasks, -1, *x.shape[1:])
        view = (self.n_tasks,) + (1,) * (y.dim() - 2) + (-1,)
        return (y * self.weight.view(view) + self.bias.view(view)).flatten(0, 1)


def _copy_linear(linear: nn.Linear) -> nn.Linear:
    out = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None).to(linear.weight)
    out.load_state_dict(linear.state_dict())
    return out


def gate_vit_blocks(blocks: nn.ModuleList, n_tasks: int, alpha_init: float, first_index: int = 1) -> list[GatedLinear]:
    """Replace, in place, the linears of every timm block by :class:`GatedLinear` and its LayerNorms by
    :class:`PerTaskLayerNorm`; returns the gated linears in forward order."""
    out, i = [], first_index
    for blk in blocks:
        blk.norm1, blk.norm2 = PerTaskLayerNorm(blk.norm1, n_tasks), PerTaskLayerNorm(blk.norm2, n_tasks)
        for owner, attr, role in ((blk.attn, "qkv", "qkv"), (blk.attn, "proj", "proj"),
                                  (blk.mlp, "fc1", "fc1"), (blk.mlp, "fc2", "fc2")):
            lin: nn.Linear = getattr(owner, attr)
            g = GatedLinear(lin, n_tasks, LinearSpec(i, role, lin.out_features), alpha_init)
            setattr(owner, attr, g)
            out.append(g)
            i += 1
    return out


class PrunedOutputGated(nn.Module):
    """A gated linear / patch conv at inference: task ``t`` computes only its selected outputs, the
    shared projection only those some task takes from it (fixed gates and mix weights as buffers)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.n_tasks, self.spec = layer.n_tasks, layer.spec
        self.conv = isinstance(layer, OutputGatedConv)
        with torch.no_grad():
            g = layer.mix.gates().detach().bool()                                  # (T, C_out)
            self.register_buffer("mix_weights", layer.mix.mix_weights().detach().clone())
        self.out_features = g.shape[1]
        self.parts = nn.ModuleList()
        self.rows: list[str] = []
        for k, (branch, keep) in enumerate(zip(layer.branches(), [~g.all(0), *g])):
            idx = keep.nonzero().flatten()
            name = f"rows{k}"
            self.register_buffer(name, idx)
            self.rows.append(name)
            self.parts.append(_slice_rows(branch, idx) if len(idx) else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        T = self.n_tasks
        xs = x.view(T, x.shape[0] // T, *x.shape[1:])
        if self.conv:
            src = [xs[0]] + [xs[t] for t in range(T)]
            dim = 1
        else:
            w = self.mix_weights.to(xs.dtype)
            shared_in = (w.view(T, *([1] * (xs.dim() - 2)), w.shape[1]) * xs).sum(0)
            src = [shared_in] + [xs[t] for t in range(T)]
            dim = xs.dim() - 2
        ys = [part(src[k]) if len(getattr(self, name)) else None
              for k, (part, name) in enumerate(zip(self.parts, self.rows))]
        ref = next(y for y in ys if y is not None)   # every channel is computed by some branch
        shape = list(ref.shape)
        shape[dim] = self.out_features
        shared_full = ref.new_zeros(shape)
        if ys[0] is not None:
            shared_full.index_copy_(dim, self.rows0, ys[0])
        outs = []
        for k in range(1, T + 1):
            full = shared_full.clone()
            if ys[k] is not None:
                full.index_copy_(dim, getattr(self, self.rows[k]), ys[k])
            outs.append(full)
        return torch.stack(outs).flatten(0, 1)


def _slice_rows(branch: nn.Module, idx: Tensor) -> nn.Module:
    if isinstance(branch, nn.Conv2d):
        c = nn.Conv2d(branch.in_channels, len(idx), branch.kernel_size, branch.stride, branch.padding,
                      branch.dilation, bias=branch.bias is not None).to(branch.weight)
    else:
        c = nn.Linear(branch.in_features, len(idx), bias=branch.bias is not None).to(branch.weight)
    with torch.no_grad():
        c.weight.copy_(branch.weight[idx])
        if branch.bias is not None:
            c.bias.copy_(branch.bias[idx])
    return c


def load_vit_task(gated_encoder: nn.Module, stl_encoder: nn.Module, t: int) -> None:
    """Task ``t``'s branches of a gated ViT encoder from a plain (single-task) one of the same shape."""
    gated_encoder.patch_embed.tasks[t].load_state_dict(stl_encoder.patch_embed[0].state_dict())
    if len(gated_encoder.blocks) != len(stl_encoder.blocks):
        raise ValueError(f"the STL ViT has {len(stl_encoder.blocks)} blocks, the gated one {len(gated_encoder.blocks)}")
    with torch.no_grad():
        for g, p in zip(gated_encoder.blocks, stl_encoder.blocks):
            for owner, attr in (("attn", "qkv"), ("attn", "proj"), ("mlp", "fc1"), ("mlp", "fc2")):
                getattr(getattr(g, owner), attr).tasks[t].load_state_dict(getattr(getattr(p, owner), attr).state_dict())
            for name in ("norm1", "norm2"):
                getattr(g, name).weight[t].copy_(getattr(p, name).weight)
                getattr(g, name).bias[t].copy_(getattr(p, name).bias)
