r"""BMTAS's supergraph (Bruggemann, Kanakis, Georgoulis & Van Gool, "Automated Search for
Resource-Efficient Branched Multi-Task Networks", BMVC 2020, Sec. 3; released ``SuperMobileNetV2``
in ``brdav/bmtas``, ``src/models.py`` / ``src/modules.py``) on a staged backbone.

Every searched layer :math:`l` holds :math:`T` copies :math:`o_{l,1..T}` of the layer (one per task,
all from the same initialisation). Each task runs its own path: with :math:`h_{t,l}` task ``t``'s
input of layer ``l`` and weights :math:`w_{l,t} \in \Delta^{T-1}`,

.. math::
    h_{t,l+1} = \sum_i w_{l,t,i}\, o_{l,i}(h_{t,l}),
    \qquad w_{l,t} = \operatorname{softmax}\big((\alpha_l[t] + g) / \tau\big),\ g \sim \text{Gumbel}(0, 1)

(soft Gumbel-softmax, the released ``hard=False``; ``gumbel_hard`` is the straight-through variant).
:math:`\alpha_l \in R^{T \times T}` starts at zero. In the **warm-up** (:attr:`warmup`) task ``t``
uses copy ``t`` only (the released one-hot ``eye(T)[t]``): ``T`` single-task networks. In
evaluation mode the path is the discretised one (copy :math:`\arg\max_i \alpha_l[t, i]`; the
warm-up's own copies during the warm-up), so the per-epoch metrics are the exported tree's on the
supernet's weights. The temperature :attr:`tau` and the warm-up flag are set by the search method
(:mod:`mtlrepro.search.bmtas`) every epoch.

**Granularity**: the searched layers are the backbone's branch modules (ResNets: ``layer1`` ..
``layer4``; the stem is shared, as the released stem conv sits outside the supergraph:
``shared_stem``), the granularity :class:`~mtlrepro.search.architecture.BranchedArchitecture` and
the ``branched`` scheme retrain. The released MobileNetV2 searches every inverted-residual block
(17 + R-ASPP); on a ResNet-50 that would be its 16 bottlenecks. CoNAL's printed BMTAS counts lie on
layer boundaries (Cityscapes 79.04M = STL minus stem and layer1; NYUv2 116.04M is 0.03M from the
closest tree, 116.01M = stem .. layer2 shared by all three tasks, and no bottleneck-level tree comes
closer), so the layer granularity loses none of the printed architectures.

**Discretisation** (:meth:`export_architecture`, released ``get_branch_config`` and
``BranchMobileNetV2._get_branch_mappings``): task ``t`` takes copy :math:`c_{l,t} = \arg\max_i
\alpha_l[t, i]`; two tasks share layer ``l`` iff they shared layer ``l - 1`` and took the same copy.
A hard one-hot :math:`\alpha` makes the supernet compute exactly that tree (weights of copy
:math:`c` serve every group that took it).

Layer outputs are cached per (input tensor, copy), so tasks with the same input (after the shared
stem; or all of a group on a hard path) run each copy once -- the same values as the released
per-task passes, fewer BatchNorm running-statistic updates.

Options: ``shared_stem`` (True), ``final_affine`` (True: keep the affine parameters of every residual
block's last BatchNorm; the released supergraph drops them, ``final_affine=False``, and so does
this with False), ``gumbel_hard`` (False), ``head`` / ``head_kwargs``, backbone keyword arguments
(``pretrained``: every copy starts from the same ImageNet weights, as released).

Partition: the copies are shared (:meth:`shared_parameters`), head ``t`` is task ``t``'s,
:math:`\alpha` is neither (:meth:`arch_parameters`, stepped by the search method).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ...search.architecture import BranchedArchitecture
from ..heads import head_factory
from ..interface import MTLModel, PerTask, count_parameters
from ..registries import BACKBONES, SHARING
from ..units import ConvBN

__all__ = ["BMTASSupernet", "gumbel_softmax"]


def gumbel_softmax(logits: Tensor, tau: float, hard: bool = False, eps: float = 1e-10) -> Tensor:
    """The released ``GumbelSoftmax``: :math:`\\operatorname{softmax}((\\text{logits} + g)/\\tau)`
    with :math:`g = -\\log(E + \\epsilon)`, :math:`E \\sim \\text{Exp}(1)`; ``hard``: straight-through."""
    g = -(torch.empty_like(logits).exponential_() + eps).log()
    y = ((logits + g) / tau).softmax(dim=-1)
    if not hard:
        return y
    one = torch.zeros_like(y).scatter_(-1, y.argmax(dim=-1, keepdim=True), 1.0)
    return one - y.detach() + y


def _drop_final_affine(encoder: nn.Module) -> None:
    """The released ``final_affine=False``: the last BatchNorm of every residual block loses its
    affine parameters (the block's last conv unit: ``conv3`` of a Bottleneck, ``conv2`` of a BasicBlock)."""
    for block in encoder.modules():
        if not (hasattr(block, "downsample") and hasattr(block, "conv2")):
            continue
        last = block.conv3 if hasattr(block, "conv3") else block.conv2
        for i, m in enumerate(last):
            if isinstance(m, nn.BatchNorm2d) and m.affine:
                last[i] = nn.BatchNorm2d(m.num_features, affine=False, track_running_stats=m.track_running_stats)


@SHARING.register("bmtas_supernet")
class BMTASSupernet(MTLModel):
    """``T`` copies of every searched branch module, one soft path per task (module docstring)."""

    task_conditional = False
    needs_branch_modules = True   # a backbone with ResNetStages' branch modules
    version = 1

    def __init__(self, backbone: str = "resnet50_dilated", out_dims: list[int] | None = None,
                 shared_stem: bool = True, final_affine: bool = True, gumbel_hard: bool = False,
                 **backbone_kwargs: Any):
        super().__init__()
        head, head_kwargs = backbone_kwargs.pop("head", None), backbone_kwargs.pop("head_kwargs", None)
        self._set_tasks(backbone, out_dims)
        builder = BACKBONES.get(backbone)
        builds = [builder(ConvBN, **backbone_kwargs) for _ in self.out_dims]
        M = getattr(builds[0].encoder, "n_branch_modules", None)
        if M is None:
            raise ValueError(f"bmtas_supernet needs a backbone with branch modules (ResNetStages); got {backbone!r}")
        self.n_modules = M
        self.searched = list(range(1 if shared_stem else 0, M))
        if not self.searched:
            raise ValueError("bmtas_supernet: no branch module left to search")
        for bb in builds[1:]:
            bb.encoder.keep_branch_modules(set(self.searched))   # copy 0 holds the shared modules
        self.copies = nn.ModuleList([bb.encoder for bb in builds])
        if not final_affine:
            for enc in self.copies:
                _drop_final_affine(enc)
        make_head = head_factory(builds[0].feature_dim, builds[0].make_head, head, head_kwargs)
        self.heads = PerTask([make_head(d) for d in self.out_dims])
        self.feature_dim = builds[0].feature_dim
        T = self.n_tasks
        self.alpha = nn.Parameter(torch.zeros(len(self.searched), T, T))
        self.gumbel_hard = bool(gumbel_hard)
        self.warmup = False          # set by the search method each epoch
        self.tau = 1.0

    # --- the architecture ----------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]

    def set_search_state(self, warmup: bool, tau: float) -> None:
        self.warmup, self.tau = bool(warmup), float(tau)

    def choices(self) -> list[list[int]]:
        """:math:`c_{l,t} = \\arg\\max_i \\alpha_l[t, i]` (first maximum on ties, as released)."""
        return self.alpha.detach().argmax(dim=-1).tolist()

    def export_architecture(self) -> dict[str, Any]:
        """The discretised tree (module docstring) and the probabilities it came from."""
        choice = dict(zip(self.searched, self.choices()))
        groups, prev = [], [tuple(range(self.n_tasks))]
        for k in range(self.n_modules):
            if k in choice:
                prev = [tuple(t for t in g if choice[k][t] == c) for g in prev
                        for c in sorted({choice[k][t] for t in g})]
            groups.append(prev)
        arch = BranchedArchitecture(self.n_tasks, tuple(groups)).to_dict()
        probs = self.alpha.detach().softmax(dim=-1).cpu()
        return {**arch, "method": "bmtas", "searched_modules": list(self.searched),
                "choices": self.choices(),
                "probabilities": [[[round(float(v), 6) for v in row] for row in layer] for layer in probs]}

    # --- forward -------------------------------------------------------------------------------
    def _layer_weights(self, j: int) -> tuple[Tensor | None, list[int] | None]:
        """(soft weights ``(T, T)``, None) while searching in training mode, else (None, hard copies)."""
        if self.warmup:
            return None, list(range(self.n_tasks))
        if not self.training:
            return None, self.alpha[j].detach().argmax(dim=-1).tolist()
        return gumbel_softmax(self.alpha[j], self.tau, hard=self.gumbel_hard), None

    def paths(self, x: Tensor, tasks: Sequence[int] | None = None) -> dict[int, Tensor]:
        """Each of ``tasks``' (default: all) last-module features."""
        tasks = list(range(self.n_tasks)) if tasks is None else [int(t) for t in tasks]
        h = {t: x for t in tasks}
        searched = {k: j for j, k in enumerate(self.searched)}
        for k in range(self.n_modules):
            cache: dict[tuple[int, int], Tensor] = {}

            def run(i: int, inp: Tensor) -> Tensor:
                key = (id(inp), i)
                if key not in cache:
                    cache[key] = self.copies[i].forward_branch_module(k, inp)
                return cache[key]

            if k not in searched:
                h = {t: run(0, h[t]) for t in tasks}
                continue
            w, hard = self._layer_weights(searched[k])
            if hard is not None:
                h = {t: run(hard[t], h[t]) for t in tasks}
            else:
                h = {t: sum(w[t, i] * run(i, h[t]) for i in range(self.n_tasks)) for t in tasks}
        return h

    def forward(self, x: Tensor, task: int | None = None) -> list[Tensor]:
        if task is not None:
            raise ValueError("bmtas_supernet is not task-conditional: call model(x) (returns all tasks)")
        h = self.paths(x)
        return [self.heads[t](self.copies[0].readout(h[t])) for t in range(self.n_tasks)]

    def forward_task(self, x: Tensor, task: int) -> Tensor:
        """Task ``task``'s output alone (its own path: the released per-task search pass)."""
        return self.heads[task](self.copies[0].readout(self.paths(x, [task])[task]))

    # --- what the search method needs ----------------------------------------------------------
    def searched_modules(self) -> list[nn.Module]:
        return [self.copies[i].branch_module(k) for k in self.searched for i in range(self.n_tasks)]

    def set_bn_tracking(self, track: bool, reset: bool = False) -> None:
        """Released ``freeze/unfreeze/reset_encoder_bn_running_stats`` on the searched modules'
        BatchNorms: ``track=False`` keeps their running statistics out of the architecture pass."""
        for mod in self.searched_modules():
            for m in mod.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.track_running_stats = track
                    if reset:
                        m.reset_running_stats()

    def module_costs(self, kind: str, input_shape: Sequence[int]) -> Tensor:
        """Cost :math:`c_l` of one copy of each searched module, ``(L,)`` float64: ``"flops"`` in
        GFLOPs at ``input_shape`` ``(C, H, W)`` (released counter, one image), ``"params"`` in millions."""
        if kind == "params":
            return torch.tensor([count_parameters(self.copies[0].branch_module(k).parameters()) / 1e6
                                 for k in self.searched], dtype=torch.float64)
        if kind != "flops":
            raise ValueError(f"bmtas_supernet: resource {kind!r} is not 'flops' or 'params'")
        from ...search.bmtas_resource import count_flops
        was = self.training
        self.eval()
        enc = self.copies[0]
        h = torch.zeros((1, *input_shape), device=self.alpha.device, dtype=self.alpha.dtype)
        costs = []
        try:
            for k in range(self.n_modules):
                flops, h = count_flops(lambda: enc.forward_branch_module(k, h), enc)
                if k in self.searched:
                    costs.append(flops / 1e9)
        finally:
            self.train(was)
        return torch.tensor(costs, dtype=torch.float64)

    # --- partition -----------------------------------------------------------------------------
    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.copies.parameters())

    def units(self) -> list[nn.Module]:
        return [u for enc in self.copies for u in enc.units()]

    def last_shared_layer(self) -> nn.Module:
        if self.searched[0] == 0:
            raise ValueError("bmtas_supernet: with shared_stem=False no module is shared by construction")
        return self.copies[0].branch_module(0)
