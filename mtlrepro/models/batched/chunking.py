"""How many tasks run in one batched pass: the chunking policy and its memory bound.

``$MTLREPRO_TASK_CHUNK`` (or a ``task_chunk`` argument) is a number of tasks per pass (1 = the
per-task loop), ``0`` / ``"all"`` or ``"auto"`` (the default):

* on CPU ``"auto"`` is :data:`CPU_AUTO_CHUNK` (4) tasks per pass (why: :func:`task_chunks`);
* on an accelerator it is as many tasks as fit. All 40 CelebA tasks at once is ``40 * B`` rows:
  at B = 256 that is 10,240 64x64 images through ResNet18, whose saved activations (what
  autograd keeps for the backward) alone need tens of GB - fine on an 80 GB H100, an
  out-of-memory error on a 16-24 GB card. So :func:`saved_bytes_per_task` measures, once per
  input shape, the bytes autograd saves for ONE task's pass of ``b`` rows (parameters excluded)
  with ``saved_tensors_hooks`` - a training-mode forward on a slice of the batch, with every
  buffer (BN running statistics, ...) restored afterwards, so the probe leaves no trace - and
  :func:`memory_task_chunk` divides a fraction (:data:`MEMORY_FRACTION`, 0.5) of the device's
  free memory by that cost scaled to the full batch. Evaluation (no autograd) keeps far less
  than training, so it uses the same, conservative, chunk.

This module only needs a model's ``forward_tasks``, ``supports_batched_tasks`` and ``n_tasks``
(duck-typed), so the model interface can import it without a cycle.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["TASK_CHUNK_ENV", "CPU_AUTO_CHUNK", "MEMORY_FRACTION", "chunk_setting", "task_chunks",
           "saved_bytes_per_task", "memory_task_chunk", "auto_chunk_for"]

TASK_CHUNK_ENV = "MTLREPRO_TASK_CHUNK"  # tasks per batched pass: N, 0 / "all", "auto" (default)
CPU_AUTO_CHUNK = 4                      # "auto" on CPU: tasks per batched pass (see task_chunks)
MEMORY_FRACTION = 0.5   # of the free device memory one batched pass may fill with saved activations
_PROBE_ROWS = 2


def chunk_setting(chunk: int | str | None = None) -> int | str:
    """The tasks-per-pass setting as a number >= 0 or ``"auto"`` (None: ``$MTLREPRO_TASK_CHUNK``)."""
    if chunk is None:
        chunk = os.environ.get(TASK_CHUNK_ENV, "").strip() or "auto"
    if isinstance(chunk, str):
        raw = chunk.strip().lower()
        if raw in ("auto", "all"):
            return "auto" if raw == "auto" else 0
        try:
            return max(0, int(raw))
        except ValueError:
            raise ValueError(f"task chunk ({TASK_CHUNK_ENV}) must be a number of tasks per "
                             f"batched pass, 0 / 'all' or 'auto'; got {chunk!r}") from None
    return max(0, int(chunk))


def task_chunks(tasks: int | Sequence[int], chunk: int | str | None = None,
                device: torch.device | str | None = None, auto_chunk: int | None = None) -> list[list[int]]:
    """Split ``tasks`` (a count or a list) into consecutive chunks, one batched pass each.

    ``chunk``: tasks per batched pass - a positive int (1 = the per-task loop), ``0`` / ``"all"``
    (every task in one pass), ``"auto"``, or None to read ``$MTLREPRO_TASK_CHUNK`` (unset =
    ``"auto"``). ``"auto"``: :data:`CPU_AUTO_CHUNK` (4) on CPU; on accelerators ``auto_chunk``
    (what fits in memory, :func:`memory_task_chunk`), else all. Why:
    a batched pass does the same FLOPs as the loop, and a CPU already runs the loop's convolutions
    at 0.57-0.70 of its GEMM peak (``benchmarks/test_roofline.py``), so batching can only save
    per-call overhead - while all tasks at once (``T``-times the working set) loses cache
    locality. Measured (``benchmarks/test_batched_tasks.py``, one thread; loop time / chunked
    time, > 1 = faster): ResNet18 CelebA-40, B = 16: 4 tasks per pass 0.99 / 1.09 (eval Max
    Roaming / ETR-NLP), 1.10 / 1.23 (synchronized step); all 40 at once 0.75-0.96. SegNet mr8,
    32x64, B = 4: 4 per pass 0.92 / 1.02 (eval), 1.17 / 1.09 (step).
    Results do not depend on the chunking beyond float rounding; smaller chunks also bound a
    pass's memory (``chunk * B`` rows).
    """
    tasks = list(range(tasks)) if isinstance(tasks, int) else [int(t) for t in tasks]
    setting = chunk_setting(chunk)
    if setting == "auto":
        dev = torch.device(device) if device is not None else torch.device("cpu")
        setting = CPU_AUTO_CHUNK if dev.type == "cpu" else (auto_chunk or 0)
    chunk = int(setting)
    if chunk <= 0 or chunk >= len(tasks):
        return [tasks] if tasks else []
    return [tasks[i:i + chunk] for i in range(0, len(tasks), chunk)]


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
