"""How many tasks' passes fit in one batched pass on an accelerator.

All 40 CelebA tasks at once is ``40 * B`` rows: at B = 256 that is 10,240 64x64 images through
ResNet18, whose saved activations (what autograd keeps for the backward) alone need tens of GB -
fine on an 80 GB H100, an out-of-memory error on a 16-24 GB card. So ``"auto"`` (the default of
``$MTLREPRO_TASK_CHUNK``) on an accelerator is not "all tasks" but "as many as fit":

1. :func:`saved_bytes_per_task` measures, once per input shape, the bytes autograd saves for ONE
   task's pass of ``b`` rows (parameters excluded) with ``saved_tensors_hooks`` - a training-mode
   forward on a slice of the batch, with every buffer (BN running statistics, ...) restored
   afterwards, so the probe leaves no trace;
2. :func:`memory_task_chunk` divides a fraction (default 0.5) of the device's free memory by that
   cost scaled to the full batch.

Evaluation (no autograd) keeps far less than training, so it uses the same, conservative, chunk.
On CPU ``"auto"`` stays :data:`~mtlrepro.models.base.CPU_AUTO_CHUNK` and nothing is probed.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import chunk_setting

__all__ = ["saved_bytes_per_task", "memory_task_chunk", "auto_chunk_for", "MEMORY_FRACTION"]

MEMORY_FRACTION = 0.5   # of the free device memory one batched pass may fill with saved activations
_PROBE_ROWS = 2


@torch.no_grad()
def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.named_buffers() if v is not None}


@torch.no_grad()
def _restore(model: nn.Module, snap: dict[str, Tensor]) -> None:
    for k, v in model.named_buffers():
        if k in snap:
            v.copy_(snap[k])


def saved_bytes_per_task(model: nn.Module, x: Tensor, probe_rows: int = _PROBE_ROWS) -> float:
    """Bytes autograd saves for one task's training pass over ALL ``x.shape[0]`` rows (estimated
    from ``probe_rows`` rows, linear in the batch; parameters are not counted)."""
    b = max(1, min(int(probe_rows), x.shape[0]))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}   # storage -> bytes: a tensor saved by several ops counts once

    def pack(t: Tensor) -> Tensor:
        if t.layout == torch.strided:
            st = t.untyped_storage()
            if st.data_ptr() not in params:
                seen[st.data_ptr()] = st.nbytes()
        return t

    was_training = model.training
    snap = _snapshot(model)
    try:
        model.train()
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.forward_tasks(x[:b].clone(), [0])  # a copy: a slice would count all of x
    finally:
        _restore(model, snap)
        model.train(was_training)
    return sum(seen.values()) * x.shape[0] / b


def memory_task_chunk(model: nn.Module, x: Tensor, n_tasks: int, free_bytes: int | None = None,
                      fraction: float = MEMORY_FRACTION) -> int:
    """Tasks per batched pass whose saved activations fit in ``fraction`` of ``free_bytes``
    (default: the device's free memory now), between 1 and ``n_tasks``."""
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(x.device)[0] if x.device.type == "cuda" else 0
    per_task = saved_bytes_per_task(model, x)
    if per_task <= 0:
        return n_tasks
    return int(max(1, min(n_tasks, (fraction * free_bytes) // per_task)))


def auto_chunk_for(model: nn.Module, x: Tensor, task_chunk: int | str | None = None) -> int | None:
    """The memory-bounded chunk when ``task_chunk`` resolves to ``"auto"`` on a CUDA device and the
    model runs batched passes; None otherwise (``task_chunks`` then applies its own default).
    Cached on the model per (batch shape, dtype, device): the probe runs once per shape."""
    if (chunk_setting(task_chunk) != "auto" or x.device.type != "cuda"
            or not getattr(model, "supports_batched_tasks", False)):
        return None
    key = (tuple(x.shape), x.dtype, str(x.device))
    cache = model.__dict__.setdefault("_memory_task_chunk", {})
    if key not in cache:
        cache[key] = memory_task_chunk(model, x, model.n_tasks)
    return cache[key]
