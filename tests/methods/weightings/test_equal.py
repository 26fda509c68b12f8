"""Equal weighting (hard sharing)."""
from __future__ import annotations

import copy

import pytest
import torch

from mtlrepro.methods import build_weighting

from ..toy import TinyMTL, assert_grads_close, grads_of, make_batch, task_losses


# --------------------------------------------------------------------------- equal
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_equal_gradients_are_gradient_of_sum(reduction):
    T = 3
    model = TinyMTL(T)
    ref = copy.deepcopy(model)
    x, y = make_batch(T)

    losses, _ = task_losses(model, x, y)
    logs = build_weighting("equal", T, reduction=reduction).backward(losses, model)

    ref_losses, _ = task_losses(ref, x, y)
    c = 1.0 if reduction == "sum" else 1.0 / T
    (ref_losses.sum() * c).backward()
    assert_grads_close(grads_of(model), grads_of(ref), atol=1e-7)
    torch.testing.assert_close(logs["task_weights"], torch.full((T,), c))
    torch.testing.assert_close(logs["total_loss"], ref_losses.sum().detach() * c)
    assert all(not v.requires_grad for v in logs.values())
