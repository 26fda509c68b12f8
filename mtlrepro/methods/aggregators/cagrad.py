r"""CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021).

Update rule (the paper's Algorithm 1 and Eq. 4): with :math:`g_0 = \frac1T\sum_t g_t` and
:math:`\phi = c^2\lVert g_0\rVert^2`, CAGrad looks for the direction that maximises the worst task
improvement within a ball around :math:`g_0`,

.. math::
    \max_d \min_t\, g_t\cdot d \quad\text{s.t.}\quad \lVert d - g_0\rVert \le c\,\lVert g_0\rVert ,

through its dual on the simplex,

.. math::
    w^\star = \arg\min_{w\in\Delta_T}\; g_w\cdot g_0 + \sqrt{\phi}\,\lVert g_w\rVert,\qquad
    g_w = \textstyle\sum_t w_t g_t,\qquad
    d = \Big(g_0 + \frac{\sqrt{\phi}}{\lVert g_w\rVert} g_w\Big) \Big/ \rho ,

with the rescaling :math:`\rho` of the official code (``rescale``: 0 -> 1, 1 -> :math:`1+c^2`,
2 -> :math:`1+c`). So :math:`d = c^\top J` with
:math:`c_t = (1/T + \sqrt{\phi}\, w^\star_t/\lVert g_w\rVert)/\rho`.

The dual is solved on the Gram matrix (scaled to unit mean diagonal: the solution is scale-free)
by a log-barrier interior-point method with equality-constrained Newton steps, in float64 on the
host (:func:`cagrad_dual`). The official code and LibMTL call ``scipy.optimize.minimize``
(SLSQP, default tolerances) and torchjd calls CLARABEL through cvxpy; the barrier method solves
the same convex problem to a duality gap of ``1e-12`` and needs neither scipy nor cvxpy.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from mtlrepro.methods.aggregators.base import Aggregator
from mtlrepro.methods.aggregators.pcgrad import host_gram

__all__ = ["CAGrad", "cagrad_dual", "cagrad_weights", "RESCALES"]

#: ``rescale`` option -> the divisor rho(c) of the official code (``Cranial-XIX/CAGrad``, ``cagrad``)
RESCALES = {0: lambda c: 1.0, 1: lambda c: 1.0 + c * c, 2: lambda c: 1.0 + c}


def cagrad_dual(G: np.ndarray, c: float, gap: float = 1e-12, max_newton: int = 200) -> np.ndarray:
    r"""``w*`` of :math:`\min_{w\in\Delta} w^\top G b + c\sqrt{b^\top G b}\,\sqrt{w^\top G w}` (``b = 1/T``).

    Barrier method: minimise :math:`t f(w) - \sum_i \log w_i` subject to :math:`1^\top w = 1` by
    Newton's method (KKT system with the equality constraint, backtracking line search that keeps
    ``w > 0``), for ``t = 1, 100, 10^4, ...`` until the duality-gap bound ``T / t < gap``.
    ``G`` is first scaled to unit mean diagonal. :math:`\sqrt{w^\top G w}` is smoothed by
    ``1e-24`` (the optimum is unchanged unless it is ``g_w = 0``).
    """
    G = np.asarray(G, dtype=np.float64)
    T = G.shape[0]
    scale = np.trace(G) / T
    if T == 1 or scale <= 0:
        return np.full(T, 1.0 / T)
    G = (G + G.T) / (2 * scale)
    b = np.full(T, 1.0 / T)
    a = G @ b
    ct = c * np.sqrt(max(b @ a, 0.0))
    delta = 1e-24

    def f(w):
        return a @ w + ct * np.sqrt(w @ G @ w + delta)

    w = b.copy()
    t = 1.0
    kkt = np.zeros((T + 1, T + 1))
    kkt[:T, T] = kkt[T, :T] = 1.0
    newton = 0
    while True:
        for _ in range(50):
            Gw = G @ w
            r = np.sqrt(w @ Gw + delta)
            grad = t * (a + ct * Gw / r) - 1.0 / w
            hess = t * ct * (G / r - np.outer(Gw, Gw) / r ** 3) + np.diag(1.0 / w ** 2)
            kkt[:T, :T] = hess
            try:
                dw = np.linalg.solve(kkt, np.concatenate([-grad, [0.0]]))[:T]
            except np.linalg.LinAlgError:
                dw = np.linalg.lstsq(kkt, np.concatenate([-grad, [0.0]]), rcond=None)[0][:T]
            dec = -grad @ dw  # Newton decrement squared
            newton += 1
            if dec / 2 < 1e-10 or newton > max_newton:
                break
            neg = dw < 0
            step = min(1.0, 0.99 * float(np.min(-w[neg] / dw[neg]))) if neg.any() else 1.0
            phi = t * f(w) - np.log(w).sum()
            while step > 1e-16:
                wn = w + step * dw
                if t * f(wn) - np.log(wn).sum() <= phi - 0.25 * step * dec:
                    break
                step *= 0.5
            w = w + step * dw
            w = np.maximum(w, 1e-300)
            w /= w.sum()
        if T / t < gap or newton > max_newton:
            return w
        t *= 100.0


def cagrad_weights(G: torch.Tensor | np.ndarray, c: float, rescale: int = 1, norm_eps: float = 1e-4
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(coefficients, w*)``: CAGrad's ``d = coefficients @ J`` from the Gram matrix ``G``.

    When :math:`\\lVert g_w\\rVert < \\text{norm\\_eps}\\cdot\\sqrt{\\operatorname{tr}G/T}` (the
    dual's optimum is ``g_w = 0``: no direction improves every task within the ball), the
    coefficients are zero, as in torchjd (the official code divides by ``||g_w|| + 1e-8``).
    """
    if isinstance(G, torch.Tensor):
        G = G.detach().to("cpu", torch.float64).numpy()
    G = (np.asarray(G, dtype=np.float64) + np.asarray(G, dtype=np.float64).T) / 2
    T = G.shape[0]
    w = cagrad_dual(G, c)
    b = np.full(T, 1.0 / T)
    g0_norm = np.sqrt(max(b @ G @ b, 0.0))
    gw_norm = np.sqrt(max(w @ G @ w, 0.0))
    rho = RESCALES[rescale](c)
    if gw_norm < norm_eps * np.sqrt(max(np.trace(G) / T, 0.0)) or gw_norm == 0:
        return np.zeros(T), w
    return (b + c * g0_norm / gw_norm * w) / rho, w


