"""RotoGrad (Javaloy & Valera 2022): the rotations (sharing ``rotograd``) and the method's backward.

Float64 checks against hand-written computations of the paper's / the authors' package's
equations on a linear toy model (encoder ``z = x W^T + b``, rotation of the first ``m`` of the
``d_z`` features, linear heads, MSE), the rotation objective on a toy with conflicting gradients,
the full-size parameter counts against CoNAL's printed ones, resumption, and a tiny harness run.
"""
from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from mtlrepro.methods import build_weighting
from mtlrepro.methods.rotograd import RotoGrad
from mtlrepro.models import build_model, count_parameters
from mtlrepro.models.interface import PerTask
from mtlrepro.models.sharing.rotograd import Rotation, RotoGradSharing, haar_rotation

from ..harness_utils import tiny_env  # noqa: F401 (fixture)
from .toy import TinyMTL, make_batch, task_losses

ROOT = Path(__file__).resolve().parents[2]


class ToyRot(nn.Module):
    """Linear encoder, a rotation of the first ``m`` features per task, linear scalar heads."""

    def __init__(self, n_tasks: int = 2, d_in: int = 4, d_z: int = 5, m: int = 3, init: str = "haar"):
        super().__init__()
        self.encoder = nn.Linear(d_in, d_z)
        self.rotations = PerTask([Rotation(m, init) for _ in range(n_tasks)])
        self.heads = PerTask([nn.Linear(d_z, 1) for _ in range(n_tasks)])

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z, t):
        return self.heads[t](self.rotations[t](z)).squeeze(-1)

    def task_parameters(self, t):
        return [*self.heads[t].parameters(), *self.rotations[t].parameters()]


