r"""MGDA on the shared parameters (Désidéri 2012; Sener & Koltun, "Multi-Task Learning as
Multi-Objective Optimization", NeurIPS 2018), as LibMTL runs it for CoNAL's "MGDA" rows.

Not MGDA-UB (:mod:`~mtlrepro.methods.aggregators.mgda_ub`, registered as ``mgda_ub``): that one
takes the gradients w.r.t. the shared *representation* and backpropagates :math:`\sum_t\alpha_t L_t`;
this one takes the full Jacobian w.r.t. every shared parameter (``needs_shared_jacobian``).

Update rule: with (optionally normalised) task gradients :math:`\hat g_t = g_t / n_t`,

.. math::
    \alpha = \arg\min_{\alpha\in\Delta_T} \Big\lVert \sum_t \alpha_t \hat g_t \Big\rVert^2,
    \qquad d = \sum_t \alpha_t \hat g_t = \sum_t \frac{\alpha_t}{n_t} g_t ,

the minimum-norm point of the convex hull of the :math:`\hat g_t`. When it is not zero it has
:math:`\hat g_t\cdot d \ge \lVert d\rVert^2 > 0` for every ``t`` (a common descent direction);
when it is zero the point is Pareto-stationary. Solved on the Gram matrix
:math:`\hat G_{ij} = G_{ij}/(n_i n_j)` by the shared
:func:`~mtlrepro.methods.aggregators.min_norm.min_norm_solve_numpy`.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from mtlrepro.methods.aggregators.base import Aggregator
from mtlrepro.methods.aggregators.mgda_ub import NORMALIZATIONS, gradient_normalizers
from mtlrepro.methods.aggregators.min_norm import min_norm_solve_numpy
from mtlrepro.methods.aggregators.pcgrad import host_gram

__all__ = ["MGDA"]


class MGDA(Aggregator):
    r"""MGDA with the Jacobian w.r.t. all shared parameters (see the module docstring).

    Hyper-parameters (values and where they come from):

    * ``normalization`` :math:`n_t` = ``"none"`` -- LibMTL's default ``--mgda_gn none``
      (``LibMTL/config.py``); CoNAL trains its baselines with LibMTL. ``"l2"``, ``"loss"``,
      ``"loss+"`` as Sener & Koltun's ``gradient_normalizers``. As in LibMTL the shared update is
      built from the *normalised* gradients, :math:`d=\sum_t\alpha_t\hat g_t` (so
      ``task_weights`` = :math:`\alpha_t/n_t`); with ``"none"`` this is plain MGDA.
    * ``solver="pgd"``, ``max_iter=250``, ``stop_crit=1e-5`` -- LibMTL's ``_find_min_norm_element``
      (= Sener & Koltun's ``find_min_norm_element``: best pair, then projected-gradient steps with
      exact line search). ``"fw"`` gives the paper's Frank–Wolfe (Algorithm 2), which torchjd uses.
    * task-specific parameters receive their own task's gradient (``task_gradient_scale="own"``),
      as in LibMTL (Sener & Koltun's script instead weights the heads by :math:`\alpha_t`; that is
      ``mgda_ub``'s choice).

    Logs: ``alpha``, ``min_norm_sq`` (:math:`\lVert d\rVert^2` of the normalised problem),
    ``normalizers``, ``solver_iters``.

    Checked against ``torchjd.aggregation.MGDA`` (Frank–Wolfe run to convergence) and hand cases
    (vertex solution, two-task closed form) in ``tests/methods/aggregators/test_mgda.py``.

    Example::

        >>> import torch
        >>> J = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> MGDA(2).aggregate(J)            # the midpoint of the segment (1,0)-(0,1)
        tensor([0.5000, 0.5000], dtype=torch.float64)
    """

    name: ClassVar[str] = "mgda"
    task_gradient_scale: ClassVar[str] = "own"

    def __init__(self, n_tasks: int, normalization: str = "none", solver: str = "pgd",
                 max_iter: int = 250, stop_crit: float = 1e-5, batched: bool = True, **kwargs: Any):
        super().__init__(n_tasks, batched=batched, **kwargs)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"mgda: normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        if solver not in ("fw", "pgd"):
            raise ValueError(f"mgda: solver must be 'fw' or 'pgd', got {solver!r}")
        self.normalization = normalization
        self.solver = solver
        self.max_iter = int(max_iter)
        self.stop_crit = float(stop_crit)

    def coefficients(self, J: torch.Tensor, losses: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if losses is None and self.normalization in ("loss", "loss+"):
            raise ValueError(f"mgda: normalization {self.normalization!r} needs the losses")
        G = host_gram(J)
        gn = gradient_normalizers(J, losses, self.normalization).to("cpu", torch.float64)
        Gn = G / (gn[:, None] * gn[None, :])
        alpha, cost, iters = min_norm_solve_numpy(Gn, solver=self.solver, max_iter=self.max_iter,
                                                  stop_crit=self.stop_crit)
        alpha = torch.from_numpy(alpha)
        dev = J.device
        return (alpha / gn).to(dev), {"alpha": alpha.to(dev), "min_norm_sq": torch.tensor(cost, device=dev),
                                      "normalizers": gn.to(dev), "solver_iters": torch.tensor(iters, device=dev)}

    def extra_repr(self) -> str:
        return (f"n_tasks={self.n_tasks}, normalization={self.normalization!r}, solver={self.solver!r}, "
                f"max_iter={self.max_iter}, stop_crit={self.stop_crit}")
