"""GradNorm (Chen et al. 2018)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtlrepro.methods.weightings.gradnorm import GradNorm, last_shared_weights

from ..toy import TinyMTL, assert_grads_close, grads_of, make_batch, task_losses


# --------------------------------------------------------------------------- GradNorm
def run_gradnorm(model: TinyMTL, gn: GradNorm, steps: int, T: int, lr: float = 0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    history = []
    for s in range(steps):
        x, y = make_batch(T, seed=100 + s)
        opt.zero_grad()
        losses, _ = task_losses(model, x, y)
        logs = gn.backward(losses, model)
        history.append((grads_of(model), gn.task_weights.detach().clone(), logs))
        opt.step()
    return history


def test_gradnorm_batched_equals_loop():
    T = 4
    model = TinyMTL(T)
    m_b, m_l = copy.deepcopy(model), copy.deepcopy(model)
    gn_b, gn_l = GradNorm(T, batched=True), GradNorm(T, batched=False)
    h_b = run_gradnorm(m_b, gn_b, 5, T)
    h_l = run_gradnorm(m_l, gn_l, 5, T)
    assert gn_b.last_used_batched is True and gn_l.last_used_batched is False
    for (g_b, w_b, logs_b), (g_l, w_l, logs_l) in zip(h_b, h_l):
        torch.testing.assert_close(w_b, w_l, atol=1e-6, rtol=0)
        torch.testing.assert_close(logs_b["grad_norms"], logs_l["grad_norms"], atol=1e-6, rtol=1e-6)
        assert_grads_close(g_b, g_l, atol=1e-6)


def test_gradnorm_matches_naive_create_graph_reference():
    """Against the textbook implementation: G_t from autograd.grad(w_t L_t, W, create_graph=True)."""
    T, alpha, lr = 3, 0.5, 0.025
    model = TinyMTL(T)
    ref_model = copy.deepcopy(model)
    gn = GradNorm(T, alpha=alpha, weight_lr=lr)
    w = nn.Parameter(torch.ones(T))
    w_opt = torch.optim.Adam([w], lr=lr)
    opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.05) for m in (model, ref_model))
    L0 = None
    for s in range(6):
        x, y = make_batch(T, seed=200 + s)
        opt.zero_grad()
        losses, _ = task_losses(model, x, y)
        gn.backward(losses, model)
        opt.step()

        ref_opt.zero_grad()
        ref_losses, _ = task_losses(ref_model, x, y)
        if L0 is None:
            L0 = ref_losses.detach()
        W = ref_model.last_shared_layer().weight
        G = torch.stack([
            torch.autograd.grad(w[t] * ref_losses[t], W, retain_graph=True, create_graph=True)[0].norm()
            for t in range(T)
        ])
        ratio = ref_losses.detach() / L0
        target = (G.mean() * (ratio / ratio.mean()) ** alpha).detach()
        grad_loss = (G - target).abs().sum()
        w_grad = torch.autograd.grad(grad_loss, w, retain_graph=True)[0]
        (w.detach() * ref_losses).sum().backward()
        w.grad = w_grad
        w_opt.step()
        w_opt.zero_grad()
        with torch.no_grad():
            w.mul_(T / w.sum())
        ref_opt.step()

        torch.testing.assert_close(gn.task_weights.detach(), w.detach(), atol=1e-6, rtol=0)
        assert_grads_close(grads_of(model), grads_of(ref_model))


def test_gradnorm_weights_sum_to_T_and_logs_detached():
    T = 5
    model = TinyMTL(T)
    gn = GradNorm(T)
    for _, weights, logs in run_gradnorm(model, gn, 6, T):
        assert float(weights.sum()) == pytest.approx(T, abs=1e-5)
        assert float(weights.min()) > 0
        assert all(not v.requires_grad for v in logs.values())
        assert set(logs) >= {"task_weights", "total_loss", "gradnorm_loss", "grad_norms", "loss_ratios"}
    assert gn.extra_parameters() == [gn.task_weights]
    # the model got no gradient from L_grad: its parameters are not the weighting's
    assert not any(p is gn.task_weights for p in model.parameters())


def test_gradnorm_initial_losses_recorded_on_first_step():
    T = 3
    model = TinyMTL(T)
    gn = GradNorm(T)
    x, y = make_batch(T, seed=100)
    first, _ = task_losses(model, x, y)
    run_gradnorm(model, gn, 3, T)
    torch.testing.assert_close(gn.initial_losses, first.detach())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradnorm_downweights_the_faster_learning_task(seed):
    """Toy: two regression tasks on the same inputs x ~ N(0, I_6).

    Task 0 is learnable (y0 = x . a), task 1 is pure noise of the same scale (y1 ~ N(0, std(y0)^2),
    fresh every batch), so L_0 / L_0(0) falls fast while L_1 / L_1(0) stays near 1. With alpha = 0.5
    GradNorm lowers the target gradient norm of the fast task: after 40 SGD steps w_0 < 1 < w_1.
    """
    torch.manual_seed(seed)
    model = TinyMTL(2)
    gn = GradNorm(2, alpha=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    a = torch.randn(6)
    for _ in range(40):
        x = torch.randn(64, 6)
        y0 = x @ a
        y1 = torch.randn(64) * y0.std()
        z = model.encode(x)
        losses = torch.stack([((model.decode(z, 0) - y0) ** 2).mean(), ((model.decode(z, 1) - y1) ** 2).mean()])
        opt.zero_grad()
        logs = gn.backward(losses, model)
        opt.step()
        assert float(gn.task_weights.detach().sum()) == pytest.approx(2.0, abs=1e-5)
    ratios = logs["loss_ratios"]
    assert float(ratios[0]) < float(ratios[1])
    w = gn.task_weights.detach()
    assert float(w[0]) < 1.0 < float(w[1])


def test_gradnorm_state_dict_roundtrip_resumes_identically():
    T = 3
    model = TinyMTL(T)
    gn = GradNorm(T)
    run_gradnorm(model, gn, 3, T)
    state = copy.deepcopy(gn.state_dict())
    assert "task_weights" in state and "initial_losses" in state

    resumed = GradNorm(T)
    resumed.load_state_dict(state)
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    x, y = make_batch(T, seed=999)
    for m, g in ((m1, gn), (m2, resumed)):
        losses, _ = task_losses(m, x, y)
        g.backward(losses, m)
    torch.testing.assert_close(resumed.task_weights.detach(), gn.task_weights.detach(), atol=0, rtol=0)
    torch.testing.assert_close(resumed.initial_losses, gn.initial_losses)


def test_last_shared_weights_uses_weight_of_layer():
    model = TinyMTL(2)
    assert last_shared_weights(model) == [model.encoder[2].weight]
