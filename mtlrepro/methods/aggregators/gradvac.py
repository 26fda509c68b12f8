r"""GradVac (Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task Optimization in
Massively Multilingual Models", ICLR 2021).

Update rule (the paper's Algorithm 1, ``whole_model`` granularity): keep an EMA target
:math:`\hat\phi_{ij}` (initially 0) of the cosine similarity of every ordered task pair. For each
task ``i``, start from :math:`g_i^{PC} = g_i`; visit the other tasks ``j`` in a random order; with
:math:`\phi_{ij} = \cos(g_i^{PC}, g_j)`, if :math:`\phi_{ij} < \hat\phi_{ij}` move
:math:`g_i^{PC}` towards the target similarity,

.. math::
    g_i^{PC} \leftarrow g_i^{PC} + \frac{\lVert g_i^{PC}\rVert\,\big(\hat\phi_{ij}\sqrt{1-\phi_{ij}^2}
        - \phi_{ij}\sqrt{1-\hat\phi_{ij}^2}\big)}{\lVert g_j\rVert\sqrt{1-\hat\phi_{ij}^2}}\; g_j ,

and in every case update :math:`\hat\phi_{ij} \leftarrow (1-\beta)\hat\phi_{ij} + \beta\phi_{ij}`.
The update is :math:`d = \sum_i g_i^{PC}`. With :math:`\hat\phi = 0` (the first step) the
correction is exactly PCGrad's projection. As for PCGrad, every :math:`g_i^{PC}` is a
combination of the original gradients, so everything runs on the Gram matrix (torchjd's
formulation) and ``task_weights`` are exact.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from mtlrepro.methods.aggregators.base import Aggregator
from mtlrepro.methods.aggregators.pcgrad import SeededTaskOrder, host_gram

__all__ = ["GradVac", "gradvac_weights"]


def gradvac_weights(G: torch.Tensor, phi_hat: torch.Tensor, beta: float, eps: float = 1e-8,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """GradVac's coefficients from the Gram matrix ``G`` (T x T, float64, CPU); updates the EMA
    targets ``phi_hat`` (T x T, float64, CPU) in place. For each ``i`` one
    ``torch.randperm(T - 1)`` orders the other tasks (torchjd's draw). ``eps`` is added to the two
    denominators (LibMTL's and torchjd's ``1e-8``)."""
    T = G.shape[0]
    C = torch.eye(T, dtype=G.dtype)
    for i in range(T):
        cG = C[i] @ G  # (g_i^PC . g_j)_j
        others = [j for j in range(T) if j != i]
        for k in torch.randperm(T - 1, generator=generator).tolist():
            j = others[k]
            norm_i = (cG @ C[i]).clamp_min(0.0).sqrt()
            norm_j = G[j, j].clamp_min(0.0).sqrt()
            phi = cG[j] / (norm_i * norm_j + eps)
            target = phi_hat[i, j]
            if phi < target:
                s_phi, s_target = (1 - phi ** 2).clamp_min(0).sqrt(), (1 - target ** 2).clamp_min(0).sqrt()
                w = norm_i * (target * s_phi - phi * s_target) / (norm_j * s_target + eps)
                C[i, j] += w
                cG = cG + w * G[j]
            phi_hat[i, j] = (1 - beta) * target + beta * phi
    return C.sum(dim=0)


class GradVac(SeededTaskOrder, Aggregator):
    r"""GradVac on the Jacobian w.r.t. the shared parameters (see the module docstring).

    Hyper-parameters (values and where they come from):

    * ``beta = 0.5`` -- LibMTL's default ``--GradVac_beta 0.5`` (CoNAL trains its baselines with
      LibMTL; torchjd's default too); the paper leaves it a hyper-parameter.
    * granularity ``whole_model`` (one :math:`\hat\phi` per task pair for the whole shared
      Jacobian) -- LibMTL's default ``--GradVac_group_type 0``; the per-layer variants are not
      implemented.
    * ``eps = 1e-8`` in the denominators -- LibMTL and torchjd.
    * ``seed`` -- the task orders (default: the run seed; see
      :class:`~mtlrepro.methods.aggregators.pcgrad.SeededTaskOrder`).
    * task-specific parameters receive their own task's gradient (``task_gradient_scale="own"``,
      LibMTL).

    State (in ``state_dict``): the EMA targets ``phi_hat`` (buffer) and the generator.
    Logs: ``task_weights``; ``phi_hat_mean``, the mean EMA target over task pairs.

    Checked against ``torchjd.aggregation.GradVac`` over several steps (same permutations) and
    hand cases in ``tests/methods/aggregators/test_gradvac.py``.

    Example::

        >>> import torch
        >>> J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
        >>> GradVac(2, seed=0).aggregate(J)   # first step: phi_hat = 0, i.e. PCGrad
        tensor([0.5000, 1.5000], dtype=torch.float64)
    """

    name: ClassVar[str] = "gradvac"
    task_gradient_scale: ClassVar[str] = "own"

    def __init__(self, n_tasks: int, beta: float = 0.5, eps: float = 1e-8, seed: int | None = None,
                 batched: bool = True, **kwargs: Any):
        super().__init__(n_tasks, batched=batched, **kwargs)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"gradvac: beta must be in [0, 1], got {beta}")
        if eps < 0:
            raise ValueError(f"gradvac: eps must be >= 0, got {eps}")
        self.beta = float(beta)
        self.eps = float(eps)
        self._init_generator(seed)
        self.register_buffer("phi_hat", torch.zeros(self.n_tasks, self.n_tasks, dtype=torch.float64))

    def coefficients(self, J: torch.Tensor, losses: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        phi_hat = self.phi_hat.cpu()
        c = gradvac_weights(host_gram(J), phi_hat, self.beta, self.eps, self.generator)
        self.phi_hat.copy_(phi_hat)
        T = self.n_tasks
        off = ~torch.eye(T, dtype=torch.bool)
        mean = phi_hat[off].mean() if T > 1 else torch.zeros((), dtype=torch.float64)
        return c.to(J.device), {"phi_hat_mean": mean.to(J.device)}

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, beta={self.beta}, eps={self.eps}, seed={self.seed}"