@contextlib.contextmanager
def float64():
    """Build under float64, so that the Haar bases are orthogonal to float64 precision."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def toy(n_tasks=2, seed=0, **kw):
    torch.manual_seed(seed)
    with float64():
        model = ToyRot(n_tasks, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(7, model.encoder.in_features, generator=g, dtype=torch.float64)
    y = torch.randn(7, n_tasks, generator=g, dtype=torch.float64) * torch.arange(1, n_tasks + 1)
    return model, x, y


def forward(model, x, y):
    z = model.encode(x)
    return torch.stack([((model.decode(z, t) - y[:, t]) ** 2).mean() for t in range(y.shape[1])]), z


def rotate_rows(v, R):
    """Rows ``v`` (N, d) with their first ``m`` entries multiplied by ``R``: ``v_lo R^T``."""
    m = R.shape[0]
    return torch.cat([v[:, :m] @ R.T, v[:, m:]], dim=1)


def by_hand(model, x, y, s):
    """Per task: dL/dr_t, G_t = dL/dz and the head gradients, for s_t L_t (hand-derived)."""
    N = x.shape[0]
    z = (x @ model.encoder.weight.T + model.encoder.bias).detach()
    out = []
    for t, (rot, head) in enumerate(zip(model.rotations, model.heads)):
        R = rot.matrix().detach()
        r = rotate_rows(z, R)
        e = r @ head.weight[0].detach() + head.bias.detach() - y[:, t]
        dr = s[t] * 2.0 / N * e[:, None] * head.weight[0].detach()[None, :]
        m = R.shape[0]
        G = torch.cat([dr[:, :m] @ R, dr[:, m:]], dim=1)           # r_lo = z_lo R^T
        out.append({"R": R, "dr": dr, "G": G, "loss": (e ** 2).mean(),
                    "dw": s[t] * 2.0 / N * (r.T @ e), "db": s[t] * 2.0 / N * e.sum()})
    return out


# --------------------------------------------------------------------------- the rotations
def test_haar_and_identity_rotations_are_in_SO_n_float64():
    torch.manual_seed(0)
    for n in (1, 2, 5, 16):
        q = haar_rotation(n, torch.float64)
        torch.testing.assert_close(q.T @ q, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
        assert torch.linalg.det(q) == pytest.approx(1.0, abs=1e-12)
    r = Rotation(4, "identity").double()
    assert torch.equal(r.matrix().detach(), torch.eye(4, dtype=torch.float64))
    with float64():
        h = Rotation(4, "haar")
    assert torch.equal(h.matrix().detach(), h.base)              # W = 0: R is the base (geotorch)
    assert count_parameters(h.parameters()) == 16 and not any(n == "base" for n, _ in h.named_parameters())
    with pytest.raises(ValueError, match="haar"):
        Rotation(3, "random")


def test_rotation_acts_on_the_first_m_channels_at_every_pixel_float64():
    torch.manual_seed(0)
    with float64():
        rot = Rotation(3)
    with torch.no_grad():
        rot.weight.normal_()
    R = rot.matrix().detach()
    z = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    out = rot(z)
    want = z.detach().clone()
    for b in range(2):
        for i in range(4):
            for j in range(3):
                want[b, :3, i, j] = R @ z[b, :3, i, j]
    torch.testing.assert_close(out, want, atol=1e-12, rtol=0)
    out.sum().backward()
    assert rot.weight.grad is None                               # the forward uses R detached
    with pytest.raises(ValueError, match=">= 3"):
        rot(torch.randn(2, 2, dtype=torch.float64))


def test_rotations_stay_orthogonal_after_many_steps_float64():
    model, x, y = toy(3, m=5)
    w = RotoGrad(3, rotation_lr=0.2).double()
    start = [rot.matrix().detach().clone() for rot in model.rotations]
    for _ in range(30):
        losses, z = forward(model, x, y)
        w.backward(losses, model, z)
    for rot, R0 in zip(model.rotations, start):
        R = rot.matrix().detach()
        torch.testing.assert_close(R.T @ R, torch.eye(5, dtype=torch.float64), atol=1e-10, rtol=0)
        assert torch.linalg.det(R) == pytest.approx(1.0, abs=1e-10)
        assert (R - R0).abs().max() > 0.1                          # they did move
        assert rot.weight.grad is None                             # stepped and cleared by the method
        assert torch.equal(rot(torch.eye(5, dtype=torch.float64)).T, R)   # the forward's cache follows the steps


# --------------------------------------------------------------------------- the backward
def test_identity_rotations_without_scaling_is_the_plain_sum_float64():
    """R_t = I, scaling and rotation learning off: every gradient is that of sum_t L_t on the
    same network without rotations."""
    model, x, y = toy(3, init="identity")
    plain = copy.deepcopy(model)
    for rot in plain.rotations:
        rot.forward = lambda z: z                                   # no rotation at all
    w = RotoGrad(3, scale_gradients=False, learn_rotations=False).double()
    losses, z = forward(model, x, y)
    logs = w.backward(losses, model, z)
    ref_losses, _ = forward(plain, x, y)
    ref_losses.sum().backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        if "rotations" in name:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-13, rtol=1e-12)
    assert torch.equal(logs["task_weights"], torch.ones(3, dtype=torch.float64))
    assert torch.isnan(logs["rotation_loss"]).all()


@pytest.mark.parametrize("normalize_losses", [False, True])
def test_backbone_and_head_gradients_are_the_papers_equations_float64(normalize_losses):
    """Three steps (burn-in 2, so G^0 and L^0 are re-recorded at step 2), the model moved by SGD
    between them: the encoder gets C sum_t G_t / ||G_t|| with alpha from ||G_t|| / ||G_t^0||,
    the heads grad(s_t L_t)."""
    model, x, y = toy(2, m=3)
    w = RotoGrad(2, rotation_lr=0.05, burn_in_period=2, normalize_losses=normalize_losses).double()
    G0 = L0 = None
    for step in range(3):
        losses, z = forward(model, x, y)
        if step in (0, 2):
            L0 = losses.detach().clone()
        s = 1.0 / L0 if normalize_losses else torch.ones(2, dtype=torch.float64)
        hand = by_hand(model, x, y, s)
        norms = torch.stack([h["G"].norm() for h in hand])
        if step in (0, 2):
            G0 = norms.clone()
        ratio = norms / G0
        alpha = ratio / ratio.sum()
        C = (alpha * norms).sum()
        U = sum(C / n * h["G"] for n, h in zip(norms, hand))
        for p in model.parameters():
            p.grad = None
        logs = w.backward(losses, model, z)
        torch.testing.assert_close(model.encoder.weight.grad, U.T @ x, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(model.encoder.bias.grad, U.sum(0), atol=1e-12, rtol=1e-10)
        for head, h in zip(model.heads, hand):
            torch.testing.assert_close(head.weight.grad[0], h["dw"], atol=1e-12, rtol=1e-10)
            torch.testing.assert_close(head.bias.grad[0], h["db"], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(logs["grad_norms"], norms, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(logs["alpha"], alpha, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(logs["task_weights"], s * C / norms, atol=1e-12, rtol=1e-10)
        if step == 0 or step == 2:
            torch.testing.assert_close(alpha, torch.full((2,), 0.5, dtype=torch.float64))
        with torch.no_grad():                                      # move the network (not the rotations)
            for p in [*model.encoder.parameters(), *model.heads.parameters()]:
                p -= 0.3 * p.grad
    assert w.step_count == 3


def test_rotation_step_is_the_packages_objective_and_the_papers_direction_float64():
    """One SGD step of W_t on (1/B) sum_n ||R_t V_n - dL/dr_t||^2, V = mean_t G_t ||mean G|| / ||G_t||;
    its gradient is 2 ||mean G|| / B times that of the paper's -sum_n <R_t^T g~_n, v_n>."""
    model, x, y = toy(2, m=3)
    with torch.no_grad():
        for rot in model.rotations:
            rot.weight.normal_(0, 0.3)
    lr = 0.1
    w = RotoGrad(2, rotation_lr=lr, rotation_optimizer="sgd").double()
    hand = by_hand(model, x, y, torch.ones(2, dtype=torch.float64))
    Gs = torch.stack([h["G"] for h in hand])
    norms = Gs.flatten(1).norm(dim=1)
    mean_norm = Gs.mean(0).norm()
    V = (Gs * (mean_norm / norms)[:, None, None]).mean(0)
    v_paper = (Gs / norms[:, None, None]).mean(0)
    B = x.shape[0]
    want, before = [], [rot.weight.detach().clone() for rot in model.rotations]
    for rot, h in zip(model.rotations, hand):
        W = rot.weight.detach().clone().requires_grad_(True)
        low = W.tril(-1)
        R = rot.base @ torch.linalg.matrix_exp(low - low.T)
        code = ((rotate_rows(V, R) - h["dr"]) ** 2).sum() / B
        (g_code,) = torch.autograd.grad(code, W, retain_graph=True)
        paper = -(rotate_rows(h["dr"], R.T) * v_paper).sum()          # -sum_n <R^T g~_n, v_n>
        (g_paper,) = torch.autograd.grad(paper, W)
        torch.testing.assert_close(g_code, 2 * mean_norm / B * g_paper, atol=1e-12, rtol=1e-9)
        want.append((W - lr * g_code).detach())
    losses, z = forward(model, x, y)
    logs = w.backward(losses, model, z)
    for rot, W_new, W_old in zip(model.rotations, want, before):
        torch.testing.assert_close(rot.weight.detach(), W_new, atol=1e-13, rtol=1e-11)
        assert (W_new - W_old).abs().max() > 1e-4
    assert logs["rotation_loss"].shape == (2,) and (logs["rotation_loss"] > 0).all()


