"""The per-task-gradient engine (mtlrepro.methods.gradients)."""
from __future__ import annotations

import copy

import pytest
import torch

from mtlrepro.methods.gradients import task_gradients, task_jacobian, write_update

from .toy import TinyMTL, make_batch, task_losses


# --------------------------------------------------------------------------- batched gradients
def test_batched_grad_matches_loop():
    T = 4
    model = TinyMTL(T)
    losses, z = task_losses(model, *make_batch(T))
    inputs = [z, model.encoder[2].weight, model.encoder[2].bias]
    batched, used = task_gradients(losses, inputs, batched=True)
    assert used, "is_grads_batched path should work on this graph"
    looped, used_loop = task_gradients(losses, inputs, batched=False)
    assert not used_loop
    for b, l in zip(batched, looped):
        torch.testing.assert_close(b, l, atol=1e-7, rtol=1e-6)
    # against T separate plain autograd.grad calls
    for t in range(T):
        gs = torch.autograd.grad(losses[t], inputs, retain_graph=True)
        for i, g in enumerate(gs):
            torch.testing.assert_close(batched[i][t], g, atol=1e-7, rtol=1e-6)


def _double_model(T: int) -> TinyMTL:
    torch.manual_seed(0)
    return TinyMTL(T).double()


def _batch(T: int):
    x, y = make_batch(T)
    return x.double(), y.double()


def test_task_jacobian_rows_are_each_tasks_flattened_gradient():
    T = 3
    model = _double_model(T)
    losses, z = task_losses(model, *_batch(T))
    params = model.shared_parameters()
    J, used = task_jacobian(losses, params)
    assert used and J.shape == (T, sum(p.numel() for p in params)) and not J.requires_grad
    for t in range(T):
        gs = torch.autograd.grad(losses[t], params, retain_graph=True)
        torch.testing.assert_close(J[t], torch.cat([g.flatten() for g in gs]), atol=1e-12, rtol=0)
    J_loop, used_loop = task_jacobian(losses, params, batched=False)
    assert not used_loop
    torch.testing.assert_close(J, J_loop, atol=1e-12, rtol=0)


def test_task_gradients_unused_input_gets_zeros():
    T = 2
    model = _double_model(T)
    losses, _ = task_losses(model, *_batch(T))
    unused = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    for batched in (True, False):
        (g,), _ = task_gradients(losses, [unused], batched=batched)
        assert g.shape == (T, 3) and not g.any()


@pytest.mark.parametrize("scale", [None, (0.5, 2.0, -1.0)])
def test_write_update_shared_parameters_and_heads(scale):
    """Shared parameters get exactly the update; head t gets s_t * grad L_t (s = 1 by default)."""
    T = 3
    model = _double_model(T)
    losses, _ = task_losses(model, *_batch(T))
    shared = model.shared_parameters()
    D = sum(p.numel() for p in shared)
    update = torch.arange(D, dtype=torch.float64) / D
    s = None if scale is None else torch.tensor(scale, dtype=torch.float64)
    head_ref = [torch.autograd.grad(losses[t], list(model.heads[t].parameters()), retain_graph=True)
                for t in range(T)]
    write_update(model, losses, shared, update, task_scale=s)
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in shared]), update, atol=0, rtol=0)
    for t in range(T):
        st = 1.0 if s is None else float(s[t])
        for p, g in zip(model.heads[t].parameters(), head_ref[t]):
            torch.testing.assert_close(p.grad, st * g, atol=1e-12, rtol=0)


def test_write_update_representation_backpropagates_into_encoder_and_accumulates():
    T = 2
    model = _double_model(T)
    x, y = _batch(T)
    losses, z = task_losses(model, x, y)
    v = torch.randn(z.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    enc = model.shared_parameters()
    enc_ref = torch.autograd.grad(z, enc, grad_outputs=v.view_as(z), retain_graph=True)
    for p in enc:
        p.grad = torch.ones_like(p)  # already accumulated: write_update adds to it
    write_update(model, losses, [z], v)
    for p, g in zip(enc, enc_ref):
        torch.testing.assert_close(p.grad, 1.0 + g, atol=1e-12, rtol=0)
    ref = copy.deepcopy(model)
    for p in ref.parameters():
        p.grad = None
    ref_losses, _ = task_losses(ref, x, y)
    ref_losses.sum().backward()
    for t in range(T):
        for p, q in zip(model.heads[t].parameters(), ref.heads[t].parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-12, rtol=0)


def test_write_update_rejects_a_wrong_sized_update():
    T = 2
    model = _double_model(T)
    losses, _ = task_losses(model, *_batch(T))
    with pytest.raises(ValueError, match="elements"):
        write_update(model, losses, model.shared_parameters(), torch.zeros(3, dtype=torch.float64))
