"""GradVac (Wang et al. 2021): against torchjd over several steps, hand cases, state."""
from __future__ import annotations

import copy

import pytest
import torch

from mtlrepro.methods.aggregators.gradvac import GradVac, gradvac_weights
from mtlrepro.methods.aggregators.pcgrad import PCGrad

D = torch.float64


def _random_jacobian(T: int, n: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, n, generator=g, dtype=D) * torch.rand(T, 1, generator=g, dtype=D).add(0.1)


@pytest.mark.parametrize("T,beta", [(2, 0.5), (3, 0.5), (5, 0.5), (4, 0.1)])
def test_gradvac_equals_torchjd_over_steps(T, beta):
    tjd = pytest.importorskip("torchjd.aggregation", reason="torchjd is a test dependency")
    ours = GradVac(T, beta=beta, seed=11)
    torch.manual_seed(11)
    ref_agg = tjd.GradVac(beta=beta)
    for step in range(5):  # the EMA targets carry over: later steps differ from PCGrad
        J = _random_jacobian(T, seed=step)
        torch.testing.assert_close(ours.aggregate(J), ref_agg(J), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("J", [
    _random_jacobian(2, seed=2), _random_jacobian(2, seed=3),
    torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]], dtype=D),  # order-free
])
def test_gradvac_first_step_is_pcgrad(J):
    """phi_hat = 0 at the first step: the correction is PCGrad's projection (for cases whose
    result does not depend on the visiting order; the two methods draw their orders differently)."""
    T = J.shape[0]
    torch.testing.assert_close(GradVac(T, seed=3).aggregate(J), PCGrad(T, seed=3).aggregate(J),
                               atol=1e-7, rtol=1e-7)  # eps = 1e-8 in GradVac's denominators


def test_gradvac_correction_reaches_the_target_similarity():
    """With a target phi_hat > phi, the corrected g_1 has cosine similarity phi_hat with g_2
    (the paper's Eq. for w is the closed form of that condition)."""
    g1, g2 = torch.tensor([1.0, 0.0], dtype=D), torch.tensor([0.6, 0.8], dtype=D) * 3  # cos = 0.6
    for target in (0.7, 0.9, 0.99):
        phi_hat = torch.tensor([[0.0, target], [-1.0, 0.0]], dtype=D)  # task 2 target below: untouched
        J = torch.stack([g1, g2])
        c = gradvac_weights(J @ J.T, phi_hat, beta=0.5, eps=0.0)
        g1_new = (c - torch.tensor([0.0, 1.0], dtype=D)) @ J  # c = C.sum(0); row 2 of C is e_2
        cos = float(g1_new @ g2 / (g1_new.norm() * g2.norm()))
        assert cos == pytest.approx(target, abs=1e-12)
        # EMA update of both targets with the similarities seen (0.6 for both pairs)
        torch.testing.assert_close(phi_hat, torch.tensor([[0.0, 0.5 * target + 0.3], [-0.2, 0.0]], dtype=D))


def test_gradvac_aligned_above_target_untouched():
    J = torch.tensor([[1.0, 0.1], [0.9, 0.3]], dtype=D)
    c, logs = GradVac(2, seed=0).coefficients(J)
    torch.testing.assert_close(c, torch.ones(2, dtype=D))
    assert float(logs["phi_hat_mean"]) > 0  # the EMA moved towards the positive similarity


def test_gradvac_state_dict_carries_the_ema_and_the_generator():
    a = GradVac(3, seed=1)
    J = _random_jacobian(3, seed=5)
    a.aggregate(J)
    b = GradVac(3, seed=2)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    torch.testing.assert_close(b.phi_hat, a.phi_hat, atol=0, rtol=0)
    torch.testing.assert_close(a.aggregate(J), b.aggregate(J), atol=0, rtol=0)
