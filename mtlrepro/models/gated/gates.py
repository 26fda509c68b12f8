"""GatedMTL's gates: the hard channel gate with its straight-through gradient, the shared-branch
mix, and the sparsity losses (Bejnordi et al., GatedMTL, ICLR 2024 submission, Sec. 3.1).

Per gated layer ``l`` and task ``t`` the gate parameters ``alpha_t^l`` (one per channel) give

    G_t^l = 1[sigmoid(alpha_t^l) > 0.5]                      (forward: binary)
    dG/d sigmoid(alpha) := 1                                 (backward: straight-through, Bengio 2013)
    phi'_t = G_t (.) phi_t + (1 - G_t) (.) psi                (Eq. 2: 1 = task-specific, 0 = shared)
    psi'   = sum_t softmax_t(beta^l)_t (.) phi'_t             (Eq. 3 on the selected features)

``beta^l`` is ``(C, T)``: per channel a softmax over the tasks. Which task features Eq. 3 mixes
is a choice (``mix_input``, default ``"gated"``: the selected ``phi'_t``): Eq. 3's text mixes
``phi_t^l``, but Sec. 3.1 prunes every task channel whose gate is 0 and every shared channel no
task selects, which is only output-preserving when the mix reads the *selected* features; with
``"task"`` the raw ``phi_t`` are mixed (then unselected task channels still feed the shared
branch and are not pruned).

Sparsity (Eq. 4, 5): with ``m_t = 1/L sum_l mean_c sigmoid(alpha_t^l)`` (the share of active
task-specific gates of task ``t``, a soft count)

    hinge: L_s = 1/T sum_t max(0, m_t - tau_t)      (Eq. 4)
    l1:    L_s = 1/T sum_t m_t                      (Table 6's "standard L1 loss")
    none:  L_s = 0                                  (Table 6's first row, lambda_s = 0)

and the objective adds ``lambda_s L_s`` (Eq. 5). Eq. 4 compares a *share* with ``tau_t`` (Appendix C
draws ``tau`` from {0, 0.25, 0.75, 1}), so each ``sigma(alpha)`` enters with weight ``1 / (L C_l)``:
``reduce="mean"`` (the default, Eq. 4 as printed). ``reduce="sum"`` multiplies ``L_s`` by the mean
channel count ``1/L sum_l C_l`` - the same zero set, a gradient per gate of ``lambda_s / (T L)``
instead of ``lambda_s / (T L C_l)`` (the paper does not say how it normalised; a parameter).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["hard_gate", "GateMix", "sparsity_loss", "SPARSITY_FORMS", "active_share"]

SPARSITY_FORMS = ("hinge", "l1", "none")


class _HardThreshold(torch.autograd.Function):
    """``1[p > 0.5]`` forward (exactly 0 or 1), identity backward (STE)."""

    @staticmethod
    def forward(ctx, p: Tensor) -> Tensor:  # type: ignore[override]
        return (p > 0.5).to(p.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


def hard_gate(alpha: Tensor) -> Tensor:
    """``G = 1[sigmoid(alpha) > 0.5]`` with the straight-through gradient ``dG/dalpha = sigmoid'(alpha)``."""
    return _HardThreshold.apply(torch.sigmoid(alpha))


class GateMix(nn.Module):
    """Eq. 2-3 on task-stacked streams ``(T + 1, B, C, ...)`` (stream 0 shared, 1..T the tasks):
    returns the ``T + 1`` inputs of the layer's branches in the same layout.

    ``alpha`` ``(T, C)`` initialised to ``alpha_init`` (> 0: every gate task-specific, so a model
    whose task branches hold the STL weights starts as the STL networks and the sparsity loss moves
    channels to the shared branch); ``beta`` ``(C, T)`` initialised to 0 (a uniform mix).
    ``frozen`` (a buffer of binary gates, set by :meth:`freeze`) replaces ``alpha`` at inference
    after pruning; eval mode without freezing uses the same binary gates (no STE needed).
    """

    def __init__(self, n_tasks: int, channels: int, alpha_init: float = 1.0, mix_input: str = "gated"):
        super().__init__()
        if mix_input not in ("gated", "task"):
            raise ValueError(f"mix_input must be 'gated' or 'task', got {mix_input!r}")
        self.n_tasks, self.channels, self.mix_input = int(n_tasks), int(channels), mix_input
        self.alpha = nn.Parameter(torch.full((n_tasks, channels), float(alpha_init)))
        self.beta = nn.Parameter(torch.zeros(channels, n_tasks))

    def gates(self) -> Tensor:
        """``(T, C)``: binary in the forward pass; straight-through gradient when training."""
        if self.training and torch.is_grad_enabled():
            return hard_gate(self.alpha)
        return (torch.sigmoid(self.alpha) > 0.5).to(self.alpha.dtype)

    def mix_weights(self) -> Tensor:
        """``(T, C)``: ``softmax_t(beta)`` per channel."""
        return torch.softmax(self.beta, dim=1).t()

    def forward(self, streams: Tensor) -> Tensor:
        shared, tasks = streams[:1], streams[1:]
        view = (self.n_tasks, 1, self.channels) + (1,) * (streams.dim() - 3)
        g = self.gates().to(streams.dtype).view(view)
        selected = g * tasks + (1 - g) * shared
        w = self.mix_weights().to(streams.dtype).view(view)
        mixed = (w * (selected if self.mix_input == "gated" else tasks)).sum(0, keepdim=True)
        return torch.cat([mixed, selected], dim=0)


def active_share(mixes: Sequence[GateMix]) -> Tensor:
    """``m`` ``(T,)``: per task the mean over gated layers of the mean over channels of ``sigmoid(alpha)``."""
    return torch.stack([torch.sigmoid(m.alpha).mean(dim=1) for m in mixes]).mean(dim=0)


def sparsity_loss(mixes: Sequence[GateMix], form: str, tau: Sequence[float] | Tensor | None = None,
                  reduce: str = "mean") -> Tensor:
    """Eq. 4 (``hinge``, per-task targets ``tau``), the plain ``l1`` form, or 0 (``none``)."""
    if reduce not in ("mean", "sum"):
        raise ValueError(f"sparsity reduce must be 'mean' or 'sum', got {reduce!r}")
    scale = 1.0 if reduce == "mean" else sum(m.channels for m in mixes) / max(len(mixes), 1)
    return scale * _sparsity(mixes, form, tau)


def _sparsity(mixes: Sequence[GateMix], form: str, tau) -> Tensor:
    if form not in SPARSITY_FORMS:
        raise ValueError(f"sparsity must be one of {', '.join(SPARSITY_FORMS)}, got {form!r}")
    if not mixes:
        raise ValueError("sparsity_loss: the model has no gated layer")
    m = active_share(mixes)
    if form == "none":
        return m.sum() * 0.0
    if form == "l1":
        return m.mean()
    t = torch.as_tensor(tau if tau is not None else 0.0, dtype=m.dtype, device=m.device)
    t = t.expand_as(m) if t.dim() == 0 else t
    if t.shape != m.shape:
        raise ValueError(f"tau must give one target per task ({m.numel()}), got {tuple(t.shape)}")
    return torch.clamp(m - t, min=0).mean()
