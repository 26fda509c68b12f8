r"""CoNAL's search space (Yue, Zhang & Liang, "Learning Conflict-Noticed Architecture for
Multi-Task Learning", AAAI 2023, Sec. 2.2, Fig. 1b): one all-shared encoder :math:`f_S` and one
purely task-specific encoder :math:`h_t` per task, mixed at every branch point.

With ``M`` branch modules (ResNets: stem, layer1..layer4, so ``P = M + 1 = 6`` branch points),
:math:`s_p` the output of the first ``p`` shared modules (:math:`s_0 = x`) and :math:`h_t(\cdot, p)`
task ``t``'s own modules ``p..M-1`` (the identity for ``p = M``), task ``t``'s representation is

.. math::
    o_t(x, \alpha_t) = \sum_{p=0}^{M} \operatorname{softmax}(\alpha_t)_p \, h_t(s_p, p),

which its head reads. Branch point ``p = M`` is fully shared, ``p = 0`` a separate network. The
same module of :math:`h_t` serves every branch point before it (one ``h_t`` per task, as the
released ``CoNAL`` model's ``sl0..sl3`` slices of one backbone). :math:`\alpha \in R^{T \times P}`
starts uniform (ones, as released). Discretisation (:meth:`export_architecture`):
:math:`p_t^* = \arg\max_p \alpha_t^{(p)}`, then the unused modules are dropped (the ``branched``
scheme retrains it).

Facts from the released code (``yuezhixiong/CoNAL``, ``CoNAL/model.py``): ``alpha =
ones(task_num, 6)``; optional ``gumbel`` (hard Gumbel-softmax instead of softmax, off in its
search); the shared encoder's stem is the modules' first. Cost: each task runs
:math:`M(M+1)/2` module passes of its own encoder (15 for ResNets) besides the shared pass.

Options: ``allowed_points`` (None = all ``0..M``; CoNAL Table 4's "w/o module splitting" ablation
restricts the choice to whole encoders, ``[0, M]``: the other logits are fixed at -inf),
``gumbel`` / ``tau``, ``head`` / ``head_kwargs`` and backbone keyword arguments (``pretrained``:
every encoder starts from the same ImageNet weights).

Partition: :math:`h_t` and head ``t`` are task ``t``'s; :math:`f_S` is shared; ``alpha`` is
neither (:meth:`arch_parameters`): the search method steps it on validation batches with its own
optimizer, and :meth:`shared_parameters` leaves it out.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...search.architecture import BranchedArchitecture
from ..heads import head_factory
from ..interface import MTLModel, PerTask
from ..registries import BACKBONES, SHARING
from ..units import ConvBN

__all__ = ["CoNALSupernet"]


@SHARING.register("conal_supernet")
class CoNALSupernet(MTLModel):
    """Shared encoder + one task encoder per task, mixed by softmax(alpha) at each branch point."""

    task_conditional = False
    needs_branch_modules = True   # a backbone with ResNetStages' branch modules
    version = 1

    def __init__(self, backbone: str = "resnet50_dilated", out_dims: list[int] | None = None,
                 allowed_points: Sequence[int] | None = None, gumbel: bool = False, tau: float = 1.0,
                 **backbone_kwargs: Any):
        super().__init__()
        head, head_kwargs = backbone_kwargs.pop("head", None), backbone_kwargs.pop("head_kwargs", None)
        self._set_tasks(backbone, out_dims)
        builder = BACKBONES.get(backbone)
        bb = builder(ConvBN, **backbone_kwargs)
        self.encoder = bb.encoder
        M = getattr(self.encoder, "n_branch_modules", None)
        if M is None:
            raise ValueError(f"conal_supernet needs a backbone with branch modules (ResNetStages); got {backbone!r}")
        self.n_modules = M
        self.own = PerTask([builder(ConvBN, **backbone_kwargs).encoder for _ in self.out_dims])
        make_head = head_factory(bb.feature_dim, bb.make_head, head, head_kwargs)
        self.heads = PerTask([make_head(d) for d in self.out_dims])
        self.feature_dim = bb.feature_dim
        self.alpha = nn.Parameter(torch.ones(self.n_tasks, M + 1))
        points = list(range(M + 1)) if allowed_points is None else sorted({int(p) for p in allowed_points})
        if not points or any(not 0 <= p <= M for p in points):
            raise ValueError(f"conal_supernet: allowed_points {allowed_points} must lie in 0..{M}")
        mask = torch.full((M + 1,), float("-inf"))
        mask[points] = 0.0
        self.register_buffer("point_mask", mask)
        self.points = points
        self.gumbel, self.tau = bool(gumbel), float(tau)

    # --- the architecture ----------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]

    def branch_probabilities(self) -> Tensor:
        """softmax(alpha) over the allowed branch points, ``(T, M + 1)``."""
        return F.softmax(self.alpha + self.point_mask, dim=-1)

    def export_architecture(self) -> dict[str, Any]:
        """The discretised architecture (argmax of alpha per task) and the probabilities it came from."""
        probs = self.branch_probabilities().detach().cpu()
        points = [int(p) for p in probs.argmax(dim=-1)]
        arch = BranchedArchitecture.from_branch_points(points, self.n_modules).to_dict()
        # ``branch_points`` is the tree's canonical form: a task "fully shared" with nobody left
        # owns those modules, so its point drops to where it is alone; ``argmax_points`` is alpha's
        return {**arch, "argmax_points": points,
                "probabilities": [[round(float(v), 6) for v in row] for row in probs]}

    # --- forward -------------------------------------------------------------------------------
    def _weights(self) -> Tensor:
        if self.gumbel and self.training:
            return F.gumbel_softmax(self.alpha + self.point_mask, tau=self.tau, hard=True, dim=-1)
        return self.branch_probabilities()

    def forward(self, x: Tensor, task: int | None = None) -> list[Tensor]:
        if task is not None:
            raise ValueError("conal_supernet is not task-conditional: call model(x) (returns all tasks)")
        w = self._weights()
        M, T = self.n_modules, self.n_tasks
        outs: list[Tensor | None] = [None] * T
        s = x
        for p in range(M + 1):
            if p in self.points:
                for t in range(T):
                    h = s
                    for k in range(p, M):
                        h = self.own[t].forward_branch_module(k, h)
                    term = h * w[t, p]
                    outs[t] = term if outs[t] is None else outs[t] + term
            if p < M:
                s = self.encoder.forward_branch_module(p, s)
        return [head(self.encoder.readout(o)) for head, o in zip(self.heads, outs)]

    # --- partition -----------------------------------------------------------------------------
    def shared_parameters(self) -> list[nn.Parameter]:
        """The all-shared encoder :math:`f_S` (not alpha, not the task encoders or heads)."""
        return list(self.encoder.parameters())

    def shared_module_parameters(self) -> list[list[nn.Parameter]]:
        """:math:`\\theta_S^{p}` for each branch module ``p`` (CoNAL's Eq. 5 blocks)."""
        return [list(self.encoder.branch_module(k).parameters()) for k in range(self.n_modules)]

    def units(self) -> list[nn.Module]:
        return [*self.encoder.units(), *(u for enc in self.own for u in enc.units())]

    def last_shared_layer(self) -> nn.Module:
        return self.encoder.last_shared_layer()
