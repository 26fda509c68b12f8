"""Uncertainty weighting (Kendall et al. 2018): hand-computed objective and gradients."""
from __future__ import annotations

import math

import pytest
import torch

from mtlrepro.methods.weightings.uncertainty import UncertaintyWeighting

from ..toy import assert_task_by_task_equals_joint


def _two_losses(p: torch.Tensor) -> torch.Tensor:
    """L_1 = p0^2 + p1 (grad (2 p0, 1)), L_2 = p1^2 / 2 (grad (0, p1)); at p = (1, 1): L = (2, 0.5)."""
    return torch.stack([p[0] ** 2 + p[1], 0.5 * p[1] ** 2])


def test_objective_and_gradients_by_hand():
    w = UncertaintyWeighting(2).double()                 # s_t = -0.5 (LibMTL / MTAN init)
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    logs = w.backward(_two_losses(p))
    c = 0.5 * math.exp(0.5)                              # 1 / (2 sigma^2) = e^{-s} / 2
    F = c * 2.0 + 0.5 * (-0.5) + c * 0.5 + 0.5 * (-0.5)
    assert float(logs["total_loss"]) == pytest.approx(F, rel=1e-14)
    torch.testing.assert_close(logs["task_weights"], torch.tensor([c, c], dtype=torch.float64), rtol=1e-14, atol=0)
    # model: c * grad L_1 + c * grad L_2 = c * (2, 1) + c * (0, 1)
    torch.testing.assert_close(p.grad, torch.tensor([2 * c, 2 * c], dtype=torch.float64), rtol=1e-14, atol=0)
    # dF/ds_t = 1/2 - e^{-s_t} L_t / 2
    want_s = torch.tensor([0.5 - c * 2.0, 0.5 - c * 0.5], dtype=torch.float64)
    torch.testing.assert_close(w.log_variances.grad, want_s, rtol=1e-14, atol=0)
    torch.testing.assert_close(logs["log_variances"], torch.full((2,), -0.5, dtype=torch.float64))


def test_log_variances_converge_to_log_of_the_losses():
    """With the losses held fixed, F is minimised at s_t = log L_t (weights 1 / (2 L_t))."""
    L = torch.tensor([2.0, 0.5, 7.0], dtype=torch.float64)
    w = UncertaintyWeighting(3, init=0.0).double()
    opt = torch.optim.SGD(w.parameters_for_model_optimizer(), lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        w.objective(L).backward()
        opt.step()
    torch.testing.assert_close(w.log_variances.detach(), L.log(), atol=1e-10, rtol=0)
    torch.testing.assert_close(w.current_task_weights(L), 1 / (2 * L), atol=1e-10, rtol=0)


def test_log_variances_belong_to_the_model_optimizer_and_the_state_dict():
    w = UncertaintyWeighting(3, init=-0.7)
    assert w.parameters_for_model_optimizer() == [w.log_variances] == w.extra_parameters()
    assert torch.equal(w.state_dict()["log_variances"], torch.full((3,), -0.7))
    with pytest.raises(TypeError, match="uw"):
        UncertaintyWeighting(3, init_value=0.0)


def test_task_by_task_equals_joint():
    w, w_ref = UncertaintyWeighting(3, init=0.3).double(), UncertaintyWeighting(3, init=0.3).double()
    assert_task_by_task_equals_joint(w, w_ref)
    torch.testing.assert_close(w.log_variances.grad, w_ref.log_variances.grad, atol=1e-13, rtol=0)


def test_docstring_example_runs():
    import doctest
    import importlib
    module = importlib.import_module("mtlrepro.methods.weightings.uncertainty")
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
