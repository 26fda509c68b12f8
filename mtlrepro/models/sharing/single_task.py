"""Single-task learning (STL): ``T`` independent networks, one per task, in one model.

Each task ``t`` gets its own copy of the backbone (plain conv -> BN units) and its own head;
nothing is shared. The model is task-conditional: ``model(x, task=t)`` runs network ``t`` only,
so the parameter and FLOP accounting of the harness (``active_parameter_count(t)``,
``complexity.count(model, shape, task=t)``) is PER TASK - the size of the single-task network
of task ``t`` - while ``parameters()`` holds all ``T`` networks (the total the STL baseline
costs). Train it with ``update: synchronized`` (one optimizer step per batch; the networks share
no parameter, so this equals training ``T`` separate models) or ``steady_state``.

Backbone-agnostic (any registered backbone). With ``segnet``, task 0 of NYUv2's ``[13, 1, 3]``
counts 24,981,069 (the semantic network, MTAN's ``model_segnet_single.py --task semantic``) and
task 0 of Cityscapes' ``[7, 1]`` 24,980,679 (its 7-class semantic network) - REFERENCE.md's
single-task numbers, exact (MTAN's single-task script has no ``logsigma``). The depth / normals
networks count 24,980,289 / 24,980,419.

Keyword arguments: none of its own; ``backbone_kwargs`` go to each backbone.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..interface import MTLModel, build_task_networks
from ..registries import SHARING

__all__ = ["SingleTask"]


@SHARING.register("single_task")
class SingleTask(MTLModel):
    """One independent backbone + head per task; one task per forward pass."""

    task_conditional = True

    def __init__(self, backbone: str = "segnet", out_dims: list[int] | None = None, **backbone_kwargs):
        super().__init__()
        self._set_tasks(backbone, out_dims)
        self.nets, self.heads, self.feature_dim = build_task_networks(backbone, self.out_dims, **backbone_kwargs)

    def forward(self, x: Tensor, task: int | None = None) -> Tensor:
        if task is None:
            raise ValueError("single_task is task-conditional: call model(x, task=t) or model.forward_all(x)")
        if not 0 <= task < self.n_tasks:
            raise IndexError(f"task {task} out of range for {self.n_tasks} tasks")
        return self.heads[task](self.nets[task](x))

    def units(self, task: int | None = None) -> list[nn.Module]:
        """Conv units of network ``task``, or of all networks (network by network) when None."""
        nets = self.nets if task is None else [self.nets[task]]
        return [u for net in nets for u in net.units()]

    def last_shared_layer(self) -> nn.Module:
        raise NotImplementedError("single_task shares no layer")
