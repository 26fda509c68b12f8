"""Batched task passes: several tasks' forward passes as ONE pass, equal to the per-task loop.

Instead of one forward per task, the input is repeated ``T`` times into one ``(T*B, ...)``
batch, task-major (rows ``i*B:(i+1)*B`` belong to ``tasks[i]``), and the model's
:class:`~mtlrepro.models.interface.TaskContext` holds the whole task list. Shared layers see the
big batch; task-conditional units apply their per-task op in batched form - channel masks as a
``(T, 1, C, 1, 1)`` multiply, per-task convs as one grouped conv (per-task slices on CPU) and one
BN kernel (:mod:`.per_task`), per-task linears as a batched matmul - and every BatchNorm that
normalises with batch statistics computes them per task group and updates its running statistics
exactly as ``T`` sequential passes would (:mod:`.norm`). Results equal the per-task loop up to
float rounding (exactly, in float64).

How many tasks share a pass is the chunking policy (:mod:`.chunking`: ``$MTLREPRO_TASK_CHUNK``,
4 on CPU, as many as fit in half the free memory on an accelerator).
"""
from .chunking import (CPU_AUTO_CHUNK, MEMORY_FRACTION, TASK_CHUNK_ENV, auto_chunk_for, chunk_setting,
                       memory_task_chunk, saved_bytes_per_task, task_chunks)
from .layout import channels_to_tasks, tasks_to_channels
from .norm import grouped_batch_norm, grouped_batch_norms, per_task_batch_norm
from .per_task import per_task_conv_bn, per_task_linear

__all__ = ["tasks_to_channels", "channels_to_tasks", "grouped_batch_norm", "grouped_batch_norms",
           "per_task_batch_norm", "per_task_conv_bn", "per_task_linear", "task_chunks", "chunk_setting",
           "TASK_CHUNK_ENV", "CPU_AUTO_CHUNK", "MEMORY_FRACTION", "auto_chunk_for", "memory_task_chunk",
           "saved_bytes_per_task"]