def test_rotations_align_conflicting_gradients():
    """A toy whose task gradients w.r.t. the rotated features are fixed and 150 degrees apart:
    training only the rotations drives the tasks' gradients w.r.t. z together."""
    torch.manual_seed(0)
    d, T, N = 4, 2, 16
    w1 = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    w2 = torch.tensor([math.cos(2.6), math.sin(2.6), 0.0, 0.0], dtype=torch.float64)
    with float64():
        rots = PerTask([Rotation(d, "identity") for _ in range(T)])
    model = nn.Module()
    model.rotations = rots
    model.task_parameters = lambda t: list(rots[t].parameters())
    x = torch.randn(N, d, dtype=torch.float64)
    method = RotoGrad(T, rotation_lr=0.05).double()

    def step():
        z = x.clone().requires_grad_(True)
        losses = torch.stack([(rots[t](z) @ wt).mean() for t, wt in enumerate((w1, w2))])
        G = [torch.autograd.grad(losses[t], z, retain_graph=True)[0].flatten() for t in range(T)]
        logs = method.backward(losses, model, z)
        return float(G[0] @ G[1] / (G[0].norm() * G[1].norm())), logs["rotation_loss"].sum().item()

    cos0, loss0 = step()
    for _ in range(150):
        cos, loss = step()
    assert cos0 == pytest.approx(math.cos(2.6), abs=1e-9)
    assert cos > 0.99 and loss < 0.01 * loss0


# --------------------------------------------------------------------------- contract
def test_refuses_a_model_without_rotations_and_a_missing_z():
    T = 3
    model = TinyMTL(T)
    losses, z = task_losses(model, *make_batch(T))
    w = build_weighting("rotograd", T)
    assert w.needs_representation and not w.separable and w.not_separable_because
    with pytest.raises(TypeError, match="sharing: rotograd"):
        w.backward(losses, model, z)
    with pytest.raises(TypeError, match="sharing: rotograd"):
        w.model_parameters_it_steps(model)
    rot_model, x, y = toy(2)
    with pytest.raises(TypeError, match="2 rotations for 3 tasks"):
        w.model_parameters_it_steps(rot_model)
    w2 = build_weighting("rotograd", 2)
    with pytest.raises(ValueError, match="needs z"):
        w2.backward(forward(rot_model, x, y)[0], rot_model, None)
    with pytest.raises(TypeError, match="rotation_lr"):
        build_weighting("rotograd", 2, rotation_lr_=1.0)


def test_model_parameters_it_steps_are_exactly_the_rotations():
    torch.manual_seed(0)
    m = build_model("resnet18", "rotograd", [2, 3], width_mult=0.25)
    assert isinstance(m, RotoGradSharing) and m.rotation_size == m.feature_dim == 128
    w = build_weighting("rotograd", 2)
    steps = w.model_parameters_it_steps(m)
    assert [id(p) for p in steps] == [id(p) for p in m.rotation_parameters()]
    assert not {id(p) for p in steps} & {id(p) for p in m.shared_parameters()}
    assert all(any(p is q for q in m.task_parameters(t)) for t, p in enumerate(steps))
    assert w.extra_parameters() == [] and w.parameters_for_model_optimizer() == []
    with pytest.raises(ValueError, match="rotation_size"):
        build_model("resnet18", "rotograd", [2], width_mult=0.25, rotation_size=129)


