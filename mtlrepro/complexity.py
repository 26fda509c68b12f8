"""Parameter and FLOP counts with fvcore, recorded with their unit, input shape and scope.

Conventions (the papers mix them, so every number carries its own):
- ``params``: learnable parameters used by ONE task's forward pass (``active_parameter_count``);
  for models without task routing that is every learnable parameter. Non-learnable tensors
  (masks, fixed primitive weights) are buffers and are reported separately as ``buffers``.
- ``flops``: fvcore's count for one image and one task's forward pass. fvcore counts one
  multiply-accumulate as one "flop", so the unit is MACs; FLOPs = 2 × MACs.
- ``flops_all_tasks``: what predicting every task of one image costs: for a task-conditional
  model (STL: one network per task) the sum of the ``T`` one-task passes, otherwise ``flops``
  (one pass computes all heads). CoNAL and GatedMTL print this one for their STL rows (GatedMTL
  Table 2: STL 1149 G = 3 networks); ETR-NLP's task-routing tables print one task's pass.
- ``flops_conv`` / ``flops_conv_all_tasks``: the same counts restricted to convolutions
  (fvcore's ``by_operator()["conv"]``). Shown beside the full count, never compared instead of it:
  some published counts (HRNet-W18 on NYUD: 24.5 G) equal the conv-only figure, others are between.
Ops fvcore cannot count are listed in ``unsupported_ops`` rather than silently dropped.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass
class Complexity:
    params: int
    params_total: int
    buffers: int
    flops: int
    flops_unit: str
    input_shape: tuple[int, ...]
    scope: str
    unsupported_ops: dict[str, int] = field(default_factory=dict)
    flops_all_tasks: int | None = None
    flops_conv: int | None = None
    flops_conv_all_tasks: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d


class _OneTask(nn.Module):
    """Traces one task's forward pass of a task-conditional model (or all heads otherwise)."""

    def __init__(self, model: nn.Module, task: int):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x: torch.Tensor):
        if getattr(self.model, "task_conditional", False):
            return self.model(x, task=self.task)
        return tuple(self.model(x))


def _max_unpool_handle(inputs, outputs) -> int:
    """fvcore has no handle for max_unpool2d: count one op per output element (a scatter)."""
    from fvcore.nn.jit_handles import get_shape
    shape = get_shape(outputs[0])
    n = 1
    for s in shape:
        n *= s
    return n


def _fvcore(model: nn.Module, x: torch.Tensor, task: int) -> tuple[int, dict[str, int], int]:
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(_OneTask(model, task), (x,))
    analysis.set_op_handle("aten::max_unpool2d", _max_unpool_handle)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with torch.no_grad():
        flops = int(analysis.total())
    return flops, dict(analysis.unsupported_ops()), int(analysis.by_operator().get("conv", 0))


def count(model: nn.Module, input_shape: tuple[int, ...], task: int = 0) -> Complexity:
    was_training = model.training
    model.eval()
    x = torch.zeros((1, *input_shape))
    try:
        dev = next(model.parameters()).device
        x = x.to(dev)
    except StopIteration:
        pass
    flops, unsupported, conv = _fvcore(model, x, task)
    flops_all, conv_all = flops, conv
    if getattr(model, "task_conditional", False):
        others = [_fvcore(model, x, t) for t in range(model.n_tasks) if t != task]
        flops_all = flops + sum(o[0] for o in others)
        conv_all = conv + sum(o[2] for o in others)
    model.train(was_training)
    active = model.active_parameter_count(task) if hasattr(model, "active_parameter_count") else \
        sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Complexity(
        params=int(active),
        params_total=sum(p.numel() for p in model.parameters() if p.requires_grad),
        buffers=sum(b.numel() for n, b in model.named_buffers() if "running_" not in n and "num_batches" not in n),
        flops=flops, flops_unit="MACs (fvcore)", input_shape=tuple(input_shape),
        scope=f"one image, task {task}'s forward pass" if getattr(model, "task_conditional", False)
        else "one image, all task heads", unsupported_ops=unsupported, flops_all_tasks=flops_all,
        flops_conv=conv, flops_conv_all_tasks=conv_all)


def count_pruned(model: nn.Module, input_shape: tuple[int, ...]) -> Complexity:
    """:func:`count` of a GatedMTL model's pruned inference network (:func:`mtlrepro.models.gated.prune.prune`)."""
    from .models.gated.prune import prune
    return count(prune(model, input_shape).to("cpu", torch.float32), input_shape)
