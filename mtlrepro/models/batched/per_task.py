"""Task-private modules in a batched task pass: each task's own conv (-> BN) or linear on its rows.

:func:`per_task_conv_bn` runs ``n`` tasks' :class:`~mtlrepro.models.units.ConvBN` branches as one
grouped convolution (accelerators) or per-task slices (CPU) and one BN kernel;
:func:`per_task_linear` runs ``n`` same-shaped linear heads as one batched matmul. Any other
module type runs task by task on its rows (same result, no speed-up).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..units import ConvBN
from .layout import channels_to_tasks, tasks_to_channels
from .norm import per_task_batch_norm

__all__ = ["per_task_conv_bn", "per_task_linear"]


def _is_plain_conv_bn(m: nn.Module) -> bool:
    """A ``ConvBN`` (conv [-> BN]) whose conv can run as a slice of a grouped conv."""
    if type(m) is not ConvBN or not 1 <= len(m) <= 2:
        return False
    c = m[0]
    return (type(c) is nn.Conv2d and c.padding_mode == "zeros" and isinstance(c.padding, tuple)
            and (len(m) == 1 or type(m[1]) is nn.BatchNorm2d))


def per_task_conv_bn(mods: Sequence[nn.Module], x: Tensor, grouped: bool | None = None) -> Tensor:
    """``mods[i](x_i)`` for each task group ``x_i`` of a task-major ``(n*B, C_in, H, W)`` batch,
    returned task-major ``(n*B, C_out, H', W')``.

    Plain :class:`ConvBN` branches: the convolutions produce the ``(B, n*C_out, H', W')`` layout
    directly - as ONE grouped convolution (the ``n`` weights stacked, ``groups = n`` on the
    ``(B, n*C_in, H, W)`` view) on accelerators, or as ``n`` convolutions on the tasks' rows
    concatenated along channels on CPU, where oneDNN's grouped kernel measured 2-4x slower than
    the slices (``grouped`` forces either) - then ONE BN kernel over the ``n*C_out`` channels
    (each task's own BN parameters and running statistics). Any other module type runs task by
    task on its rows.
    """
    n = len(mods)
    if not all(_is_plain_conv_bn(m) for m in mods):
        return torch.cat([m(xi) for m, xi in zip(mods, x.chunk(n))], dim=0)
    c0: nn.Conv2d = mods[0][0]
    if grouped is None:
        grouped = x.device.type != "cpu"
    if grouped:
        w = torch.cat([m[0].weight for m in mods])
        b = torch.cat([m[0].bias for m in mods]) if c0.bias is not None else None
        y = F.conv2d(tasks_to_channels(x, n), w, b, c0.stride, c0.padding, c0.dilation, n * c0.groups)
    else:
        y = torch.cat([m[0](xi) for m, xi in zip(mods, x.chunk(n))], dim=1)
    if len(mods[0]) == 2:
        y = per_task_batch_norm([m[1] for m in mods], y)
    return channels_to_tasks(y, n)


def per_task_linear(mods: Sequence[nn.Module], z: Tensor) -> list[Tensor]:
    """``mods[i](z_i)`` for each task group of a task-major ``(n*B, ...)`` batch, as a list.

    ``nn.Linear`` modules of one shape applied to ``(n*B, F)`` run as one batched matmul."""
    n = len(mods)
    shapes = {tuple(m.weight.shape) if type(m) is nn.Linear else None for m in mods}
    if z.dim() == 2 and len(shapes) == 1 and None not in shapes:
        w = torch.stack([m.weight for m in mods])                 # (n, out, in)
        zt = z.unflatten(0, (n, -1))                               # (n, B, in)
        if mods[0].bias is not None:
            bias = torch.stack([m.bias for m in mods]).unsqueeze(1)
            out = torch.baddbmm(bias, zt, w.transpose(1, 2))
        else:
            out = torch.bmm(zt, w.transpose(1, 2))
        return list(out.unbind(0))
    return [m(zi) for m, zi in zip(mods, z.chunk(n))]

