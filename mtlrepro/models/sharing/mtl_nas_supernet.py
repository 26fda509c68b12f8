r"""MTL-NAS's supernet (Gao et al., CVPR 2020, Sec. 3; ``core/models/supernet.py``'s
``GeneralizedMTLNASNet``): every candidate cross-task edge of :mod:`.mtl_nas`'s search space, each
gated by its own architecture logit :math:`\alpha_e`.

Each target ``(t, p)`` has ONE fusion layer over the target map and all its candidate sources
(:class:`~.mtl_nas.FusionLayer`); edge ``e``'s source is multiplied by its connectivity
:math:`m_e`, which depends on the phase (:meth:`set_search_phase`, set by
:mod:`mtlrepro.search.mtl_nas` before each forward; the authors' ``connectivity`` switch):

* ``"sigmoid"``: :math:`m_e = \sigma(\alpha_e)` (deterministic relaxation; the authors' default for
  the architecture step);
* ``"gumbel"``: :math:`m_e \sim \mathrm{RelaxedBernoulli}(\tau, \mathrm{logits}=\alpha_e)`, one
  reparametrised sample per edge per forward (their default for the weight step);
* ``"hard"``: :math:`m_e = [\alpha_e > 0]` (evaluation, ``HARD_EVAL``: the discretised network);
* ``"all"``: :math:`m_e = 1` (their ``MODEL.SUPERNET`` baseline).

Training mode uses the phase set last (``"sigmoid"`` until a search method sets one); evaluation
mode uses ``eval_mode`` (``"hard"``). :math:`\alpha` starts at ``alpha_init`` (0: every edge at
:math:`\sigma = 0.5`, as released). Discretisation (:meth:`export_architecture`): the edges with
:math:`\alpha_e > 0` (:math:`\sigma > 0.5`, the authors' ``onehot_connectivity``); the ``mtl_nas``
scheme rebuilds that edge set with fusion layers only where a target keeps an edge. (The paper
evaluates the searched supernet itself, no retraining: that is this model in evaluation mode,
whose fusion layers keep every candidate's weights.)

Parameters: ``T`` networks and heads + the fusion layers over all candidates + ``E`` logits;
dilated ResNet-50 + aspp: Cityscapes (T = 2, E = 30) 111,249,830; NYUv2 (T = 3, E = 90)
198,099,883 (``tests/search/test_mtl_nas.py``). :math:`\alpha` is neither task's nor shared
(:meth:`arch_parameters`, left out of :meth:`shared_parameters`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, RelaxedBernoulli

from ..registries import SHARING
from .mtl_nas import CrossTaskNetworks, FusionLayer, candidate_edges

__all__ = ["MTLNASSupernet", "PHASES"]

PHASES = ("sigmoid", "gumbel", "hard", "all")
TAU_MIN = 1e-8   # the poly temperature schedule reaches 0 only past its last step; keep the division finite


@SHARING.register("mtl_nas_supernet")
class MTLNASSupernet(CrossTaskNetworks):
    """Every candidate fusion edge, each gated by sigmoid / Gumbel / hard connectivity of its logit."""

    version = 1

    def __init__(self, backbone: str = "resnet50_dilated", out_dims: list[int] | None = None,
                 init_weights: tuple[float, float] = (1.0, 0.0), bn_momentum: float = 0.05, bn_eps: float = 1e-3,
                 at_stem: bool | None = None, depth_limit: int | None = None, alpha_init: float = 0.0,
                 eval_mode: str = "hard", resize: str = "bilinear", **backbone_kwargs: Any):
        super().__init__()
        self._build_networks(backbone, out_dims, at_stem, backbone_kwargs)
        if eval_mode not in PHASES:
            raise ValueError(f"mtl_nas_supernet: eval_mode must be one of {PHASES}, got {eval_mode!r}")
        self.edges = candidate_edges(self.n_tasks, self.n_points, depth_limit)
        self.edge_index = {e: i for i, e in enumerate(self.edges)}
        self.sources: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for t, p, u, q in self.edges:
            self.sources.setdefault((t, p), []).append((u, q))
        for (t, p), src in self.sources.items():
            self.fusions[self._key(t, p)] = FusionLayer(self.widths[p], [self.widths[q] for _, q in src],
                                                        init_weights, bn_momentum, bn_eps,
                                                        self.track_running_stats, resize)
        self.alpha = nn.Parameter(torch.full((len(self.edges),), float(alpha_init)))
        self.register_buffer("edge_task", torch.tensor([e[0] for e in self.edges], dtype=torch.long),
                             persistent=False)
        self.eval_mode = eval_mode
        self.phase, self.tau = "sigmoid", 1.0
        self.global_step, self.steps_per_epoch = 0, 0

    # --- the architecture ----------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]

    def set_search_phase(self, phase: str, tau: float = 1.0) -> None:
        """The connectivity of the next training-mode forwards (module docstring) and its temperature."""
        if phase not in PHASES:
            raise ValueError(f"mtl_nas_supernet: phase must be one of {PHASES}, got {phase!r}")
        self.phase, self.tau = phase, float(tau)

    def on_train_step(self, step: int, steps_per_epoch: int) -> None:
        """Records the trainer's global step (the search method's schedules read it)."""
        self.global_step, self.steps_per_epoch = int(step), int(steps_per_epoch)

    def edge_probabilities(self) -> Tensor:
        """:math:`\\sigma(\\alpha)`, one per candidate edge (``self.edges`` order)."""
        return torch.sigmoid(self.alpha)

    def edge_weights(self) -> Tensor:
        phase = self.phase if self.training else self.eval_mode
        a = self.alpha
        if phase == "sigmoid":
            return torch.sigmoid(a)
        if phase == "gumbel":
            return RelaxedBernoulli(torch.tensor(max(self.tau, TAU_MIN), dtype=a.dtype, device=a.device),
                                    logits=a).rsample()
        if phase == "hard":
            return (a.detach() > 0).to(a.dtype)
        return torch.ones_like(a)

    def entropy(self) -> Tensor:
        """The authors' ``entropy_loss``: per target task, the mean Bernoulli entropy of its edges'
        :math:`\\sigma(\\alpha)`, averaged over the tasks that have edges."""
        h = Bernoulli(logits=self.alpha).entropy()
        tasks = sorted({e[0] for e in self.edges})
        if not tasks:
            return h.sum()
        return torch.stack([h[self.edge_task == t].mean() for t in tasks]).mean()

    def chosen_edges(self) -> list[tuple[int, int, int, int]]:
        """The discretised edge set: :math:`\\alpha_e > 0`."""
        keep = (self.alpha.detach() > 0).cpu().tolist()
        return [e for e, k in zip(self.edges, keep) if k]

    def export_architecture(self) -> dict[str, Any]:
        """The discretised architecture (``mtl_nas``'s ``architecture``) and the probabilities."""
        probs = self.edge_probabilities().detach().cpu().tolist()
        return {"kind": "mtl_nas", "n_tasks": self.n_tasks, "n_points": self.n_points,
                "edges": [list(e) for e in self.chosen_edges()], "method": "mtl_nas",
                "point_names": self.point_names,
                "probabilities": [[*e, round(float(v), 6)] for e, v in zip(self.edges, probs)]}

    # --- forward -------------------------------------------------------------------------------
    def _fuse(self, t: int, p: int, raw: list[list[Tensor]], weights: Tensor | None) -> Tensor:
        src = self.sources.get((t, p))
        if not src:
            return raw[p][t]
        w = [weights[self.edge_index[(t, p, u, q)]] for u, q in src]
        return self.fusions[self._key(t, p)](raw[p][t], [raw[q][u] for u, q in src], w)

    # --- partition -----------------------------------------------------------------------------
    def shared_parameters(self) -> list[nn.Parameter]:
        """The fusion layers (they read every task); not alpha, not the networks or heads."""
        return list(self.fusions.parameters())

    def extra_repr(self) -> str:
        return (f"n_tasks={self.n_tasks}, n_points={self.n_points}, candidate_edges={len(self.edges)}, "
                f"eval_mode={self.eval_mode!r}")
