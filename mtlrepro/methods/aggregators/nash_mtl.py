r"""Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022).

Update rule (the paper's Eq. 4 / Theorem 3.2): the Nash bargaining solution is
:math:`d = \sum_t \alpha_t g_t` with :math:`\alpha \in \mathbb{R}^T_{>0}` solving

.. math::  G\alpha = 1/\alpha \quad(\text{elementwise}),\qquad G = JJ^\top ,

i.e. :math:`\alpha_t\, (g_t\cdot d) = 1` for every task (so :math:`\lVert d\rVert^2 = T`). This is
the stationarity condition of the strictly convex
:math:`\psi(\alpha) = \tfrac12\alpha^\top G\alpha - \sum_t\log\alpha_t` on :math:`\alpha>0`, which
:func:`nash_weights` minimises by damped Newton steps (Hessian :math:`G + \operatorname{diag}(\alpha^{-2})`)
to :math:`\max_t|\alpha_t(G\alpha)_t - 1| < 10^{-10}` (for ``G`` plus its ridge; the residual of
the equation itself is then ~1e-7), in float64 on the host (~0.1-5 ms for T <= 8).

The official code (``AvivNavon/nash-mtl``, copied by LibMTL and torchjd) approximates the same
point by up to ``optim_niter = 20`` convex-concave iterations solved with cvxpy/ECOS, stopping when
:math:`\lVert G_n\alpha - 1/\alpha\rVert < 10^{-3}` (measured: its :math:`\alpha_t(G\alpha)_t` are 1 to
about 4 decimals). Its final step (kept here): the loss :math:`\sum_t\alpha_t L_t` is backpropagated
(task-specific parameters receive :math:`\alpha_t\nabla L_t`), then the *shared* gradient is
clipped to norm ``max_norm`` (``clip_grad_norm_`` on the shared parameters only).
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mtlrepro.methods.aggregators.base import Aggregator
from mtlrepro.methods.aggregators.pcgrad import host_gram
from mtlrepro.methods.gradients import write_update

__all__ = ["NashMTL", "nash_weights"]


def nash_weights(G: torch.Tensor | np.ndarray, ridge: float = 1e-8, tol: float = 1e-10,
                 max_iter: int = 100, start: np.ndarray | None = None) -> np.ndarray:
    r"""The :math:`\alpha > 0` with :math:`\alpha \odot (G\alpha) = 1` (see the module docstring).

    ``G`` is scaled to unit mean diagonal ``s`` (then :math:`\alpha = \beta/\sqrt{s}`) and a
    ridge ``ridge * I`` is added, so that a singular ``G`` with a non-negative null vector (e.g. a
    task with a zero gradient), where no solution exists, still gives a finite answer.
    All-zero gradients give ``alpha = 1``. ``start``: a warm start (e.g. the previous step's).
    """
    if isinstance(G, torch.Tensor):
        G = G.detach().to("cpu", torch.float64).numpy()
    G = np.asarray(G, dtype=np.float64)
    T = G.shape[0]
    s = np.trace(G) / T
    if not s > 0:
        return np.ones(T)
    Gn = (G + G.T) / (2 * s) + ridge * np.eye(T)
    beta = 1.0 / np.sqrt(np.diag(Gn)) if start is None else np.asarray(start, dtype=np.float64) * np.sqrt(s)

    def psi(x):
        return 0.5 * x @ Gn @ x - np.log(x).sum()

    for _ in range(max_iter):
        Gb = Gn @ beta
        if np.max(np.abs(beta * Gb - 1.0)) < tol:
            break
        grad = Gb - 1.0 / beta
        step_dir = -np.linalg.solve(Gn + np.diag(1.0 / beta ** 2), grad)
        neg = step_dir < 0
        step = min(1.0, 0.99 * float(np.min(-beta[neg] / step_dir[neg]))) if neg.any() else 1.0
        p0, slope = psi(beta), grad @ step_dir
        while step > 1e-16 and psi(beta + step * step_dir) > p0 + 0.25 * step * slope:
            step *= 0.5
        beta = beta + step * step_dir
    return beta / np.sqrt(s)


class NashMTL(Aggregator):
    r"""Nash-MTL on the Jacobian w.r.t. the shared parameters (see the module docstring).

    Hyper-parameters (values and where they come from):

    * ``max_norm = 1.0`` -- LibMTL's default ``--max_norm 1.0`` and the official code's; ``0``
      disables the clipping. Since :math:`\lVert d\rVert = \sqrt{T}`, ``max_norm=1`` always clips
      for ``T >= 2``: the shared update is :math:`d/\sqrt{T}`.
    * ``update_weights_every = 1`` -- LibMTL's / the official default: :math:`\alpha` is
      recomputed every step (otherwise the last one is reused in between).
    * ``optim_niter`` (20 in the references) has no counterpart: Newton's method is run to
      convergence (``tol = 1e-10``, at most 100 iterations, warm-started from the last
      :math:`\alpha`), i.e. the exact solution the references approximate.
    * ``ridge = 1e-8`` (times the mean squared gradient norm): a documented choice that keeps the
      solution finite when :math:`G` is singular; the references fall back to the previous
      :math:`\alpha` when ECOS fails there.

    ``task_weights`` are the shared update's coefficients (:math:`\alpha` times the clipping
    factor); ``alpha`` the unclipped ones the task-specific parameters are scaled by
    (``task_gradient_scale="weights"``, with :math:`\alpha`). Logs also ``clip_factor``.

    Checked against ``torchjd.aggregation.NashMTL`` (which clips :math:`\alpha` the same way) and
    the defining equation in ``tests/methods/aggregators/test_nash_mtl.py``.

    Example::

        >>> import torch
        >>> J = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
        >>> NashMTL(2, max_norm=0).aggregate(J).round(decimals=6)  # alpha = (1/2, 2): g_t . d = 1/alpha_t
        tensor([1., 1.], dtype=torch.float64)
    """

    name: ClassVar[str] = "nash_mtl"
    task_gradient_scale: ClassVar[str] = "weights"

    def __init__(self, n_tasks: int, max_norm: float = 1.0, update_weights_every: int = 1,
                 ridge: float = 1e-8, batched: bool = True, **kwargs: Any):
        super().__init__(n_tasks, batched=batched, **kwargs)
        if max_norm < 0:
            raise ValueError(f"nash_mtl: max_norm must be >= 0, got {max_norm}")
        if int(update_weights_every) < 1:
            raise ValueError(f"nash_mtl: update_weights_every must be >= 1, got {update_weights_every}")
        self.max_norm = float(max_norm)
        self.update_weights_every = int(update_weights_every)
        self.ridge = float(ridge)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("prev_alpha", torch.ones(self.n_tasks, dtype=torch.float64))

    def solve_alpha(self, J: torch.Tensor) -> torch.Tensor:
        """:math:`\\alpha` for this step (recomputed every ``update_weights_every`` calls)."""
        if int(self.step) % self.update_weights_every == 0:
            start = self.prev_alpha.cpu().numpy() if int(self.step) > 0 else None
            alpha = nash_weights(host_gram(J), ridge=self.ridge, start=start)
            self.prev_alpha.copy_(torch.from_numpy(alpha))
        self.step += 1
        return self.prev_alpha.to(J.device, copy=True)  # a copy: logs must not alias the state

    def coefficients(self, J: torch.Tensor, losses: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        alpha = self.solve_alpha(J)
        clip = torch.ones((), dtype=torch.float64, device=J.device)
        if self.max_norm > 0:
            norm = torch.linalg.vector_norm(alpha.to(J.dtype) @ J).to(torch.float64)
            clip = torch.where(norm > self.max_norm, self.max_norm / norm, clip)
        return alpha * clip, {"alpha": alpha, "clip_factor": clip}

    def backward(self, losses: torch.Tensor, model: nn.Module | None = None, z: torch.Tensor | None = None
                 ) -> dict[str, torch.Tensor]:
        """As the references: shared parameters get the clipped :math:`d`, the task-specific ones
        :math:`\\alpha_t \\nabla L_t` (unclipped)."""
        self._check_losses(losses)
        inputs = self.jacobian_inputs(model, z)
        J = self.jacobian(losses, inputs)
        c, extra = self.coefficients(J, losses.detach())
        alpha = extra["alpha"].to(losses.dtype)
        write_update(model, losses, inputs, c.to(J.dtype) @ J, task_scale=alpha)
        return {"task_weights": c.to(losses.dtype).detach(), "total_loss": (alpha * losses.detach()).sum(),
                **{k: v.to(losses.dtype) for k, v in extra.items()}}

    def extra_repr(self) -> str:
        return (f"n_tasks={self.n_tasks}, max_norm={self.max_norm}, "
                f"update_weights_every={self.update_weights_every}, ridge={self.ridge}")