def test_rotation_lr_follows_the_model_schedule():
    model, x, y = toy(2)
    opt = torch.optim.Adam(model.encoder.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    w = RotoGrad(2, rotation_lr=1e-4)
    w.bind_training(None, opt)
    opt.step(), sched.step()
    losses, z = forward(model, x, y)
    w.backward(losses, model, z)
    assert w._optimizer.param_groups[0]["lr"] == pytest.approx(5e-5)
    fixed = RotoGrad(2, rotation_lr=1e-4, follow_lr_schedule=False)
    fixed.bind_training(None, opt)
    losses, z = forward(model, x, y)
    fixed.backward(losses, model, z)
    assert fixed._optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_state_dict_resumes_identically_float64():
    """2 steps, save (model, method), rebuild both, load, 2 more steps == 4 uninterrupted steps
    (the rotation optimizer's Adam moments, the step counter and G^0 / L^0 travel; burn-in 3)."""
    def run(model, w, x, y, n):
        for _ in range(n):
            losses, z = forward(model, x, y)
            w.backward(losses, model, z)
            with torch.no_grad():
                for p in [*model.encoder.parameters(), *model.heads.parameters()]:
                    p -= 0.1 * p.grad
                    p.grad = None

    model, x, y = toy(2)
    w = RotoGrad(2, rotation_lr=0.05, burn_in_period=3, normalize_losses=True).double()
    run(model, w, x, y, 4)

    model2, _, _ = toy(2)
    w2 = RotoGrad(2, rotation_lr=0.05, burn_in_period=3, normalize_losses=True).double()
    run(model2, w2, x, y, 2)
    saved_model, saved_w = copy.deepcopy(model2.state_dict()), copy.deepcopy(w2.state_dict())
    model3, _, _ = toy(2, seed=5)
    w3 = RotoGrad(2, rotation_lr=0.05, burn_in_period=3, normalize_losses=True).double()
    w3.model_parameters_it_steps(model3)                             # as the trainer: bind, then load
    model3.load_state_dict(saved_model)
    w3.load_state_dict(saved_w)
    assert w3.step_count == 2 and w3._optimizer.state
    run(model3, w3, x, y, 2)
    for (name, p), q in zip(model.state_dict().items(), model3.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-13, rtol=1e-12, msg=name)
    torch.testing.assert_close(w.initial_grad_norms, w3.initial_grad_norms, atol=1e-14, rtol=1e-12)


def test_docstring_examples_run():
    import doctest
    import importlib
    for name in ("mtlrepro.methods.rotograd", "mtlrepro.models.sharing.rotograd"):
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, name


# --------------------------------------------------------------------------- CoNAL's counts
def printed_params(table: str, row: str) -> float:
    d = yaml.safe_load((ROOT / "reproduce" / "conal" / f"{table}.yaml").read_text())
    (r,) = [r for r in d["rows"] if r["key"] == row]
    return float(r["cells"]["params"])


@pytest.mark.parametrize("table, out_dims, hard_sharing", [("table2", [7, 1], 55_760_968),
                                                          ("table3", [13, 1, 3], 71_888_721)])
def test_full_size_parameter_count_with_rotation_size_1024(table, out_dims, hard_sharing):
    m = build_model("resnet50_dilated", "rotograd", out_dims, rotation_size=1024)
    n = count_parameters(m.parameters())
    assert m.feature_dim == 2048
    assert n == hard_sharing + len(out_dims) * 1024 ** 2            # 57,858,120 / 75,034,449
    assert n == m.active_parameter_count(0)
    assert round(n / 1e6, 2) == printed_params(table, "rotograd")


# --------------------------------------------------------------------------- harness
def test_trains_in_a_tiny_recipe(tmp_path, tiny_env):
    from mtlrepro.profiles import apply_profile
    from mtlrepro.recipe import get_recipe
    from mtlrepro.train import train_run
    recipe = apply_profile(get_recipe("etr_nlp/table4/hard_sharing_g8"), "tiny").with_overrides(
        sharing="rotograd", weighting="rotograd", epochs=1)
    record = train_run(recipe, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    assert record.status == "finished" and math.isfinite(record.epochs[0].train_loss)
    weights = record.epochs[0].task_weights
    assert len(weights) == 8 and all(math.isfinite(v) and v > 0 for v in weights)
    assert len(record.epochs[0].weighting_logs["rotation_loss"]) == 8
