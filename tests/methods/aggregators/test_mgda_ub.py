"""MGDA-UB (Sener & Koltun 2018)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mtlrepro.methods import build_weighting
from mtlrepro.methods.aggregators.mgda_ub import MGDAUB, gradient_normalizers
from mtlrepro.methods.aggregators.min_norm import min_norm_solve_numpy

from ..toy import TinyMTL, assert_grads_close, grads_of, make_batch, task_losses


# --------------------------------------------------------------------------- MGDA-UB
def test_mgda_batched_representation_gradients_equal_separate_calls():
    T = 4
    model = TinyMTL(T)
    losses, z = task_losses(model, *make_batch(T))
    w = MGDAUB(T)
    batched = w.representation_gradients(losses, z)
    assert w.last_used_batched is True
    assert batched.shape == (T, z.numel())
    separate = torch.stack([torch.autograd.grad(losses[t], z, retain_graph=True)[0].flatten() for t in range(T)])
    torch.testing.assert_close(batched, separate, atol=1e-7, rtol=1e-6)
    looped = MGDAUB(T, batched=False).representation_gradients(losses, z)
    torch.testing.assert_close(batched, looped, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_mgda_backward_gives_grad_of_alpha_weighted_sum(normalization, backend):
    T = 3
    model = TinyMTL(T)
    ref = copy.deepcopy(model)
    x, y = make_batch(T)

    losses, z = task_losses(model, x, y)
    w = build_weighting("mgda_ub", T, normalization=normalization, solver_backend=backend)
    logs = w.backward(losses, model, z=z)
    alpha = logs["task_weights"]
    assert alpha.shape == (T,) and float(alpha.min()) >= 0 and float(alpha.sum()) == pytest.approx(1.0)
    assert all(not v.requires_grad for v in logs.values())

    # independent re-computation of alpha from the z-gradients
    ref_losses, ref_z = task_losses(ref, x, y)
    gz = torch.stack([torch.autograd.grad(ref_losses[t], ref_z, retain_graph=True)[0].flatten() for t in range(T)])
    gn = {"none": torch.ones(T), "l2": gz.norm(dim=1), "loss": ref_losses.detach(),
          "loss+": ref_losses.detach() * gz.norm(dim=1)}[normalization]
    gz = gz / gn[:, None]
    a_ref, _, _ = min_norm_solve_numpy(gz @ gz.T)
    np.testing.assert_allclose(alpha.numpy(), a_ref, atol=1e-6)
    (alpha * ref_losses).sum().backward()  # as in Sener & Koltun: sum alpha_t L_t, no 1/n_t
    assert_grads_close(grads_of(model), grads_of(ref))


def test_mgda_rescale_divides_by_normalizers():
    T = 3
    model = TinyMTL(T)
    losses, z = task_losses(model, *make_batch(T))
    logs = MGDAUB(T, normalization="loss+", rescale=True).backward(losses, model, z=z)
    torch.testing.assert_close(logs["task_weights"], logs["alpha"] / logs["normalizers"])


def test_mgda_requires_z():
    T = 2
    model = TinyMTL(T)
    losses, _ = task_losses(model, *make_batch(T))
    with pytest.raises(ValueError, match="needs z"):
        MGDAUB(T).backward(losses, model)


def test_gradient_normalizers_match_definitions():
    g = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    L = torch.tensor([2.0, 0.5])
    torch.testing.assert_close(gradient_normalizers(g, L, "l2"), torch.tensor([5.0, 1.0]))
    torch.testing.assert_close(gradient_normalizers(g, L, "loss"), L)
    torch.testing.assert_close(gradient_normalizers(g, L, "loss+"), torch.tensor([10.0, 0.5]))
    torch.testing.assert_close(gradient_normalizers(g, L, "none"), torch.ones(2))
