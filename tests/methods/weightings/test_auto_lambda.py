"""Auto-λ (Liu et al. 2022): hand-derived one-step updates and a finite-difference hypergradient."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtlrepro.methods.weightings.auto_lambda import AutoLambda

from ..toy import DEVICES, TinyMTL, assert_grads_close, grads_of, make_batch

ADAM_EPS = 1e-8  # torch.optim.Adam's default; the first Adam step is -lr * g / (|g| + eps)


# --------------------------------------------------------------------------- a scalar toy
class Shared(nn.Module):
    """Every task predicts the same scalar theta: L_t = (theta - y_t)^2 / 2, grad_theta L_t = theta - y_t."""

    def __init__(self, theta: float = 1.0):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([theta], dtype=torch.float64))

    def forward(self, x):
        return [self.theta, self.theta]


def half_sq(t: int, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((out - y) ** 2).sum()


def _toy(w: AutoLambda, model: Shared, train=(0.0, 3.0), val=(2.0, 2.0)) -> dict:
    with torch.no_grad():
        w.task_weights.fill_(0.1)                    # exactly 0.1 in float64 (init is float32)
    w.bind_validation(lambda: (None, [torch.tensor([v], dtype=torch.float64) for v in val]))
    outs = model(None)
    losses = torch.stack([half_sq(t, outs[t], torch.tensor([y], dtype=torch.float64)) for t, y in enumerate(train)])
    return w.backward(losses, model)


def _adam_first_step(lam: float, grad: float, lr: float) -> float:
    return lam - lr * grad / (abs(grad) + ADAM_EPS)


@pytest.mark.parametrize("hypergradient", ["double_backward", "jacobian"])
def test_one_step_by_hand(hypergradient):
    # theta = 1, y_train = (0, 3): g = (1, -2); lambda = (0.1, 0.1); alpha = 0.1
    # theta' = 1 - 0.1 * (0.1 * 1 + 0.1 * (-2)) = 1.01; val targets (2, 2): d = 2 (theta' - 2) = -1.98
    # dL_val / dlambda_t = -alpha g_t d = (0.198, -0.396)
    model, eta = Shared(), 0.01
    w = AutoLambda(2, init=0.1, meta_lr=eta, virtual_lr=0.1, hypergradient=hypergradient).double()
    w.bind_training(half_sq)
    logs = _toy(w, model)
    torch.testing.assert_close(logs["hypergradient"], torch.tensor([0.198, -0.396], dtype=torch.float64),
                               rtol=1e-12, atol=0)
    lam = [_adam_first_step(0.1, 0.198, eta), _adam_first_step(0.1, -0.396, eta)]
    torch.testing.assert_close(logs["task_weights"], torch.tensor(lam, dtype=torch.float64), rtol=1e-14, atol=0)
    # the model's gradient uses the updated weights: lambda'_1 * 1 + lambda'_2 * (-2)
    assert float(model.theta.grad) == pytest.approx(lam[0] * 1 - 2 * lam[1], rel=1e-14)
    torch.testing.assert_close(logs["validation_losses"], torch.full((2,), 0.5 * 0.99 ** 2, dtype=torch.float64))


def test_one_step_by_hand_with_the_sgd_optimizers_momentum_and_weight_decay():
    """Official virtual step: theta' = theta - lr * (momentum * buf + grad + wd * theta)."""
    model = Shared()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    model.theta.grad = torch.tensor([0.5], dtype=torch.float64)
    opt.step()                                       # buf = 0.5 + 0.01 * 1 = 0.51; theta = 1 - 0.1 * 0.51
    theta, buf = 1 - 0.1 * 0.51, 0.51
    assert float(model.theta.detach()) == pytest.approx(theta, rel=1e-15)
    opt.zero_grad()
    w = AutoLambda(2, init=0.1, meta_lr=0.01).double()
    w.bind_training(half_sq, opt)
    logs = _toy(w, model)
    g = (theta - 0.0, theta - 3.0)
    theta_v = theta - 0.1 * (0.9 * buf + 0.1 * g[0] + 0.1 * g[1] + 0.01 * theta)
    d = 2 * (theta_v - 2.0)
    torch.testing.assert_close(logs["hypergradient"], torch.tensor([-0.1 * g[0] * d, -0.1 * g[1] * d],
                                                                   dtype=torch.float64), rtol=1e-12, atol=0)


