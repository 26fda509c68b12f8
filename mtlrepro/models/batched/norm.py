"""BatchNorm in a batched task pass: per-task-group statistics, running statistics as ``T`` passes.

* :func:`grouped_batch_norm` - ONE (shared) BN on ``n`` task groups: batch statistics per group,
  running statistics updated as ``n`` consecutive training passes would (closed form below);
* :func:`per_task_batch_norm` - task ``i``'s OWN BN on its channels of the channel view;
* :func:`grouped_batch_norms` - a context in which every BN of a model behaves as
  :func:`grouped_batch_norm` on batched inputs (backbone-agnostic: it patches the BN modules
  wherever they are).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .layout import channels_to_tasks, tasks_to_channels

__all__ = ["grouped_batch_norm", "per_task_batch_norm", "grouped_batch_norms"]


def _uses_batch_stats(bn: _BatchNorm) -> bool:
    return bn.training or bn.running_mean is None


def _updates_running_stats(bn: _BatchNorm) -> bool:
    return bn.training and bn.track_running_stats and bn.running_mean is not None


def _batch_stats_norm(xc: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                      want_stats: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Normalise ``xc`` per channel with its batch statistics (BN's training-mode kernel).

    With ``want_stats`` also returns the per-channel batch mean and UNBIASED variance - exactly
    what BN would blend into its running statistics - read out of the same kernel by giving it
    scratch running buffers and momentum 1.
    """
    if not want_stats:
        return F.batch_norm(xc, None, None, weight, bias, True, 0.0, eps), None, None
    c = xc.shape[1]
    dtype = weight.dtype if weight is not None else torch.promote_types(xc.dtype, torch.float32)
    mean = torch.zeros(c, device=xc.device, dtype=dtype)
    var = torch.ones(c, device=xc.device, dtype=dtype)
    y = F.batch_norm(xc, mean, var, weight, bias, True, 1.0, eps)
    return y, mean, var


@torch.no_grad()
def _sequential_running_update(bn: _BatchNorm, means: Tensor, vars_: Tensor) -> None:
    """Update ``bn``'s running statistics as ``len(means)`` consecutive training passes would,
    the ``i``-th with batch mean ``means[i]`` and unbiased batch variance ``vars_[i]``.

    Momentum ``m``: ``r <- (1-m)^T r + sum_i m (1-m)^(T-1-i) s_i`` (closed form of T steps in order);
    momentum None (cumulative average): ``r <- (n0 r + sum_i s_i) / (n0 + T)``.
    """
    T = means.shape[0]
    rm, rv = bn.running_mean, bn.running_var
    means, vars_ = means.to(rm.dtype), vars_.to(rv.dtype)
    if bn.momentum is None:
        n0 = bn.num_batches_tracked.to(rm.dtype)
        rm.mul_(n0).add_(means.sum(0)).div_(n0 + T)
        rv.mul_(n0).add_(vars_.sum(0)).div_(n0 + T)
    else:
        m = float(bn.momentum)
        coef = (m * (1.0 - m) ** torch.arange(T - 1, -1, -1, dtype=torch.float64)).to(rm.device, rm.dtype)
        rm.mul_((1.0 - m) ** T).add_(coef @ means)
        rv.mul_((1.0 - m) ** T).add_(coef @ vars_)
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(T)


def grouped_batch_norm(bn: _BatchNorm, x: Tensor, n: int) -> Tensor:
    """``bn`` applied to ``n`` task groups of a task-major ``(n*B, C, *S)`` batch as ``n``
    separate calls would: batch statistics per group, running statistics updated ``n`` times
    in order (closed form). With running statistics in eval mode this is just ``bn(x)``.
    """
    if not _uses_batch_stats(bn) or n == 1:
        return type(bn).forward(bn, x)
    update = _updates_running_stats(bn)
    w = bn.weight.repeat(n) if bn.weight is not None else None
    b = bn.bias.repeat(n) if bn.bias is not None else None
    y, mean, var = _batch_stats_norm(tasks_to_channels(x, n), w, b, bn.eps, update)
    if update:
        _sequential_running_update(bn, mean.view(n, -1), var.view(n, -1))
    return channels_to_tasks(y, n)


