r"""LTB's search space (Guo, Lee & Ulbricht, "Learning to Branch for Multi-Task Learning", ICML
2020; CoNAL Fig. 1a): a supergraph of ``T`` candidate nodes per branch module whose children each
sample one parent by a Gumbel-softmax, discretised into a tree that ``branched`` retrains.

With ``M`` branch modules (ResNets: stem, layer1..layer4) and ``T`` tasks, node ``i`` of module
``k`` is module ``k`` of the ``i``-th of ``T`` backbone copies (LibMTL's ``_transform_resnet_ltb``:
``T`` encoders, one per task). Stem nodes read the image; for ``k >= 1`` child ``i`` of module
``k`` reads a mix of the ``T`` nodes of module ``k - 1``, and task ``t``'s head reads a mix of the
last module's nodes:

.. math::
    h_0^i = f_0^i(x), \qquad h_k^i = f_k^i\Big(\sum_j w_k[i, j]\, h_{k-1}^j\Big), \qquad
    \hat y_t = g_t\Big(\sum_j w_M[t, j]\, h_{M-1}^j\Big),

:math:`w_k[i] = \mathrm{GumbelSoftmax}_{\mathrm{hard}}(\alpha_k[i], \tau)` (one sample per forward
for the whole batch, straight-through gradient to :math:`\alpha`). :math:`\alpha \in
R^{(M+1) \times T \times T}` starts at ones; row ``k`` is the choice at module ``k``'s input (row 0
is unused: stems read the image; row ``M`` is the heads' choice).

``head_choice`` (default True): whether the heads choose their parent (row ``M``). LibMTL's code
(written by CoNAL's first author, commits 81de824 / fd967c2, July 2022) allocates the row but
feeds head ``t`` node ``t`` of layer4 (``head_choice=False``), so layer4 is never shared there.
True is the default because CoNAL's printed LTB trees need a shared layer4: Table 1 reports a
conflict ratio for LTB's :math:`f_S^5` (layer4), NYUv2's 86.85M is hard sharing plus one more
layer4 (layer4 shared by two of three tasks; with ``head_choice=False`` the smallest tree has
101.82M) and CelebA-9's 77.39M is below nine layer4 copies (78.3M with the rest shared). The
paper's full text was not at hand (its abstract: a tree whose branching is a Gumbel-softmax
sampling by every child node); ``False`` reproduces LibMTL's code.

Phases, set by the search method (:mod:`mtlrepro.search.ltb`) through :meth:`set_search_phase`:

* **warm-up**: :math:`w = 1` everywhere (every child sums all its parents, LibMTL's
  ``alpha = ones`` for ``epoch < epochs / 100``; ``warmup_mix="mean"`` divides by ``T``);
  :math:`\alpha` gets no gradient;
* **sampling**: hard (``hard=True``, LibMTL) or soft Gumbel-softmax at temperature ``tau``.

Evaluation mode uses the warm-up mix during warm-up, else the argmax one-hot choices, i.e. the
tree :meth:`export_architecture` gives (a choice: LibMTL samples at evaluation too; the search
run's metrics are not a table's).

Discretisation (:meth:`export_architecture`): each child keeps its most likely parent; tracing
back from the heads, task ``t`` runs node :math:`n_{M-1}(t) = \arg\max_j \alpha_M[t, j]` (``t``
without head choice) and :math:`n_{k-1}(t) = \arg\max_j \alpha_k[n_k(t), j]`; the tasks on one
node of module ``k`` form a group. Groups refine along the chain (a node has one parent), so it is
a :class:`~mtlrepro.search.architecture.BranchedArchitecture`; unused nodes are dropped. (LibMTL
keeps and evaluates the sampled supergraph, with no discretisation; CoNAL's printed LTB counts
are those of a tree, and the paper searches then retrains, so the argmax tree is what we retrain.)

Parameters: ``T`` backbones + ``T`` heads + :math:`(M+1) T^2` logits (STL + 24 on Cityscapes).
Partition: every node may serve every task, so all backbone copies are shared; head ``t`` is task
``t``'s; :math:`\alpha` is neither (:meth:`arch_parameters`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...search.architecture import BranchedArchitecture
from ..heads import head_factory
from ..interface import MTLModel, PerTask
from ..registries import BACKBONES, SHARING
from ..units import ConvBN

__all__ = ["LTBSupernet"]


def _mix(weights: Tensor, hs: list[Tensor]) -> Tensor:
    """:math:`\\sum_j w_j h_j` (a one-hot ``w`` gives its ``h`` exactly)."""
    out = weights[0] * hs[0]
    for j in range(1, len(hs)):
        out = out + weights[j] * hs[j]
    return out


@SHARING.register("ltb_supernet")
class LTBSupernet(MTLModel):
    """T candidate nodes per branch module, each child choosing one parent (module docstring)."""

    task_conditional = False
    needs_branch_modules = True   # a backbone with ResNetStages' branch modules
    version = 1

    def __init__(self, backbone: str = "resnet50_dilated", out_dims: list[int] | None = None,
                 head_choice: bool = True, hard: bool = True, tau: float = 1.0, warmup_mix: str = "sum",
                 **backbone_kwargs: Any):
        super().__init__()
        # head / head_kwargs travel in **backbone_kwargs: a named parameter would enter every fingerprint
        head, head_kwargs = backbone_kwargs.pop("head", None), backbone_kwargs.pop("head_kwargs", None)
        self._set_tasks(backbone, out_dims)
        if warmup_mix not in ("sum", "mean"):
            raise ValueError(f"ltb_supernet: warmup_mix must be 'sum' or 'mean', got {warmup_mix!r}")
        builder = BACKBONES.get(backbone)
        bbs = [builder(ConvBN, **backbone_kwargs) for _ in self.out_dims]
        M = getattr(bbs[0].encoder, "n_branch_modules", None)
        if M is None:
            raise ValueError(f"ltb_supernet needs a backbone with branch modules (ResNetStages); got {backbone!r}")
        self.n_modules = M
        self.nodes = nn.ModuleList([bb.encoder for bb in bbs])   # node i of module k: nodes[i]'s module k
        make_head = head_factory(bbs[0].feature_dim, bbs[0].make_head, head, head_kwargs)
        self.heads = PerTask([make_head(d) for d in self.out_dims])
        self.feature_dim = bbs[0].feature_dim
        T = self.n_tasks
        self.alpha = nn.Parameter(torch.ones(M + 1, T, T))
        self.head_choice, self.hard, self.warmup_mix = bool(head_choice), bool(hard), warmup_mix
        self.tau = float(tau)
        self.warmup = False

    # --- the architecture ----------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]

    def set_search_phase(self, warmup: bool, tau: float) -> None:
        """The search method's schedule: warm-up (sum of all parents) or sampling at ``tau``."""
        self.warmup, self.tau = bool(warmup), float(tau)

    def branch_probabilities(self) -> Tensor:
        """softmax(alpha) over the parents, ``(M + 1, T, T)`` (rows 0 and, without head choice, M unused)."""
        return F.softmax(self.alpha, dim=-1)

    def mixing_weights(self) -> Tensor:
        """This forward's :math:`w`, ``(M + 1, T, T)``: the warm-up mix, a Gumbel sample (training)
        or the argmax one-hot choices (evaluation)."""
        T = self.n_tasks
        if self.warmup:
            ones = torch.ones_like(self.alpha)
            return ones / T if self.warmup_mix == "mean" else ones
        if self.training:
            return F.gumbel_softmax(self.alpha, tau=self.tau, hard=self.hard, dim=-1)
        return F.one_hot(self.alpha.argmax(dim=-1), T).to(self.alpha.dtype)

    def node_paths(self) -> list[list[int]]:
        """``paths[k][t]``: the node task ``t`` runs at module ``k`` in the discretised tree."""
        choice = self.alpha.detach().argmax(dim=-1).cpu().tolist()   # (M + 1, T): each child's parent
        M, T = self.n_modules, self.n_tasks
        last = [choice[M][t] if self.head_choice else t for t in range(T)]
        paths = [last]
        for k in range(M - 1, 0, -1):
            paths.insert(0, [choice[k][n] for n in paths[0]])
        return paths

    def export_architecture(self) -> dict[str, Any]:
        """The discretised tree (argmax parent per child), the supernet node each group came from
        (``nodes[k][i]`` for group ``i`` of module ``k``) and the probabilities."""
        paths = self.node_paths()
        groups = [[[t for t in range(self.n_tasks) if row[t] == n] for n in sorted(set(row))] for row in paths]
        arch = BranchedArchitecture(self.n_tasks, groups)
        nodes = [[paths[k][g[0]] for g in level] for k, level in enumerate(arch.groups)]
        probs = self.branch_probabilities().detach().cpu()
        return {**arch.to_dict(), "method": "ltb", "head_choice": self.head_choice, "nodes": nodes,
                "probabilities": [[[round(float(v), 6) for v in row] for row in level] for level in probs]}

    # --- forward -------------------------------------------------------------------------------
    def forward(self, x: Tensor, task: int | None = None) -> list[Tensor]:
        if task is not None:
            raise ValueError("ltb_supernet is not task-conditional: call model(x) (returns all tasks)")
        return self.forward_with(x, self.mixing_weights())

    def forward_with(self, x: Tensor, w: Tensor) -> list[Tensor]:
        """The supergraph under the mixing weights ``w`` ``(M + 1, T, T)`` (one-hot rows: one tree)."""
        M, T = self.n_modules, self.n_tasks
        hs = [enc.forward_branch_module(0, x) for enc in self.nodes]
        for k in range(1, M):
            hs = [self.nodes[i].forward_branch_module(k, _mix(w[k, i], hs)) for i in range(T)]
        feats = [_mix(w[M, t], hs) for t in range(T)] if self.head_choice else hs
        readout = self.nodes[0].readout   # parameter-free (identity / global pooling)
        return [head(readout(f)) for head, f in zip(self.heads, feats)]

    # --- partition -----------------------------------------------------------------------------
    def shared_parameters(self) -> list[nn.Parameter]:
        """Every backbone node (any of them may serve any task); not alpha, not the heads."""
        return list(self.nodes.parameters())

    def conflict_modules(self) -> list[tuple[str, list[nn.Parameter]]]:
        """Per branch module, the nodes the current argmax tree runs for more than one task (CoNAL
        Table 1's f_S^(k) while learning LTB's architecture)."""
        names = self.nodes[0].branch_module_names
        paths = self.node_paths()
        return [(names[k], [p for n in sorted(set(row)) if row.count(n) > 1
                            for p in self.nodes[n].branch_module(k).parameters()])
                for k, row in enumerate(paths)]

    def units(self) -> list[nn.Module]:
        return [u for enc in self.nodes for u in enc.units()]

    def last_shared_layer(self) -> nn.Module:
        """Node 0's last conv unit (a convention: every node of the last module is a candidate)."""
        return self.nodes[0].last_shared_layer()

    def extra_repr(self) -> str:
        return (f"n_tasks={self.n_tasks}, n_modules={self.n_modules}, head_choice={self.head_choice}, "
                f"hard={self.hard}, warmup_mix={self.warmup_mix!r}")
