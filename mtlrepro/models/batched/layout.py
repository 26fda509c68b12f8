"""The task-major batch layout of a batched task pass and its channel view.

A batched pass holds ``n`` tasks' rows task-major: ``(n*B, C, *S)``, rows ``i*B:(i+1)*B`` for
task ``i``. Per-task convs and BNs run on the channel view ``(B, n*C, *S)`` instead, task ``i``'s
channels at ``i*C:(i+1)*C`` (what a grouped conv with ``groups = n`` reads and writes).
"""
from __future__ import annotations

from torch import Tensor

__all__ = ["tasks_to_channels", "channels_to_tasks"]


def tasks_to_channels(x: Tensor, n: int) -> Tensor:
    """``(n*B, C, *S)`` task-major rows -> ``(B, n*C, *S)``: task ``i``'s channels at ``i*C:(i+1)*C``."""
    return x.unflatten(0, (n, -1)).transpose(0, 1).flatten(1, 2)


def channels_to_tasks(y: Tensor, n: int) -> Tensor:
    """Inverse of :func:`tasks_to_channels`: ``(B, n*C, *S)`` -> ``(n*B, C, *S)``."""
    return y.unflatten(1, (n, -1)).transpose(0, 1).flatten(0, 1)

