"""CAGrad (Liu et al. 2021): against torchjd, the dual's optimality, hand cases, backward."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mtlrepro.methods import build_weighting
from mtlrepro.methods.aggregators.cagrad import CAGrad, cagrad_dual

from ..toy import double_pair, reference_jacobian, shared_grad, task_losses

D = torch.float64


def _random_jacobian(T: int, n: int = 30, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, n, generator=g, dtype=D) * torch.rand(T, 1, generator=g, dtype=D).add(0.1) * 3


def _dual_objective(G: np.ndarray, w: np.ndarray, c: float) -> float:
    b = np.full(len(G), 1 / len(G))
    return float(w @ G @ b + c * np.sqrt(b @ G @ b) * np.sqrt(max(w @ G @ w, 0.0)))


@pytest.mark.parametrize("T", [2, 3, 5, 8, 40])
@pytest.mark.parametrize("c", [0.5, 0.4, 0.9])
def test_cagrad_matches_torchjd(T, c):
    """torchjd solves the dual with CLARABEL (cvxpy) and does not rescale (our rescale=0). Its
    interior-point tolerance leaves ~1e-4 relative differences in the update; our barrier method's
    dual objective is never worse than CLARABEL's."""
    tjd = pytest.importorskip("torchjd.aggregation", reason="torchjd[cagrad] is a test dependency")
    for seed in range(3):
        J = _random_jacobian(T, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = tjd.CAGrad(c=c)(J)
        ours = CAGrad(T, c=c, rescale=0).aggregate(J)
        assert float((ours - ref).norm() / ref.norm()) < 1e-3
        G = (J @ J.T).numpy()
        w_ref = tjd.CAGradWeighting(c=c)(J @ J.T).numpy() - 1 / T
        w_ref = w_ref / w_ref.sum()
        assert _dual_objective(G, cagrad_dual(G, c), c) <= _dual_objective(G, w_ref, c) + 1e-9 * abs(np.trace(G))


@pytest.mark.parametrize("rescale,rho", [(0, 1.0), (1, 1.25), (2, 1.5)])
def test_cagrad_rescale_divides_the_update(rescale, rho):
    J = _random_jacobian(4, seed=1)
    torch.testing.assert_close(CAGrad(4, c=0.5, rescale=rescale).aggregate(J) * rho,
                               CAGrad(4, c=0.5, rescale=0).aggregate(J), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("T", [2, 3, 5, 8])
def test_cagrad_update_solves_the_primal(T):
    """d* = argmax_d min_t g_t.d s.t. |d - g0| <= c|g0|: on the ball's boundary, the worst-task
    improvement at least that of g0 and of random points of the ball, equal on the tasks of w*."""
    c = 0.5
    for seed in range(3):
        J = _random_jacobian(T, seed=seed)
        g0 = J.mean(0)
        coeffs, logs = CAGrad(T, c=c, rescale=0).coefficients(J)
        d = coeffs @ J
        assert float((d - g0).norm()) == pytest.approx(c * float(g0.norm()), rel=1e-9)
        worst = float((J @ d).min())
        assert worst >= float((J @ g0).min()) - 1e-12
        gen = torch.Generator().manual_seed(seed)
        u = torch.randn(2000, J.shape[1], generator=gen, dtype=D)
        ball = g0 + c * g0.norm() * u / u.norm(dim=1, keepdim=True) * torch.rand(2000, 1, generator=gen, dtype=D)
        assert worst >= float((ball @ J.T).min(dim=1).values.max()) - 1e-9
        support = logs["w"] > 1e-6
        inner = (J @ d)[support]
        assert float(inner.max() - inner.min()) < 1e-5 * float(J.norm() ** 2)


def test_cagrad_by_hand():
    # c = 0: the mean gradient
    J = _random_jacobian(3, seed=4)
    torch.testing.assert_close(CAGrad(3, c=0.0, rescale=0).aggregate(J), J.mean(0), atol=1e-12, rtol=1e-12)
    # aligned, symmetric: d = (1 + c) g0
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D)
    torch.testing.assert_close(CAGrad(2, c=0.5, rescale=0).aggregate(J), torch.tensor([0.75, 0.75], dtype=D),
                               atol=1e-8, rtol=0)
    # conflicting (g, -2g): the worst task is task 1 along the whole ball, the dual optimum is the
    # vertex w = e_1 and d = g0 + c|g0| g/|g| = -g/2 + g/4 = -g/4
    g = torch.tensor([1.0, 2.0], dtype=D)
    coeffs, logs = CAGrad(2, c=0.5, rescale=0).coefficients(torch.stack([g, -2 * g]))
    torch.testing.assert_close(logs["w"], torch.tensor([1.0, 0.0], dtype=D), atol=1e-9, rtol=0)
    torch.testing.assert_close(coeffs, torch.tensor([0.75, 0.5], dtype=D), atol=1e-8, rtol=0)
    # one task: (1 + c) g / (1 + c^2)
    torch.testing.assert_close(CAGrad(1, c=0.5).aggregate(g[None]), g * 1.5 / 1.25)


def test_cagrad_backward_heads_get_own_gradient():
    T = 3
    model, ref, x, y = double_pair(T)
    logs = build_weighting("cagrad", T).backward(task_losses(model, x, y)[0], model)
    ref_losses, _ = task_losses(ref, x, y)
    J = reference_jacobian(ref, ref_losses)
    expected = CAGrad(T).aggregate(J)  # default c = 0.5, rescale = 1
    got = shared_grad(model)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(got, logs["task_weights"] @ J, atol=1e-12, rtol=1e-10)
    heads = torch.autograd.grad(ref_losses.sum(), [p for h in ref.heads for p in h.parameters()])
    for p, g in zip([p for h in model.heads for p in h.parameters()], heads):
        torch.testing.assert_close(p.grad, g, atol=1e-12, rtol=1e-10)
