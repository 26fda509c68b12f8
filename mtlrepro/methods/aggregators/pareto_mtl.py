r"""Pareto-MTL (Lin et al., "Pareto Multi-Task Learning", NeurIPS 2019).

Pareto-MTL splits the loss space into ``K`` cones around unit preference vectors
:math:`u_1,\dots,u_K` and trains one model per cone. The run for preference ``k`` solves

.. math::  \min_\theta L(\theta)\quad\text{s.t.}\quad
           \mathcal G_j(\theta) = (u_j - u_k)^\top \bar L(\theta) \le 0,\ \ j \ne k ,

(:math:`\bar L = L/\lVert L\rVert`: the reference normalises the loss vector), i.e. the loss
vector must stay closer in angle to :math:`u_k` than to any other :math:`u_j`.
:math:`\nabla\mathcal G_j = \sum_t (u_j-u_k)_t\, g_t` (the reference treats
:math:`\lVert L\rVert` as a constant). With the active set :math:`I = \{j : \mathcal G_j > 0\}`
(the reference's :math:`\epsilon = 0`):

* **initial phase** (the paper's Algorithm 1, lines 1–4; the reference's
  ``get_d_paretomtl_init``): while some constraint is active, descend on the active constraints
  only: :math:`d = \sum_{j\in I}\beta_j\nabla\mathcal G_j` with :math:`\beta` the min-norm
  point of :math:`\{\nabla\mathcal G_j\}_{j\in I}`; once no constraint is active the run is
  feasible and this phase ends for good (the reference also ends it after 2 epochs);
* **main phase** (Algorithm 1, lines 5–8; ``get_d_paretomtl``): the min-norm point
  :math:`(\lambda,\beta)` of :math:`\{g_t\}_t \cup \{\nabla\mathcal G_j\}_{j\in I}` (Eq. 14) gives
  coefficients :math:`c_t = \lambda_t + \sum_{j\in I}\beta_j (u_j-u_k)_t`, rescaled to
  :math:`\sum_t|c_t| = T` (the reference's ``normalize_coeff``).

The update is :math:`c^\top J`; task-specific parameters receive :math:`c_t\nabla L_t` (the
reference backpropagates :math:`\sum_t c_t L_t`).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from mtlrepro.methods.aggregators.base import Aggregator
from mtlrepro.methods.aggregators.min_norm import min_norm_solve_numpy
from mtlrepro.methods.aggregators.pcgrad import host_gram

__all__ = ["ParetoMTL", "default_preferences", "pareto_mtl_weights"]


def default_preferences(n_tasks: int) -> np.ndarray:
    r"""The preference vectors used when a recipe gives none (a documented choice), unit rows.

    * ``T = 2``: the reference's ``circle_points([1], [5])`` -- 5 directions evenly spaced in
      angle over :math:`[0, \pi/2]` (its MultiMNIST runs use ``npref = 5``).
    * ``T >= 3``: the ``T`` axes :math:`e_t`, the :math:`\binom T2` pair midpoints
      :math:`(e_s+e_t)/\sqrt2` and the centre :math:`\mathbf 1/\sqrt T`, the last row.

    Both sets contain the centre direction (equal trade-off), the default ``preference``.
    """
    if n_tasks < 2:
        return np.ones((1, max(n_tasks, 1)))
    if n_tasks == 2:
        t = np.linspace(0, 0.5 * np.pi, 5)
        return np.c_[np.cos(t), np.sin(t)]
    eye = np.eye(n_tasks)
    mids = [(eye[s] + eye[t]) / math.sqrt(2) for s in range(n_tasks) for t in range(s + 1, n_tasks)]
    return np.vstack([eye, *mids, np.ones(n_tasks) / math.sqrt(n_tasks)])


def _centre_index(prefs: np.ndarray) -> int:
    centre = np.ones(prefs.shape[1]) / math.sqrt(prefs.shape[1])
    return int(np.argmax(prefs @ centre))


def pareto_mtl_weights(G: np.ndarray, losses: np.ndarray, prefs: np.ndarray, k: int, initial: bool,
                       solver: str = "pgd") -> tuple[np.ndarray, np.ndarray]:
    """``(c, active)``: the coefficients of one Pareto-MTL step (see the module docstring) from the
    Gram matrix ``G`` of the task gradients, the losses, the preference rows and the index ``k``.

    ``initial=True``: the initial-phase direction, or ``c = 0`` when no constraint is active
    (feasible: the caller switches phase). ``active``: the boolean mask of active constraints
    over the rows of ``prefs`` (``k`` itself never is).
    """
    T = G.shape[0]
    W = prefs - prefs[k]                                   # rows u_j - u_k (row k is zero)
    norm = np.linalg.norm(losses)
    gx = W @ (losses / norm) if norm > 0 else np.zeros(len(W))
    active = gx > 0
    A = W[active]                                          # the active constraints' coefficients
    if initial:
        if not active.any():
            return np.zeros(T), active
        sol = np.ones(1) if len(A) == 1 else min_norm_solve_numpy(A @ G @ A.T, solver=solver)[0]
        return A.T @ sol, active
    V = np.vstack([np.eye(T), A])                          # rows: the tasks, then the constraints
    sol = min_norm_solve_numpy(V @ G @ V.T, solver=solver)[0]
    c = V.T @ sol
    total = np.abs(c).sum()
    return (c * T / total if total > 0 else c), active


class ParetoMTL(Aggregator):
    r"""Pareto-MTL for one preference vector (see the module docstring).

    Hyper-parameters (values and where they come from):

    * ``preferences`` -- the unit preference vectors (rows; normalised on input). Default
      :func:`default_preferences` (for two tasks the reference's 5 evenly spaced ones; for more
      tasks a documented choice). CoNAL does not say which it used.
    * ``preference`` -- the index ``k`` of this run's vector; default the centre direction
      :math:`\mathbf 1/\sqrt T` (a table row reports one model; the equal trade-off is our
      documented choice).
    * ``init_epochs = 2`` -- the initial (feasibility) phase lasts at most 2 epochs (reference
      ``train.py``: ``for t in range(2)``); ``0`` skips it.
    * ``solver = "pgd"`` -- the reference's ``MinNormSolver.find_min_norm_element`` (Sener &
      Koltun's projected-gradient solver, 250 iterations, stop ``1e-5``).
    * Jacobian w.r.t. the shared parameters (the contract of every aggregator here); the
      reference takes the gradients of *all* parameters, heads included, for its min-norm problem.
    * ``task_gradient_scale = "weights"``: the heads receive :math:`c_t\nabla L_t`, as the
      reference's backward of :math:`\sum_t c_t L_t`. In the step that finds the run feasible the
      main-phase update is applied (the reference skips that batch).

    State (in ``state_dict``): ``initial_phase`` (buffer). Logs: ``task_weights``,
    ``active_constraints`` (count), ``initial_phase`` (1 while in it).

    Checked against hand cases of the equations (active / inactive constraints, both phases) in
    ``tests/methods/aggregators/test_pareto_mtl.py``; torchjd has no Pareto-MTL.

    Example::

        >>> import torch
        >>> J = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> agg = ParetoMTL(2, init_epochs=0)          # centre preference (1, 1)/sqrt(2)
        >>> agg.aggregate(J, torch.tensor([1.0, 1.0], dtype=torch.float64))  # feasible: MGDA, sum|c| = 2
        tensor([1., 1.], dtype=torch.float64)
    """

    name: ClassVar[str] = "pareto_mtl"
    task_gradient_scale: ClassVar[str] = "weights"

    def __init__(self, n_tasks: int, preferences: Sequence[Sequence[float]] | None = None,
                 preference: int | None = None, init_epochs: int = 2, solver: str = "pgd",
                 batched: bool = True, **kwargs: Any):
        super().__init__(n_tasks, batched=batched, **kwargs)
        prefs = default_preferences(self.n_tasks) if preferences is None else np.asarray(preferences, dtype=np.float64)
        if prefs.ndim != 2 or prefs.shape[1] != self.n_tasks or (prefs < 0).any():
            raise ValueError(f"pareto_mtl: preferences must be non-negative rows of length {self.n_tasks}")
        norms = np.linalg.norm(prefs, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError("pareto_mtl: a preference vector is zero")
        self.preferences = prefs / norms
        self.preference = _centre_index(self.preferences) if preference is None else int(preference)
        if not 0 <= self.preference < len(self.preferences):
            raise ValueError(f"pareto_mtl: preference must index one of {len(self.preferences)} vectors")
        if solver not in ("fw", "pgd"):
            raise ValueError(f"pareto_mtl: solver must be 'fw' or 'pgd', got {solver!r}")
        self.solver = solver
        self.init_epochs = int(init_epochs)
        self.register_buffer("initial_phase", torch.tensor(self.init_epochs > 0))

    def on_epoch_start(self, epoch: int) -> None:
        if epoch >= self.init_epochs:
            self.initial_phase.fill_(False)

    def coefficients(self, J: torch.Tensor, losses: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if losses is None:
            raise ValueError("pareto_mtl needs the losses (its constraints are on the loss vector)")
        G = host_gram(J).numpy()
        L = losses.detach().to("cpu", torch.float64).numpy()
        initial = bool(self.initial_phase)
        c, active = pareto_mtl_weights(G, L, self.preferences, self.preference, initial, self.solver)
        if initial and not active.any():                   # feasible: the main phase from now on
            self.initial_phase.fill_(False)
            c, active = pareto_mtl_weights(G, L, self.preferences, self.preference, False, self.solver)
        dev = J.device
        return torch.from_numpy(c).to(dev), {
            "active_constraints": torch.tensor(float(active.sum()), device=dev),
            "initial_phase": torch.tensor(float(initial), device=dev)}

    def extra_repr(self) -> str:
        u = self.preferences[self.preference].round(4).tolist()
        return (f"n_tasks={self.n_tasks}, preference={self.preference} {u}, "
                f"n_preferences={len(self.preferences)}, init_epochs={self.init_epochs}")
