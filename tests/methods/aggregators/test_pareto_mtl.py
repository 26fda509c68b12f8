"""Pareto-MTL (Lin et al. 2019): preferences, both phases by hand, the direction's properties."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from mtlrepro.methods import build_weighting
from mtlrepro.methods.aggregators.pareto_mtl import ParetoMTL, default_preferences, pareto_mtl_weights

from ..toy import double_pair, task_losses

D = torch.float64
C225, S225 = math.cos(math.pi / 8), math.sin(math.pi / 8)
R = 1 / math.sqrt(2)


def _exact_min_norm(V: np.ndarray) -> np.ndarray:
    cp = pytest.importorskip("cvxpy", reason="cvxpy (via torchjd[cagrad]) is a test dependency")
    a = cp.Variable(V.shape[0])
    cp.Problem(cp.Minimize(cp.sum_squares(V.T @ a)), [a >= 0, cp.sum(a) == 1]).solve(solver=cp.CLARABEL)
    return V.T @ a.value


def test_default_preferences():
    p2 = default_preferences(2)  # the reference's circle_points([1], [5])
    np.testing.assert_allclose(p2, [[1, 0], [C225, S225], [R, R], [S225, C225], [0, 1]], atol=1e-15)
    p3 = default_preferences(3)
    assert p3.shape == (7, 3)
    np.testing.assert_allclose(np.linalg.norm(p3, axis=1), 1.0)
    np.testing.assert_allclose(p3[-1], np.ones(3) / math.sqrt(3))
    assert ParetoMTL(2).preference == 2 and ParetoMTL(3).preference == 6  # the centre by default


def test_feasible_main_phase_is_normalised_mgda():
    J = np.array([[1.0, 0.0], [0.0, 1.0]])
    c, active = pareto_mtl_weights(J @ J.T, np.array([1.0, 1.0]), default_preferences(2), 2, initial=False)
    assert not active.any()
    np.testing.assert_allclose(c, [1.0, 1.0], atol=1e-6)  # min-norm (1/2, 1/2), scaled to sum |c| = 2


def test_active_constraints_main_phase_by_hand():
    """Losses (1, 0.2) lie at 11.3 degrees: closer to u_0 (0 deg) and u_1 (22.5 deg) than to the
    run's u_2 (45 deg), so G_0, G_1 > 0 are active; the direction is the min-norm point of
    {g_1, g_2, grad G_0, grad G_1}, grad G_j = sum_t (u_j - u_2)_t g_t."""
    J = np.array([[1.0, 0.3], [-0.5, 1.0]])
    L = np.array([1.0, 0.2])
    prefs = default_preferences(2)
    c, active = pareto_mtl_weights(J @ J.T, L, prefs, 2, initial=False)
    np.testing.assert_array_equal(active, [True, True, False, False, False])
    W = prefs[:2] - prefs[2]
    V = np.vstack([J, W @ J])
    d_exact = _exact_min_norm(V)
    d = c @ J
    assert np.abs(c).sum() == pytest.approx(2.0)
    np.testing.assert_allclose(d / np.linalg.norm(d), d_exact / np.linalg.norm(d_exact), atol=1e-4)
    # a descent direction for both losses and for both active constraints
    assert (V @ d > 0).all()


def test_initial_phase_by_hand():
    prefs = default_preferences(2)
    J = np.array([[1.0, 0.3], [-0.5, 1.0]])
    # losses at 30 degrees: only u_1 (22.5 deg) is closer than u_2 (45 deg) -> c = u_1 - u_2, unscaled
    L = np.array([math.cos(math.pi / 6), math.sin(math.pi / 6)]) * 3
    c, active = pareto_mtl_weights(J @ J.T, L, prefs, 2, initial=True)
    np.testing.assert_array_equal(active, [False, True, False, False, False])
    np.testing.assert_allclose(c, prefs[1] - prefs[2], atol=1e-15)
    # losses at 10 degrees: G_0 and G_1 active; the min-norm point of their two gradients
    L = np.array([math.cos(math.pi / 18), math.sin(math.pi / 18)])
    c, active = pareto_mtl_weights(J @ J.T, L, prefs, 2, initial=True)
    np.testing.assert_array_equal(active, [True, True, False, False, False])
    W = prefs[:2] - prefs[2]
    np.testing.assert_allclose(c @ J, _exact_min_norm(W @ J), atol=1e-6)


def test_phases_switch_once_feasible_and_after_init_epochs():
    J = torch.tensor([[1.0, 0.3], [-0.5, 1.0]], dtype=D)
    agg = ParetoMTL(2)
    assert bool(agg.initial_phase)
    _, logs = agg.coefficients(J, torch.tensor([1.0, 0.2], dtype=D))    # infeasible: stays initial
    assert bool(agg.initial_phase) and float(logs["active_constraints"]) == 2
    c, logs = agg.coefficients(J, torch.tensor([1.0, 1.0], dtype=D))    # feasible: main phase now
    assert not bool(agg.initial_phase) and float(logs["initial_phase"]) == 1.0
    assert float(c.abs().sum()) == pytest.approx(2.0)
    b = ParetoMTL(2)
    b.load_state_dict(copy.deepcopy(agg.state_dict()))
    assert not bool(b.initial_phase)
    late = ParetoMTL(2, init_epochs=2)
    late.on_epoch_start(1)
    assert bool(late.initial_phase)
    late.on_epoch_start(2)
    assert not bool(late.initial_phase)


def test_pareto_mtl_backward_heads_get_weighted_gradient():
    T = 3
    model, ref, x, y = double_pair(T)
    logs = build_weighting("pareto_mtl", T, init_epochs=0).backward(task_losses(model, x, y)[0], model)
    c = logs["task_weights"]
    ref_losses, _ = task_losses(ref, x, y)
    shared = torch.autograd.grad((c * ref_losses).sum(), ref.shared_parameters(), retain_graph=True)
    heads = torch.autograd.grad((c * ref_losses).sum(), [p for h in ref.heads for p in h.parameters()])
    for p, g in zip([*model.shared_parameters(), *[p for h in model.heads for p in h.parameters()]],
                    [*shared, *heads]):
        torch.testing.assert_close(p.grad, g, atol=1e-12, rtol=1e-10)
