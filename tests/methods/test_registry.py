"""The method registry, the shared contract, every method on every device, the docstring examples."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtlrepro.methods import WEIGHTINGS, Weighting, build_weighting
from mtlrepro.methods.weightings.equal import EqualWeighting
from mtlrepro.registry import UnknownKeyError

from .toy import DEVICES, TinyMTL, make_batch, task_losses


# --------------------------------------------------------------------------- registry
def test_registry_names_and_build():
    assert {"equal", "hard_sharing", "gradnorm", "mgda_ub"} <= set(WEIGHTINGS.names())
    assert WEIGHTINGS.get("hard_sharing") is EqualWeighting
    for name in ("equal", "gradnorm", "mgda_ub"):
        w = build_weighting(name, 4)
        assert isinstance(w, Weighting) and isinstance(w, nn.Module)
        assert w.n_tasks == 4 and w.name == name
    assert build_weighting("mgda_ub", 2).needs_representation
    assert not build_weighting("gradnorm", 2).needs_representation
    assert not build_weighting("equal", 2).needs_representation


def test_registry_unknown_name_and_option():
    with pytest.raises(UnknownKeyError, match="gradnorm"):
        build_weighting("gradnrom", 3)
    with pytest.raises(TypeError, match="alpah"):
        build_weighting("gradnorm", 3, alpah=0.5)
    with pytest.raises(ValueError):
        build_weighting("mgda_ub", 3, normalization="l1")


def test_bad_losses_shape_rejected():
    model = TinyMTL(3)
    losses, _ = task_losses(model, *make_batch(3))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        build_weighting("equal", 2).backward(losses, model)


# --------------------------------------------------------------------------- devices
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["equal", "gradnorm", "mgda_ub"])
def test_every_weighting_runs_on_device(name, device):
    T = 3
    model = TinyMTL(T).to(device)
    w = build_weighting(name, T).to(device)
    x, y = (t.to(device) for t in make_batch(T))
    losses, z = task_losses(model, x, y)
    logs = w.backward(losses, model, z=z if w.needs_representation else None)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    for v in logs.values():
        assert isinstance(v, torch.Tensor) and v.device.type == torch.device(device).type


# --------------------------------------------------------------------------- docstring examples
def test_docstring_examples_run():
    import doctest
    import importlib

    for name in ("mtlrepro.methods", "mtlrepro.methods.logs", "mtlrepro.methods.weightings.equal",
                 "mtlrepro.methods.weightings.gradnorm", "mtlrepro.methods.aggregators.mgda_ub"):
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, name


# --------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("name", ["equal", "gradnorm", "mgda_ub"])
def test_every_method_declares_its_needs_and_logs_task_weights(name):
    cls = WEIGHTINGS.get(name)
    for attr in ("needs_representation", "needs_shared_jacobian", "needs_validation_batches", "separable"):
        assert isinstance(getattr(cls, attr), bool), (name, attr)
    assert cls.separable or cls.not_separable_because
    T = 3
    model = TinyMTL(T)
    w = build_weighting(name, T)
    losses, z = task_losses(model, *make_batch(T))
    logs = w.backward(losses, model, z=z if w.needs_representation else None)
    assert logs["task_weights"].shape == (T,) and logs["total_loss"].shape == ()
    assert w.parameters_for_model_optimizer() == []  # GradNorm steps its weights itself
    w.on_epoch_start(0)
    w.on_epoch_end(0)


def test_separable_methods_apply_task_by_task_as_jointly():
    """For a separable weighting, sum_t task_objective(t, L_t) has the joint objective's gradient."""
    for name, cls in ((n, WEIGHTINGS.get(n)) for n in WEIGHTINGS.names()):
        if not cls.separable:
            continue
        for kw in ({}, {"reduction": "mean"}) if name in ("equal", "hard_sharing") else ({},):
            T = 3
            model = TinyMTL(T).double()
            ref = copy.deepcopy(model)
            x, y = (t.double() for t in make_batch(T))
            w = build_weighting(name, T, **kw)
            state = copy.deepcopy(w.state_dict())   # a random weighting (RLW) must draw the same weights twice
            w.backward(task_losses(ref, x, y)[0], ref)
            w.load_state_dict(state)
            w.start_step()
            losses, _ = task_losses(model, x, y)
            for t in range(T):
                w.task_objective(t, losses[t]).backward(retain_graph=True)
            for p, q in zip(model.parameters(), ref.parameters()):
                torch.testing.assert_close(p.grad, q.grad, atol=1e-12, rtol=1e-10)


def test_validation_batches_must_be_bound():
    w = build_weighting("equal", 2)
    with pytest.raises(RuntimeError, match="bind_validation"):
        w.validation_batch()
    batch = (torch.zeros(1), [torch.zeros(1)])
    w.bind_validation(lambda: batch)
    assert w.validation_batch() is batch


def test_registration_is_lazy():
    """Importing the package imports no method module; building a name imports only its own."""
    import subprocess
    import sys
    code = ("import sys, mtlrepro.methods as m; mods = lambda: {k for k in sys.modules if k.startswith("
            "'mtlrepro.methods.')}; before = mods(); m.build_weighting('equal', 2); after = mods(); "
            "print(sorted(before)); print(sorted(after - before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert "mtlrepro.methods.aggregators.mgda_ub" not in out[0] and "gradnorm" not in out[0]
    assert "mtlrepro.methods.weightings.equal" in out[1] and "mgda_ub" not in out[1]
