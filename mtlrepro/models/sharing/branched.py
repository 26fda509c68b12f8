"""A branched (tree-shaped) multi-task encoder: the architecture a search produced, retrained.

Given a :class:`~mtlrepro.search.architecture.BranchedArchitecture` (per branch module ``k`` of a
staged backbone, the partition of the tasks into groups that share module ``k``), the model holds
one copy of module ``k`` per group, each taken from its own fresh backbone build (so a pretrained
recipe initialises every copy from the same ImageNet weights, as the released CoNAL code's
``new_bb()`` per module does) with every other module dropped; group ``i`` of module ``k`` reads the
output of its parent group at module ``k - 1`` (the input image at ``k = 0``). Task ``t``'s head
reads the output of its group at the last module.

CoNAL's retrained architecture is this model with the architecture ``from_branch_points`` (its
released ``CoNALArch``); hard sharing and single-task networks are its two extremes (one group
everywhere, singletons everywhere) and count exactly their parameters.

Keyword arguments: ``architecture`` (a dict, :meth:`BranchedArchitecture.to_dict` /
``{"branch_points": [...], "n_modules": M}``; part of the fingerprint), ``head`` /
``head_kwargs`` and the backbone's keyword arguments (``pretrained``, ``width_mult``, ...).

Parameter partition: a module copy run by one task, and that task's head, are the task's
(``task_parameters``); copies run by several tasks are shared (``shared_parameters``), which is
what gradient aggregators (PCGrad, CAGrad: CoNAL Table 7) combine.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ...search.architecture import BranchedArchitecture
from ..heads import head_factory
from ..interface import MTLModel, PerTask
from ..registries import BACKBONES, SHARING
from ..units import ConvBN

__all__ = ["Branched"]


@SHARING.register("branched")
class Branched(MTLModel):
    """A tree of branch-module copies (see the module docstring)."""

    task_conditional = False
    needs_branch_modules = True   # a backbone with ResNetStages' branch modules
    version = 1

    def __init__(self, backbone: str = "resnet50_dilated", out_dims: list[int] | None = None,
                 architecture: dict[str, Any] | None = None, **backbone_kwargs):
        super().__init__()
        head, head_kwargs = backbone_kwargs.pop("head", None), backbone_kwargs.pop("head_kwargs", None)
        self._set_tasks(backbone, out_dims)
        builder = BACKBONES.get(backbone)
        probe = builder(ConvBN, **{k: v for k, v in backbone_kwargs.items() if k != "pretrained"})
        n_modules = getattr(probe.encoder, "n_branch_modules", None)
        if n_modules is None:
            raise ValueError(f"branched needs a backbone with branch modules (ResNetStages); got {backbone!r}")
        if architecture is None:
            raise ValueError("branched needs an architecture (sharing_kwargs.architecture, or a recipe "
                             "field architecture_from naming the search that produces it)")
        arch = BranchedArchitecture.from_dict({"n_modules": n_modules, **architecture})
        if arch.n_tasks != self.n_tasks or arch.n_modules != n_modules:
            raise ValueError(f"branched: the architecture has {arch.n_tasks} tasks x {arch.n_modules} modules; "
                             f"the problem has {self.n_tasks} tasks and {backbone!r} {n_modules} branch modules")
        self.architecture = arch
        self._parents = [[arch.parent(k, i) if k else 0 for i in range(len(level))]
                         for k, level in enumerate(arch.groups)]
        self._last_group = [arch.group_of(n_modules - 1, t) for t in range(self.n_tasks)]
        blocks = []
        for k, level in enumerate(arch.groups):
            copies = []
            for _ in level:
                enc = builder(ConvBN, **backbone_kwargs).encoder
                enc.keep_branch_modules({k})
                copies.append(enc)
            blocks.append(nn.ModuleList(copies))
        self.blocks = nn.ModuleList(blocks)
        self.feature_dim = probe.feature_dim
        make_head = head_factory(probe.feature_dim, probe.make_head, head, head_kwargs)
        self.heads = PerTask([make_head(d) for d in self.out_dims])

    def forward(self, x: Tensor, task: int | None = None) -> list[Tensor]:
        if task is not None:
            raise ValueError("branched is not task-conditional: call model(x) (returns all tasks)")
        hs = [x]
        for k, (copies, parents) in enumerate(zip(self.blocks, self._parents)):
            hs = [net.forward_branch_module(k, hs[p]) for net, p in zip(copies, parents)]
        last = self.blocks[-1]
        return [head(last[g].readout(hs[g])) for head, g in zip(self.heads, self._last_group)]

    # --- parameter partition -------------------------------------------------------------------
    def _private_copies(self, task: int) -> list[nn.Module]:
        return [self.blocks[k][i] for k, level in enumerate(self.architecture.groups)
                for i, g in enumerate(level) if g == (task,)]

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        if not 0 <= task < self.n_tasks:
            raise IndexError(f"task {task} out of range for {self.n_tasks} tasks")
        return [p for m in [*self._private_copies(task), self.heads[task]] for p in m.parameters()]

    def shared_parameters(self) -> list[nn.Parameter]:
        private = {id(p) for t in range(self.n_tasks) for p in self.task_parameters(t)}
        return [p for p in self.parameters() if id(p) not in private]

    def conflict_modules(self) -> list[tuple[str, list[nn.Parameter]]]:
        """Per branch module, the parameters of its copies run by more than one task (CoNAL Table 1's
        f_S^(k) for a tree: a pair of tasks in different copies has orthogonal gradients there)."""
        names = self.blocks[0][0].branch_module_names
        return [(names[k], [p for i, g in enumerate(level) if len(g) > 1
                            for p in self.blocks[k][i].branch_module(k).parameters()])
                for k, level in enumerate(self.architecture.groups)]

    def units(self) -> list[nn.Module]:
        return [u for copies in self.blocks for net in copies for u in net.units()]

    def last_shared_layer(self) -> nn.Module:
        shared = self.architecture.shared_modules()
        if not shared:
            raise ValueError("branched: no module is shared by two tasks (single-task networks)")
        k, i = shared[-1]
        return self.blocks[k][i].branch_module(k)
