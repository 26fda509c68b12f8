r"""PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020), and the seeded
task-order generator it shares with GradVac.

Update rule (the paper's Algorithm 1): for every task ``i``, start from
:math:`g_i^{PC} = g_i` and visit the other tasks ``j`` in a random order; whenever
:math:`g_i^{PC}\cdot g_j < 0`, remove the conflicting component,

.. math::  g_i^{PC} \leftarrow g_i^{PC} - \frac{g_i^{PC}\cdot g_j}{\lVert g_j\rVert^2}\, g_j ,

and return :math:`d = \sum_i g_i^{PC}` (a sum, as in the paper, LibMTL and torchjd).

Every :math:`g_i^{PC}` stays a combination :math:`\sum_k C_{ik} g_k` of the original gradients, so
the projections need only the Gram matrix :math:`G = J J^\top` (torchjd's formulation):
:math:`g_i^{PC}\cdot g_j = C_i G_{:,j}`, and a projection is :math:`C_{ij} \mathrel{-}= (C_i G_{:,j})/G_{jj}`.
The update is :math:`c^\top J` with :math:`c = \sum_i C_i`, so ``task_weights`` are exact.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from mtlrepro.methods.aggregators.base import Aggregator

__all__ = ["PCGrad", "pcgrad_weights", "SeededTaskOrder", "host_gram"]


def host_gram(J: torch.Tensor) -> torch.Tensor:
    """``J @ J.T`` computed in ``J``'s dtype on its device, returned in float64 on the host
    (one ``T x T`` copy: the sequential, data-dependent loops of these methods run there)."""
    return (J @ J.T).detach().to("cpu", torch.float64)


class SeededTaskOrder:
    """Mixin: a CPU ``torch.Generator`` for the random task orders, seeded from the run seed.

    ``seed=None`` (the default) takes ``torch.initial_seed()`` at construction: the trainer calls
    ``torch.manual_seed(run_seed)`` before it builds the model and the weighting, so this is the
    run seed. The generator's state is part of ``state_dict()`` (``get_extra_state``), so a run
    resumed from a checkpoint continues the same sequence of orders. Orders are drawn with
    ``torch.randperm`` exactly as torchjd draws them from the global generator, so
    ``torch.manual_seed(s)`` before torchjd's aggregator reproduces ours with ``seed=s``.
    """

    def _init_generator(self, seed: int | None) -> None:
        self.seed = int(torch.initial_seed() if seed is None else seed)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)

    def get_extra_state(self) -> dict[str, Any]:
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.generator.set_state(state["generator"])


def pcgrad_weights(G: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad's coefficients ``c`` (``d = c @ J``) from the Gram matrix ``G`` (T x T, float64, CPU).

    For each ``i`` (in order), one ``torch.randperm(T)`` gives the order of the others (``j == i``
    is skipped, as in the paper's :math:`B \\setminus g_i`). A task with a zero gradient
    (:math:`G_{jj} = 0`) has :math:`g_i^{PC}\\cdot g_j = 0` and is never projected on.
    """
    T = G.shape[0]
    weights = torch.zeros(T, dtype=G.dtype)
    for i in range(T):
        order = torch.randperm(T, generator=generator)
        ci = torch.zeros(T, dtype=G.dtype)
        ci[i] = 1.0
        for j in order.tolist():
            if j == i:
                continue
            inner = G[j] @ ci  # g_i^PC . g_j
            if inner < 0:
                ci[j] -= inner / G[j, j]
        weights += ci
    return weights


class PCGrad(SeededTaskOrder, Aggregator):
    r"""PCGrad on the Jacobian w.r.t. the shared parameters (see the module docstring).

    Hyper-parameters: none in the paper. Choices:

    * ``seed`` -- the task orders' generator (default: the run seed, see :class:`SeededTaskOrder`);
      LibMTL shuffles with Python's ``random``, torchjd with the global torch generator.
    * the visit order skips ``j = i`` (paper's Algorithm 1; LibMTL also visits ``i`` itself,
      which can only matter once earlier projections made :math:`g_i^{PC}\cdot g_i < 0`);
      no ``+1e-8`` in :math:`\lVert g_j\rVert^2` (LibMTL adds it; torchjd does not).
    * task-specific parameters receive their own task's gradient (``task_gradient_scale="own"``),
      as in LibMTL (each task's loss is backpropagated; only the shared gradients are replaced).

    Logs: ``task_weights`` ``c``; ``conflict_fraction``: the fraction of task pairs with
    :math:`g_i\cdot g_j < 0`.

    Checked against ``torchjd.aggregation.PCGrad`` (same Jacobians, same permutations: equal to
    float64 rounding) in ``tests/methods/aggregators/test_pcgrad.py``.

    Example::

        >>> import torch
        >>> J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
        >>> PCGrad(2, seed=0).aggregate(J)      # g1 -> (0.5, 0.5), g2 -> (0, 1)
        tensor([0.5000, 1.5000], dtype=torch.float64)
    """

    name: ClassVar[str] = "pcgrad"
    task_gradient_scale: ClassVar[str] = "own"

    def __init__(self, n_tasks: int, seed: int | None = None, batched: bool = True, **kwargs: Any):
        super().__init__(n_tasks, batched=batched, **kwargs)
        self._init_generator(seed)

    def coefficients(self, J: torch.Tensor, losses: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        G = host_gram(J)
        c = pcgrad_weights(G, self.generator)
        T = G.shape[0]
        pairs = max(T * (T - 1) // 2, 1)
        i, j = torch.triu_indices(T, T, 1)  # (Tensor.triu is ~7 ms on a 2 x 2 float64 in torch 2.14)
        conflicts = (G[i, j] < 0).sum().to(torch.float64) / pairs
        return c.to(J.device), {"conflict_fraction": conflicts.to(J.device)}

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, seed={self.seed}"
