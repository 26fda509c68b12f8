"""PCGrad (Yu et al. 2020): against torchjd, hand cases of Algorithm 1, seeding, backward."""
from __future__ import annotations

import copy

import pytest
import torch

from mtlrepro.methods import build_weighting
from mtlrepro.methods.aggregators.pcgrad import PCGrad, pcgrad_weights

from ..toy import double_pair, reference_jacobian, shared_grad, task_losses

D = torch.float64


def _random_jacobian(T: int, n: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, n, generator=g, dtype=D) * torch.rand(T, 1, generator=g, dtype=D).add(0.1)


@pytest.mark.parametrize("T", [2, 3, 5, 8])
def test_pcgrad_equals_torchjd_with_the_same_permutations(T):
    tjd = pytest.importorskip("torchjd.aggregation", reason="torchjd is a test dependency")
    ours = PCGrad(T, seed=123)
    torch.manual_seed(123)  # torchjd draws its orders from the global generator, ours from its own
    ref_agg = tjd.PCGrad()
    for step in range(3):  # several steps: the two generators advance identically
        J = _random_jacobian(T, seed=step)
        ref = ref_agg(J)
        torch.testing.assert_close(ours.aggregate(J), ref, atol=1e-12, rtol=1e-12)


def test_pcgrad_two_conflicting_tasks_by_hand():
    g1, g2 = torch.tensor([1.0, 0.0], dtype=D), torch.tensor([-1.0, 2.0], dtype=D)
    # g1.g2 = -1 < 0: g1' = g1 + (1/5) g2 = (0.8, 0.4); g2' = g2 + 1 * g1 = (0, 2)
    d = PCGrad(2, seed=0).aggregate(torch.stack([g1, g2]))
    torch.testing.assert_close(d, torch.tensor([0.8, 2.4], dtype=D))
    c, _ = PCGrad(2, seed=0).coefficients(torch.stack([g1, g2]))
    torch.testing.assert_close(c, torch.tensor([2.0, 1.2], dtype=D))
    g1p, g2p = g1 + 0.2 * g2, g2 + g1  # the projected gradients are orthogonal to the other task's
    assert float(g1p @ g2) == pytest.approx(0.0, abs=1e-15) and float(g2p @ g1) == pytest.approx(0.0, abs=1e-15)


def test_pcgrad_aligned_gradients_are_untouched():
    J = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.3, 0.1, 2.0]], dtype=D)
    assert (J @ J.T).min() >= 0
    c, logs = PCGrad(3, seed=0).coefficients(J)
    torch.testing.assert_close(c, torch.ones(3, dtype=D))
    assert float(logs["conflict_fraction"]) == 0.0


def test_pcgrad_three_tasks_depends_on_order_and_follows_it():
    # g3 conflicts with g1 and g2; the projection of g3 depends on the order (g1 then g2 or g2 then g1)
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -0.5]], dtype=D)
    G = J @ J.T

    def project(i, order):
        gi = J[i].clone()
        for j in order:
            if j != i and gi @ J[j] < 0:
                gi = gi - (gi @ J[j]) / (J[j] @ J[j]) * J[j]
        return gi

    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        orders = [torch.randperm(3, generator=gen).tolist() for _ in range(3)]
        expected = sum(project(i, orders[i]) for i in range(3))
        c = pcgrad_weights(G, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(c @ J, expected, atol=1e-14, rtol=0)


def test_pcgrad_seed_defaults_to_the_run_seed_and_resumes_from_state_dict():
    torch.manual_seed(7)  # what the trainer does before building the weighting
    a = PCGrad(4)
    assert a.seed == 7
    J = _random_jacobian(4, seed=3)
    first = [a.aggregate(J) for _ in range(2)]
    b = PCGrad(4, seed=999)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # a checkpoint after two steps
    torch.testing.assert_close(a.aggregate(J), b.aggregate(J), atol=0, rtol=0)
    fresh = PCGrad(4, seed=7)
    torch.testing.assert_close([fresh.aggregate(J) for _ in range(2)], first, atol=0, rtol=0)


def test_pcgrad_backward_shared_gets_update_heads_get_own_gradient():
    T = 3
    model, ref, x, y = double_pair(T)
    agg = build_weighting("pcgrad", T, seed=5)
    losses, _ = task_losses(model, x, y)
    logs = agg.backward(losses, model)
    # independent: per-task gradients by plain autograd, projections by hand
    ref_losses, _ = task_losses(ref, x, y)
    J = reference_jacobian(ref, ref_losses)
    c = pcgrad_weights(J @ J.T, torch.Generator().manual_seed(5))
    torch.testing.assert_close(logs["task_weights"], c, atol=1e-12, rtol=0)
    got = shared_grad(model)
    torch.testing.assert_close(got, c @ J, atol=1e-12, rtol=1e-10)
    heads = torch.autograd.grad(ref_losses.sum(), [p for h in ref.heads for p in h.parameters()])
    for p, g in zip([p for h in model.heads for p in h.parameters()], heads):
        torch.testing.assert_close(p.grad, g, atol=1e-12, rtol=1e-10)