def per_task_batch_norm(bns: Sequence[_BatchNorm], yc: Tensor) -> Tensor:
    """Task ``i``'s own BN ``bns[i]`` on channels ``i*C:(i+1)*C`` of a ``(B, n*C, *S)`` tensor
    (the layout of a grouped per-task conv's output); one training pass each for the running stats."""
    n = len(bns)
    bn0 = bns[0]
    if any(_uses_batch_stats(bn) != _uses_batch_stats(bn0) for bn in bns):
        raise RuntimeError("per-task BatchNorms in different modes (train / eval) in one batched pass")
    w = torch.cat([bn.weight for bn in bns]) if bn0.weight is not None else None
    b = torch.cat([bn.bias for bn in bns]) if bn0.bias is not None else None
    if not _uses_batch_stats(bn0):
        rm = torch.cat([bn.running_mean for bn in bns])
        rv = torch.cat([bn.running_var for bn in bns])
        return F.batch_norm(yc, rm, rv, w, b, False, 0.0, bn0.eps)
    update = _updates_running_stats(bn0)
    y, mean, var = _batch_stats_norm(yc, w, b, bn0.eps, update)
    if update:
        _per_module_running_update(bns, mean.view(n, -1), var.view(n, -1))
    return y


@torch.no_grad()
def _per_module_running_update(bns: Sequence[_BatchNorm], means: Tensor, vars_: Tensor) -> None:
    """One training-pass running-stat update of each ``bns[i]`` with ``means[i]``, ``vars_[i]``."""
    tracked = [bn.num_batches_tracked for bn in bns if bn.num_batches_tracked is not None]
    if tracked:
        torch._foreach_add_(tracked, 1)
    rms = [bn.running_mean for bn in bns]
    rvs = [bn.running_var for bn in bns]
    means, vars_ = means.to(rms[0].dtype), vars_.to(rvs[0].dtype)
    moms = {bn.momentum for bn in bns}
    if len(moms) == 1 and None not in moms:
        f = float(moms.pop())
        torch._foreach_mul_(rms, 1.0 - f)
        torch._foreach_add_(rms, list(means.unbind(0)), alpha=f)
        torch._foreach_mul_(rvs, 1.0 - f)
        torch._foreach_add_(rvs, list(vars_.unbind(0)), alpha=f)
        return
    for bn, rm, rv, m, v in zip(bns, rms, rvs, means, vars_):
        f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else float(bn.momentum)
        rm.mul_(1.0 - f).add_(m, alpha=f)
        rv.mul_(1.0 - f).add_(v, alpha=f)


class _GroupedBNForward:
    """Replaces a BatchNorm's ``forward`` during a batched pass: inputs with ``rows`` rows (the
    ``n*B`` task-major batch) are normalised per task group; anything else as usual."""

    __slots__ = ("bn", "n", "rows")

    def __init__(self, bn: _BatchNorm, n: int, rows: int):
        self.bn, self.n, self.rows = bn, n, rows

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[0] == self.rows:
            return grouped_batch_norm(self.bn, x, self.n)
        return type(self.bn).forward(self.bn, x)


@contextmanager
def grouped_batch_norms(module: nn.Module, n: int, batch: int) -> Iterator[None]:
    """Within the block, every BatchNorm of ``module`` that normalises with batch statistics
    (training mode, or no running statistics) treats an ``(n*batch, ...)`` input as ``n`` task
    groups (:func:`grouped_batch_norm`). Backbone-agnostic: it patches the BN modules wherever
    they are, so shared layers of any backbone behave as in ``n`` separate passes."""
    patched = []
    try:
        if n > 1:
            for m in module.modules():
                if isinstance(m, _BatchNorm) and _uses_batch_stats(m) and "forward" not in m.__dict__:
                    m.__dict__["forward"] = _GroupedBNForward(m, n, n * batch)
                    patched.append(m)
        yield
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)

