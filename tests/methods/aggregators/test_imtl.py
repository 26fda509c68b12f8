"""IMTL (Liu et al. 2021): IMTL-G against torchjd and the paper's closed form; IMTL-L's scales."""
from __future__ import annotations

import pytest
import torch

from mtlrepro.methods import build_weighting
from mtlrepro.methods.aggregators.imtl import IMTL, imtl_g_weights

from ..toy import double_pair, reference_jacobian, shared_grad, task_losses

D = torch.float64


def _random_jacobian(T: int, n: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, n, generator=g, dtype=D) * torch.rand(T, 1, generator=g, dtype=D).add(0.1)


def _paper_closed_form(J: torch.Tensor) -> torch.Tensor:
    """The paper's Eq.: alpha_{2:} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum (LibMTL's code)."""
    U = J / J.norm(dim=1, keepdim=True)
    Dm, Um = J[:1] - J[1:], U[:1] - U[1:]
    a = J[0] @ Um.T @ torch.linalg.inv(Dm @ Um.T)
    return torch.cat([1 - a.sum()[None], a])


@pytest.mark.parametrize("T", [2, 3, 5, 8])
def test_imtl_g_equals_torchjd_and_the_paper(T):
    tjd = pytest.importorskip("torchjd.aggregation", reason="torchjd is a test dependency")
    for seed in range(3):
        J = _random_jacobian(T, seed=seed)
        ours = IMTL(T, loss_scale=False)
        torch.testing.assert_close(ours.aggregate(J), tjd.IMTLG()(J), atol=1e-10, rtol=1e-9)
        c, _ = ours.coefficients(J)
        torch.testing.assert_close(c, _paper_closed_form(J), atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("J", [
    torch.tensor([[1.0, 0.0], [-1.0, 2.0]], dtype=D),           # conflicting
    torch.tensor([[3.0, 0.1], [1.0, 0.5]], dtype=D),            # aligned, unequal norms
    torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0]], dtype=D),
])
def test_imtl_g_update_projects_equally_on_every_task(J):
    c, _ = IMTL(J.shape[0], loss_scale=False).coefficients(J)
    d = c @ J
    proj = J @ d / J.norm(dim=1)  # d . u_t
    torch.testing.assert_close(proj, proj[:1].expand_as(proj), atol=1e-12, rtol=1e-12)
    assert float(c.sum()) == pytest.approx(1.0)


def test_imtl_g_by_hand():
    c, _ = IMTL(2, loss_scale=False).coefficients(torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=D))
    torch.testing.assert_close(c, torch.tensor([1 / 3, 2 / 3], dtype=D))  # d = (2/3, 2/3)
    # a dependent (repeated) row: torchjd's pseudo-inverse generalisation
    c, _ = IMTL(3, loss_scale=False).coefficients(torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=D))
    torch.testing.assert_close(c @ torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=D),
                               torch.tensor([2 / 3, 2 / 3], dtype=D))


def test_imtl_hybrid_scales_losses_and_learns_the_scales():
    """IMTL-L: losses e^s L - s; s gets d/ds = e^s L - 1 (into .grad, stepped by the model's
    optimizer); the shared update is IMTL-G on the scaled losses' gradients."""
    T = 3
    model, ref, x, y = double_pair(T)
    agg = build_weighting("imtl", T).double()
    assert agg.parameters_for_model_optimizer() == [agg.log_scales]
    with torch.no_grad():
        agg.log_scales.copy_(torch.tensor([0.5, -1.0, 0.0]))
    s = agg.log_scales.detach().clone()
    losses, _ = task_losses(model, x, y)
    logs = agg.backward(losses, model)
    ref_losses, _ = task_losses(ref, x, y)
    torch.testing.assert_close(agg.log_scales.grad, s.exp() * ref_losses.detach() - 1)
    scaled = s.exp() * ref_losses - s
    J = reference_jacobian(ref, scaled)
    alpha = imtl_g_weights(J @ J.T)
    got = shared_grad(model)
    torch.testing.assert_close(got, alpha @ J, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(logs["task_weights"], alpha * s.exp(), atol=1e-10, rtol=1e-8)
    heads = torch.autograd.grad(scaled.sum(), [p for h in ref.heads for p in h.parameters()])
    for p, g in zip([p for h in model.heads for p in h.parameters()], heads):
        torch.testing.assert_close(p.grad, g, atol=1e-12, rtol=1e-10)