class CAGrad(Aggregator):
    r"""CAGrad on the Jacobian w.r.t. the shared parameters (see the module docstring).

    Hyper-parameters (values and where they come from):

    * ``c = 0.5`` -- LibMTL's default ``--calpha 0.5`` (CoNAL trains its baselines with LibMTL)
      and the official code's argparse default; the CAGrad paper's own NYUv2 / Cityscapes runs use
      0.4 (``nyuv2/run.sh``, ``cityscapes/run.sh``) and MT10 0.9 (``mtrl/mtrl_files/run.sh``):
      recipes that follow those set ``c`` explicitly.
    * ``rescale = 1`` (divide by :math:`1+c^2`) -- the official code's and LibMTL's default.
      torchjd's ``CAGrad`` does not rescale (``rescale=0``).
    * ``norm_eps = 1e-4`` -- below it (relative to the RMS gradient norm) :math:`g_w` counts as 0
      and the shared update is zero (torchjd's rule and default value; see :func:`cagrad_weights`).
    * task-specific parameters receive their own task's gradient (``task_gradient_scale="own"``),
      as in the official code and LibMTL.

    Logs: ``task_weights`` (the coefficients above) and ``w`` (the dual solution :math:`w^\star`).

    Checked against ``torchjd.aggregation.CAGrad`` (``rescale=0``; with ``rescale=1`` the same
    update divided by :math:`1+c^2`) and hand cases in ``tests/methods/aggregators/test_cagrad.py``.

    Example::

        >>> import torch
        >>> J = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> CAGrad(2, c=0.5, rescale=0).aggregate(J)    # symmetric: d = (1 + c) g0
        tensor([0.7500, 0.7500], dtype=torch.float64)
    """

    name: ClassVar[str] = "cagrad"
    task_gradient_scale: ClassVar[str] = "own"

    def __init__(self, n_tasks: int, c: float = 0.5, rescale: int = 1, norm_eps: float = 1e-4,
                 batched: bool = True, **kwargs: Any):
        super().__init__(n_tasks, batched=batched, **kwargs)
        if c < 0:
            raise ValueError(f"cagrad: c must be >= 0, got {c}")
        if rescale not in RESCALES:
            raise ValueError(f"cagrad: rescale must be one of {sorted(RESCALES)}, got {rescale!r}")
        self.c = float(c)
        self.rescale = int(rescale)
        self.norm_eps = float(norm_eps)

    def coefficients(self, J: torch.Tensor, losses: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        coeffs, w = cagrad_weights(host_gram(J), self.c, self.rescale, self.norm_eps)
        dev = J.device
        return torch.from_numpy(coeffs).to(dev), {"w": torch.from_numpy(w).to(dev)}

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, c={self.c}, rescale={self.rescale}, norm_eps={self.norm_eps}"
