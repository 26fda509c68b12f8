"""MGDA on the shared parameters: against torchjd and an exact QP, hand cases, backward."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlrepro.methods import WEIGHTINGS, build_weighting
from mtlrepro.methods.aggregators.mgda import MGDA
from mtlrepro.methods.aggregators.mgda_ub import MGDAUB

from ..toy import double_pair, reference_jacobian, shared_grad, task_losses

D = torch.float64


def _random_jacobian(T: int, n: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, n, generator=g, dtype=D) * torch.rand(T, 1, generator=g, dtype=D).add(0.1)


def _exact_min_norm(J: torch.Tensor) -> np.ndarray:
    cp = pytest.importorskip("cvxpy", reason="cvxpy (via torchjd[cagrad]) is a test dependency")
    a = cp.Variable(J.shape[0])
    cp.Problem(cp.Minimize(cp.sum_squares(J.numpy().T @ a)), [a >= 0, cp.sum(a) == 1]).solve(solver=cp.CLARABEL)
    return J.numpy().T @ a.value


def test_mgda_is_registered_apart_from_mgda_ub():
    assert WEIGHTINGS.get("mgda") is MGDA and WEIGHTINGS.get("mgda_ub") is MGDAUB
    assert MGDA.needs_shared_jacobian and not MGDA.needs_representation
    assert MGDAUB.needs_representation and not MGDAUB.needs_shared_jacobian


@pytest.mark.parametrize("seed", range(4))
def test_mgda_two_tasks_equals_torchjd_and_the_closed_form(seed):
    tjd = pytest.importorskip("torchjd.aggregation", reason="torchjd is a test dependency")
    J = _random_jacobian(2, seed=seed)
    g1, g2 = J
    gamma = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))  # argmin |gamma g1 + (1-gamma) g2|
    gamma = min(max(gamma, 0.0), 1.0)
    ours = MGDA(2).aggregate(J)
    torch.testing.assert_close(ours, gamma * g1 + (1 - gamma) * g2, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ours, tjd.MGDA(epsilon=1e-12, max_iters=1000)(J), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("T,seed", [(3, 0), (3, 1), (4, 2), (5, 3)])
def test_mgda_matches_torchjd(T, seed):
    """torchjd's MGDA is Frank-Wolfe from the centre, stopping when the step gamma < epsilon; ours
    LibMTL's projected-gradient solver. With 3 tasks Frank-Wolfe converges within 5000 steps and
    the two directions agree to 2e-5; with more tasks it is still 1e-3 off in min-norm after 5000
    steps, and ours must then be at least as small."""
    tjd = pytest.importorskip("torchjd.aggregation", reason="torchjd is a test dependency")
    J = _random_jacobian(T, seed=seed)
    ours = MGDA(T).aggregate(J)
    ref = tjd.MGDA(epsilon=1e-12, max_iters=5000)(J)
    if T == 3:
        assert float((ours - ref).norm() / ref.norm()) < 2e-5
    assert float(ours @ ours) <= float(ref @ ref) * (1 + 1e-9)
    assert float(ours @ ours) == pytest.approx(float(ref @ ref), rel=2e-3)


@pytest.mark.parametrize("T", [3, 5, 8])
def test_mgda_reaches_the_exact_min_norm_point(T):
    for seed in range(3):
        J = _random_jacobian(T, seed=seed)
        exact = _exact_min_norm(J)
        d = MGDA(T).aggregate(J).numpy()
        assert d @ d == pytest.approx(exact @ exact, rel=1e-4)
        # optimality: every task gradient has g_t . d >= |d|^2 (> 0: a common descent direction)
        assert (J.numpy() @ d).min() >= 0.99 * (d @ d) > 0


def test_mgda_vertex_solution():
    # g1 . g_j >= |g1|^2 for all j: the min-norm point of the hull is the vertex g1
    J = torch.tensor([[1.0, 0.0], [2.0, 1.0], [1.5, -0.5]], dtype=D)
    c, logs = MGDA(3).coefficients(J)
    torch.testing.assert_close(c, torch.tensor([1.0, 0.0, 0.0], dtype=D))
    assert float(logs["min_norm_sq"]) == pytest.approx(1.0)


def test_mgda_aligned_and_conflicting_by_hand():
    # orthogonal, equal norms: the centre of the simplex
    c, _ = MGDA(3).coefficients(torch.eye(3, dtype=D) * 2)
    torch.testing.assert_close(c, torch.full((3,), 1 / 3, dtype=D), atol=1e-6, rtol=0)
    # exactly opposed: 0 is in the hull, the update vanishes (Pareto-stationary)
    J = torch.tensor([[1.0, 2.0], [-2.0, -4.0]], dtype=D)
    c, _ = MGDA(2).coefficients(J)
    torch.testing.assert_close(c, torch.tensor([2 / 3, 1 / 3], dtype=D))
    torch.testing.assert_close(c @ J, torch.zeros(2, dtype=D), atol=1e-12, rtol=0)


def test_mgda_l2_normalization_combines_the_normalised_gradients():
    J = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=D)
    c, logs = MGDA(2, normalization="l2").coefficients(J)
    # normalised rows (1,0), (0,1): alpha = (1/2, 1/2), update = sum alpha_t g_t / |g_t| = (1/2, 1/2)
    torch.testing.assert_close(logs["alpha"], torch.tensor([0.5, 0.5], dtype=D))
    torch.testing.assert_close(c @ J, torch.tensor([0.5, 0.5], dtype=D))
    with pytest.raises(ValueError, match="needs the losses"):
        MGDA(2, normalization="loss").coefficients(J)


def test_mgda_backward_shared_gets_min_norm_point_heads_own_gradient():
    T = 3
    model, ref, x, y = double_pair(T)
    logs = build_weighting("mgda", T).backward(task_losses(model, x, y)[0], model)
    ref_losses, _ = task_losses(ref, x, y)
    J = reference_jacobian(ref, ref_losses)
    exact = torch.from_numpy(_exact_min_norm(J))
    got = shared_grad(model)
    torch.testing.assert_close(got, logs["task_weights"] @ J, atol=1e-12, rtol=1e-10)
    assert float(got @ got) == pytest.approx(float(exact @ exact), rel=1e-4)
    heads = torch.autograd.grad(ref_losses.sum(), [p for h in ref.heads for p in h.parameters()])
    for p, g in zip([p for h in model.heads for p in h.parameters()], heads):
        torch.testing.assert_close(p.grad, g, atol=1e-12, rtol=1e-10)
