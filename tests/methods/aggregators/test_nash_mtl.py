"""Nash-MTL (Navon et al. 2022): the bargaining equation, scale invariance, torchjd, backward."""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch

from mtlrepro.methods import build_weighting
from mtlrepro.methods.aggregators.nash_mtl import NashMTL, nash_weights

from ..toy import double_pair, reference_jacobian, shared_grad, task_losses

D = torch.float64


def _random_jacobian(T: int, n: int = 30, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, n, generator=g, dtype=D) * torch.rand(T, 1, generator=g, dtype=D).add(0.1) * scale


def _torchjd_nash(T: int, **kw):
    tjd = pytest.importorskip("torchjd.aggregation", reason="torchjd[nash_mtl] is a test dependency")
    pytest.importorskip("ecos", reason="torchjd's NashMTL calls ECOS through cvxpy")
    return tjd.NashMTL(T, **kw)


@pytest.mark.parametrize("T", [2, 3, 5, 8])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_nash_weights_solve_the_bargaining_equation(T, scale):
    for seed in range(3):
        J = _random_jacobian(T, seed=seed, scale=scale)
        G = (J @ J.T).numpy()
        alpha = nash_weights(G)
        assert (alpha > 0).all()
        np.testing.assert_allclose(alpha * (G @ alpha), 1.0, atol=2e-6)  # (ridge 1e-8 leaves ~1e-7)
        d = alpha @ J.numpy()
        assert d @ d == pytest.approx(T, rel=1e-5)  # ||d||^2 = sum_t alpha_t g_t.d = T


def test_nash_orthogonal_gradients_by_hand():
    J = torch.diag(torch.tensor([2.0, 0.5, 4.0], dtype=D))
    alpha = nash_weights((J @ J.T).numpy(), ridge=0.0)
    np.testing.assert_allclose(alpha, [0.5, 2.0, 0.25], rtol=1e-12)  # alpha_t = 1 / |g_t|


def test_nash_update_is_invariant_to_loss_scales():
    """The paper's scale invariance: multiplying a loss by k > 0 divides its alpha by k, so the
    update d does not change (MGDA and the mean gradient do change)."""
    J = _random_jacobian(4, seed=1)
    k = torch.tensor([1.0, 10.0, 0.1, 3.0], dtype=D)[:, None]
    d1 = NashMTL(4, max_norm=0, ridge=0.0).aggregate(J)
    d2 = NashMTL(4, max_norm=0, ridge=0.0).aggregate(J * k)
    torch.testing.assert_close(d1, d2, atol=1e-9, rtol=1e-9)
    assert float((J.mean(0) - (J * k).mean(0)).norm()) > 0.1  # while the mean gradient changes


def _solved(agg, J) -> bool:
    """Whether torchjd's alpha satisfies the bargaining equation (its solver gives up silently)."""
    a = agg.weighting.prvs_alpha
    G = (J @ J.T).numpy()
    return bool(np.abs(a * (G @ a) - 1).max() < 1e-2)


@pytest.mark.parametrize("T", [2, 3, 5, 8])
@pytest.mark.parametrize("max_norm", [0.0, 1.0])
def test_nash_matches_torchjd(T, max_norm):
    """torchjd's NashMTL is the official code's convex-concave procedure (up to 20 ECOS solves,
    stops at |G_n a - 1/a| < 1e-3); ours solves the equation by Newton's method. Where its solve
    succeeds they agree to 1e-5 (see the next test for where it does not)."""
    compared = 0
    for seed in range(4):
        J = _random_jacobian(T, seed=seed)
        ref_agg = _torchjd_nash(T, max_norm=max_norm)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = ref_agg(J)
        if not _solved(ref_agg, J):
            continue
        compared += 1
        ours = NashMTL(T, max_norm=max_norm).aggregate(J)
        assert float((ours - ref).norm() / ref.norm()) < 1e-5
        if max_norm:
            assert float(ours.norm()) == pytest.approx(1.0)  # |d| = sqrt(T) > 1: always clipped
    assert compared >= 3


def test_nash_solves_where_the_reference_solver_gives_up():
    """For this Jacobian torchjd / the official code return their start value alpha = 1
    (measured with torchjd 0.18.0: the ECOS iterations fail), which does not satisfy the
    bargaining equation; ours does."""
    J = _random_jacobian(5, seed=1)
    ref_agg = _torchjd_nash(5, max_norm=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_agg(J)
    G = (J @ J.T).numpy()
    if _solved(ref_agg, J):
        pytest.skip("this torchjd version solves the case: nothing to contrast")
    alpha = nash_weights(G)
    np.testing.assert_allclose(alpha * (G @ alpha), 1.0, atol=2e-6)


def test_nash_update_weights_every_reuses_alpha():
    agg = NashMTL(3, max_norm=0, update_weights_every=2)
    J1, J2, J3 = (_random_jacobian(3, seed=s) for s in range(3))
    a1 = agg.coefficients(J1)[1]["alpha"].clone()
    a2 = agg.coefficients(J2)[1]["alpha"].clone()  # step 1: reused
    a3 = agg.coefficients(J3)[1]["alpha"].clone()  # step 2: recomputed for J3
    torch.testing.assert_close(a1, a2, atol=0, rtol=0)
    torch.testing.assert_close(a3, torch.from_numpy(nash_weights((J3 @ J3.T).numpy())), atol=1e-8, rtol=1e-8)
    b = NashMTL(3, max_norm=0, update_weights_every=2)
    b.load_state_dict(copy.deepcopy(agg.state_dict()))
    assert int(b.step) == 3
    torch.testing.assert_close(b.coefficients(J1)[1]["alpha"], agg.coefficients(J1)[1]["alpha"], atol=0, rtol=0)


def test_nash_backward_clips_shared_gradient_and_weights_heads_by_alpha():
    T = 3
    model, ref, x, y = double_pair(T)
    logs = build_weighting("nash_mtl", T).backward(task_losses(model, x, y)[0], model)
    ref_losses, _ = task_losses(ref, x, y)
    J = reference_jacobian(ref, ref_losses)
    alpha = torch.from_numpy(nash_weights((J @ J.T).numpy()))
    d = alpha @ J
    got = shared_grad(model)
    torch.testing.assert_close(got, d / d.norm(), atol=1e-8, rtol=1e-6)  # clip_grad_norm_(shared, 1.0)
    torch.testing.assert_close(logs["alpha"], alpha, atol=1e-8, rtol=1e-6)
    assert float(logs["clip_factor"]) == pytest.approx(1 / math.sqrt(T), rel=1e-6)
    heads = torch.autograd.grad((alpha * ref_losses).sum(), [p for h in ref.heads for p in h.parameters()])
    for p, g in zip([p for h in model.heads for p in h.parameters()], heads):
        torch.testing.assert_close(p.grad, g, atol=1e-8, rtol=1e-6)


def test_nash_logs_do_not_alias_the_state():
    """The logged alpha of one step must not change when later steps update the state."""
    agg = NashMTL(3, max_norm=0)
    first = agg.coefficients(_random_jacobian(3, seed=0))[1]["alpha"]
    kept = first.clone()
    agg.coefficients(_random_jacobian(3, seed=1))
    torch.testing.assert_close(first, kept, atol=0, rtol=0)
