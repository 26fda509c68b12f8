"""The contract for the shared-parameter aggregators (MGDA, PCGrad, CAGrad, GradVac, Nash-MTL,
Pareto-MTL, IMTL): registration, declared needs, logs, devices, update schemes, docstrings."""
from __future__ import annotations

import doctest
import importlib
import json

import pytest
import torch

from mtlrepro.methods import WEIGHTINGS, build_weighting
from mtlrepro.train.steps import check_update_weighting

from ..toy import DEVICES, TinyMTL, make_batch, task_losses

NAMES = ["mgda", "pcgrad", "cagrad", "gradvac", "nash_mtl", "pareto_mtl", "imtl"]
MODULES = [f"mtlrepro.methods.aggregators.{n}" for n in NAMES]


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_declared_needs(name):
    cls = WEIGHTINGS.get(name)
    assert cls.name == name
    assert cls.needs_shared_jacobian and not cls.needs_representation and not cls.separable
    assert cls.jacobian_of == "shared_parameters"
    with pytest.raises(TypeError, match=name):
        build_weighting(name, 3, no_such_option=1)
    check_update_weighting("joint", name)
    for update in ("steady_state", "synchronized"):
        with pytest.raises(ValueError, match="not separable"):
            check_update_weighting(update, name)


@pytest.mark.parametrize("name", NAMES)
def test_constructor_defaults_are_json(name):
    """The fingerprint writes the weighting's keyword defaults out (mtlrepro.fingerprint.resolve)."""
    import inspect
    sig = inspect.signature(WEIGHTINGS.get(name).__init__)
    json.dumps({k: p.default for k, p in sig.parameters.items() if p.default is not p.empty})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_backward_on_device_fills_every_gradient_and_logs_detached_tensors(name, device):
    T = 3
    torch.manual_seed(0)
    model = TinyMTL(T).to(device)
    w = build_weighting(name, T).to(device)
    x, y = (t.to(device) for t in make_batch(T))
    for _ in range(2):  # stateful methods: a second step from their updated state
        model.zero_grad(set_to_none=True)
        losses, _ = task_losses(model, x, y)
        logs = w.backward(losses, model)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        assert logs["task_weights"].shape == (T,) and logs["total_loss"].shape == ()
        for k, v in logs.items():
            assert isinstance(v, torch.Tensor) and not v.requires_grad, k
            assert v.device.type == torch.device(device).type, k
            assert torch.isfinite(v).all(), k


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, module