def test_only_primary_tasks_enter_the_validation_objective():
    model = Shared()
    w = AutoLambda(2, init=0.1, meta_lr=0.01, virtual_lr=0.1, primary_tasks=[0]).double()
    w.bind_training(half_sq)
    logs = _toy(w, model)
    # d = theta' - 2 = -0.99 (one validation loss instead of two)
    torch.testing.assert_close(logs["hypergradient"], torch.tensor([0.099, -0.198], dtype=torch.float64),
                               rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- a nonlinear model
class Net(TinyMTL):
    """TinyMTL with ``model(x)`` giving every task's output (what the joint step calls)."""

    def forward(self, x):
        z = self.encode(x)
        return [self.decode(z, t) for t in range(len(self.heads))]


def mse(t: int, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


def _losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([mse(t, o, y[:, t]) for t, o in enumerate(model(x))])


T, ALPHA = 3, 0.05


def _setup(hypergradient: str = "double_backward", model: Net | None = None):
    model = Net(T).double() if model is None else model
    x, y = (t.double() for t in make_batch(T, seed=1))
    xv, yv = (t.double() for t in make_batch(T, seed=2))
    w = AutoLambda(T, init=0.3, meta_lr=1e-3, virtual_lr=ALPHA, hypergradient=hypergradient).double()
    with torch.no_grad():
        w.task_weights.copy_(torch.tensor([0.3, 1.2, 0.7]))
    w.bind_training(mse)
    w.bind_validation(lambda: (xv, [yv[:, t] for t in range(T)]))
    return model, w, (x, y), (xv, yv)


def _validation_after_virtual_step(model: Net, lam: torch.Tensor, train, val) -> torch.Tensor:
    """L_val(theta - alpha * grad sum_t lambda_t L_t(theta)), written directly (no functional_call)."""
    m = copy.deepcopy(model)
    grads = torch.autograd.grad((lam * _losses(m, *train)).sum(), list(m.parameters()))
    with torch.no_grad():
        for p, g in zip(m.parameters(), grads):
            p -= ALPHA * g
    return _losses(m, *val).sum()


@pytest.mark.parametrize("hypergradient", ["double_backward", "jacobian"])
def test_hypergradient_matches_finite_differences(hypergradient):
    model, w, train, val = _setup(hypergradient)
    lam = w.task_weights.detach().clone()
    logs = w.backward(_losses(model, *train), model)
    h, fd = 1e-6, []
    for t in range(T):
        e = torch.zeros(T, dtype=torch.float64)
        e[t] = h
        fd.append((_validation_after_virtual_step(model, lam + e, train, val)
                   - _validation_after_virtual_step(model, lam - e, train, val)) / (2 * h))
    fd = torch.stack(fd)
    assert fd.abs().max() > 1e-3                      # a case where the weights actually move
    torch.testing.assert_close(logs["hypergradient"], fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("scale,rtol", [(0.01, 5e-3), (1e-4, 1e-6)])
def test_exact_hypergradient_against_the_official_finite_difference_estimate(scale, rtol):
    """The official code: -alpha (L_t(theta + eps d) - L_t(theta - eps d)) / (2 eps), eps = 0.01 / |d|.
    Its O(eps^2) error was measured at 8.7e-4 (relative) here; with eps = 1e-4 / |d| it is < 1e-8."""
    model, w, train, val = _setup()
    lam = w.task_weights.detach().clone()
    m = copy.deepcopy(model)
    grads = torch.autograd.grad((lam * _losses(m, *train)).sum(), list(m.parameters()))
    with torch.no_grad():
        for p, g in zip(m.parameters(), grads):
            p -= ALPHA * g
    d = torch.autograd.grad(_losses(m, *val).sum(), list(m.parameters()))
    eps = scale / torch.cat([v.flatten() for v in d]).norm()
    plus, minus = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for pp, pm, v in zip(plus.parameters(), minus.parameters(), d):
            pp += eps * v
            pm -= eps * v
        official = -ALPHA * (_losses(plus, *train) - _losses(minus, *train)) / (2 * eps)
    logs = w.backward(_losses(model, *train), model)
    torch.testing.assert_close(logs["hypergradient"], official, rtol=rtol, atol=0)


def test_both_hypergradients_and_the_model_update_agree():
    base = Net(T).double()
    m1, w1, train, _ = _setup("double_backward", copy.deepcopy(base))
    m2, w2, _, _ = _setup("jacobian", copy.deepcopy(base))
    l1, l2 = w1.backward(_losses(m1, *train), m1), w2.backward(_losses(m2, *train), m2)
    torch.testing.assert_close(l1["hypergradient"], l2["hypergradient"], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(l1["task_weights"], l2["task_weights"], rtol=1e-14, atol=0)
    assert_grads_close(grads_of(m1), grads_of(m2), atol=1e-13)
    # the model's gradient is that of sum_t lambda'_t L_t with the updated weights
    ref = copy.deepcopy(base)
    (l1["task_weights"] * _losses(ref, *train)).sum().backward()
    assert_grads_close(grads_of(m1), grads_of(ref), atol=1e-13)


def test_validation_forward_leaves_the_models_batchnorm_statistics_alone():
    model = Net(T).double()
    model.encoder.insert(1, nn.BatchNorm1d(16).double())
    model, w, train, _ = _setup(model=model)
    losses = _losses(model, *train)                   # the training forward updates the statistics
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    w.backward(losses, model)
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_resumes_with_the_meta_optimizer_state():
    base = Net(T).double()
    m1, w1, train, _ = _setup(model=copy.deepcopy(base))
    w1.backward(_losses(m1, *train), m1)
    m2, w2, _, _ = _setup(model=copy.deepcopy(m1))
    w2.load_state_dict(copy.deepcopy(w1.state_dict()))
    assert w2._optimizer.state_dict()["state"]            # Adam moments came back
    a, b = w1.backward(_losses(m1, *train), m1), w2.backward(_losses(m2, *train), m2)
    assert torch.equal(a["task_weights"], b["task_weights"])


def test_wiring_errors():
    model, w, train, _ = _setup()
    w._task_loss = None
    with pytest.raises(RuntimeError, match="bind_training"):
        w.backward(_losses(model, *train), model)
    w2 = AutoLambda(T)
    w2.bind_training(mse)
    with pytest.raises(RuntimeError, match="bind_validation"):
        w2.backward(_losses(model, *train), model)
    w3 = AutoLambda(T)
    w3.bind_training(mse)
    w3.bind_validation(lambda: (train[0], [train[1][:, t] for t in range(T)]))
    with pytest.raises(RuntimeError, match="virtual_lr"):
        w3.double().backward(_losses(model, *train), model)
    with pytest.raises(ValueError, match="primary_tasks"):
        AutoLambda(T, primary_tasks=[3])
    with pytest.raises(ValueError, match="hypergradient"):
        AutoLambda(T, hypergradient="second_order")


@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_device(device):
    model, w, train, val = _setup()
    model, w = model.to(device), w.to(device)
    x, y = (t.to(device) for t in train)
    xv, yv = (t.to(device) for t in val)
    w.bind_validation(lambda: (xv, [yv[:, t] for t in range(T)]))
    logs = w.backward(_losses(model, x, y), model)
    assert all(v.device.type == torch.device(device).type for v in logs.values())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_docstring_example_runs():
    import doctest
    import importlib
    module = importlib.import_module("mtlrepro.methods.weightings.auto_lambda")
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
