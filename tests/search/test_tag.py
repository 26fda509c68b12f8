"""TAG (Fifty et al. 2021): the look-ahead affinity by hand, the untouched model, the grouping search
against brute force, the export, and a tiny search -> retrain through the harness."""
from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from mtlrepro.methods import build_weighting
from mtlrepro.methods.weightings.equal import EqualWeighting
from mtlrepro.search.architecture import BranchedArchitecture
from mtlrepro.search.grouping import best_grouping, grouping_value, set_partitions
from mtlrepro.search.tag import TAGAffinity, lookahead_steps

from ..harness_utils import tiny_env  # noqa: F401 (fixture)


# --------------------------------------------------------------------------- tiny float64 models
class Linear(nn.Module):
    """o_t = c_t * (x . theta): theta shared, c_t task t's head."""

    def __init__(self, D: int, T: int):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(D, dtype=torch.float64))
        self.heads = nn.Parameter(torch.randn(T, dtype=torch.float64))

    def shared_parameters(self):
        return [self.theta]

    def forward(self, x):
        return [self.heads[t] * (x @ self.theta) for t in range(self.heads.shape[0])]


def mse(t, out, y):
    return 0.5 * ((out - y) ** 2).mean()


def linear_case(T=3, D=4, B=5):
    torch.manual_seed(1)
    model = Linear(D, T)
    x = torch.randn(B, D, dtype=torch.float64)
    ys = [torch.randn(B, dtype=torch.float64) for _ in range(T)]
    return model, x, ys


def losses_of(model, x, ys):
    return torch.stack([mse(t, o, y) for t, (o, y) in enumerate(zip(model(x), ys))])


def by_hand(theta, c, x, ys, step_of):
    """Z[i, j] / lr with theta'_i = theta - step_of(g_i) (numpy, float64)."""
    x, ys = x.numpy(), [y.numpy() for y in ys]

    def L(j, th):
        return 0.5 * np.mean((c[j] * x @ th - ys[j]) ** 2)

    def grad(i, th):
        return np.mean(((c[i] * x @ th - ys[i]) * c[i])[:, None] * x, axis=0)

    T = len(c)
    return np.array([[1.0 - L(j, theta - step_of(grad(i, theta))) / L(j, theta) for j in range(T)]
                     for i in range(T)])


# --------------------------------------------------------------------------- the look-ahead
def test_affinity_by_hand_plain_step_and_sgd_momentum_with_weight_decay():
    model, x, ys = linear_case()
    lr, mu, wd = 0.05, 0.9, 0.01
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mu, weight_decay=wd)
    w = TAGAffinity(3, affinity_every=1, lookahead="sgd")
    w.bind_training(mse, opt)
    theta0, c0 = model.theta.detach().numpy().copy(), model.heads.detach().numpy().copy()

    w.bind_batch(x, ys)
    logs = w.backward(losses_of(model, x, ys), model)
    expected = by_hand(theta0, c0, x, ys, lambda g: lr * g) / lr
    np.testing.assert_allclose(logs["affinity"].numpy(), expected, rtol=1e-12, atol=1e-12)
    opt.step()   # the plain-sum step: its momentum buffer is sum_t g_t(theta0) + wd * theta0
    buf = sum(np.mean(((c0[t] * x.numpy() @ theta0 - ys[t].numpy()) * c0[t])[:, None] * x.numpy(), axis=0)
              for t in range(3)) + wd * theta0
    np.testing.assert_allclose(opt.state[model.theta]["momentum_buffer"].numpy(), buf, rtol=1e-12)

    theta1, c1 = model.theta.detach().numpy().copy(), model.heads.detach().numpy().copy()
    w.lookahead = "optimizer"   # the optimizer's own rule: lr * (mu * buf + g + wd * theta)
    opt.zero_grad()
    w.bind_batch(x, ys)
    logs = w.backward(losses_of(model, x, ys), model)
    expected = by_hand(theta1, c1, x, ys, lambda g: lr * (mu * buf + g + wd * theta1)) / lr
    np.testing.assert_allclose(logs["affinity"].numpy(), expected, rtol=1e-10, atol=1e-12)
    assert w.n_measurements == 2
    np.testing.assert_allclose(w.affinity().numpy(), (w.affinity_sum / 2).numpy())


def _optimizers():
    return {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
        "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01, dampening=0.1),
        "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
        "adam": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.01),
        "adam_amsgrad": lambda ps: torch.optim.Adam(ps, lr=0.01, amsgrad=True, betas=(0.8, 0.9)),
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    }


@pytest.mark.parametrize("name", sorted(_optimizers()))
@pytest.mark.parametrize("warm_steps", [0, 2])
def test_optimizer_lookahead_is_the_step_that_optimizer_takes_on_one_task_gradient(name, warm_steps):
    make = _optimizers()[name]
    model, x, ys = linear_case()
    opt = make(model.parameters())
    for _ in range(warm_steps):   # state (momentum, moments, step count) from plain-sum steps
        opt.zero_grad()
        losses_of(model, x, ys).sum().backward()
        opt.step()
    losses = losses_of(model, x, ys)
    state = copy.deepcopy(opt.state_dict())
    for i in range(3):
        (g,) = torch.autograd.grad(losses[i], [model.theta], retain_graph=True)
        (delta,) = lookahead_steps([model.theta], [g], opt, "optimizer")
        _assert_same((model.state_dict(), opt.state_dict()), (model.state_dict(), state))
        twin = copy.deepcopy(model)
        twin_opt = make(twin.parameters())
        twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        twin.theta.grad, twin.heads.grad = g.clone(), None   # task i's gradient alone, shared part only
        twin_opt.step()
        torch.testing.assert_close(model.theta.detach() - delta, twin.theta.detach(), rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(twin.heads, model.heads)


# --------------------------------------------------------------------------- nothing changes
class WithBN(nn.Module):
    """A hard-sharing MLP whose shared encoder has BatchNorm (running statistics are buffers) and
    dropout (draws from the global RNG)."""

    def __init__(self, T: int = 3):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.2))
        self.heads = nn.ModuleList([nn.Linear(6, 1) for _ in range(T)])

    def shared_parameters(self):
        return list(self.encoder.parameters())

    def forward(self, x):
        z = self.encoder(x)
        return [h(z).squeeze(1) for h in self.heads]


def _snapshot(model, opt):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def _assert_same(a, b):
    (ma, oa), (mb, ob) = a, b
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    for k in oa["state"]:
        assert all(torch.equal(torch.as_tensor(oa["state"][k][s]), torch.as_tensor(ob["state"][k][s]))
                   for s in oa["state"][k])


@pytest.mark.parametrize("batch_source", ["training", "stream"])
def test_the_measurement_changes_nothing_and_training_is_the_plain_sum(batch_source):
    torch.manual_seed(0)
    T = 3
    model = WithBN(T).double()
    plain = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=0.01)
    w = TAGAffinity(T, affinity_every=1, lookahead_batch=batch_source)
    w.bind_training(mse, opt)
    eq = EqualWeighting(T)
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 4, generator=g, dtype=torch.float64),
                [torch.randn(8, generator=g, dtype=torch.float64) for _ in range(T)]) for _ in range(4)]
    w.bind_validation(iter(batches[2:] * 3).__next__)
    for step in range(3):
        x, ys = batches[step % 2]
        opt.zero_grad()
        plain_opt.zero_grad()
        torch.manual_seed(100 + step)
        losses = losses_of(model, x, ys)          # the training forward (BN statistics move once)
        before = _snapshot(model, opt)
        rng = torch.get_rng_state()
        w.bind_batch(x, ys)
        logs = w.backward(losses, model)
        after_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        for p in model.parameters():
            p.grad = None
        _assert_same(_snapshot(model, opt), before)     # parameters, BN buffers, optimizer state
        assert torch.equal(torch.get_rng_state(), rng)
        torch.manual_seed(100 + step)             # the same dropout masks
        eq.backward(losses_of(plain, x, ys), plain)
        for n, p in plain.named_parameters():
            assert torch.equal(after_grads[n], p.grad), n
            model.get_parameter(n).grad = after_grads[n]
        opt.step()
        plain_opt.step()
        assert logs["affinity"].shape == (T, T) and torch.isfinite(logs["affinity"]).all()
        assert torch.equal(logs["task_weights"], torch.ones(T))
    for (n, p), q in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(p, q), n            # three measured steps: the same trajectory as plain HPS
    assert w.n_measurements == 3


def test_training_batch_must_be_handed_over_and_the_schedule_is_every_k_steps():
    model, x, ys = linear_case()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = TAGAffinity(3, affinity_every=3)
    w.bind_training(mse, opt)
    with pytest.raises(RuntimeError, match="bind_batch"):
        w.backward(losses_of(model, x, ys), model)
    w = TAGAffinity(3, affinity_every=3)
    w.bind_training(mse, opt)
    measured = []
    for _ in range(7):
        w.bind_batch(x, ys)
        measured.append("affinity" in w.backward(losses_of(model, x, ys), model))
    assert measured == [True, False, False, True, False, False, True]
    fresh = TAGAffinity(3, affinity_every=3)
    fresh.load_state_dict(w.state_dict())              # what a checkpoint restores
    assert fresh.n_measurements == 3 and torch.equal(fresh.affinity(), w.affinity())
    fresh.bind_training(mse, opt)
    fresh.bind_batch(x, ys)
    assert "affinity" not in fresh.backward(losses_of(model, x, ys), model)   # step 7: not a multiple of 3


def test_options_are_checked():
    with pytest.raises(ValueError, match="lookahead"):
        TAGAffinity(3, lookahead="adam")
    with pytest.raises(ValueError, match="lookahead_batch"):
        TAGAffinity(3, lookahead_batch="val")
    with pytest.raises(ValueError, match="n_groups"):
        TAGAffinity(3, n_groups=4)
    with pytest.raises(TypeError, match="tag_affinity"):
        build_weighting("tag_affinity", 3, n_group=2)
    assert build_weighting("tag_affinity", 3, lookahead_batch="stream").needs_validation_batches
    assert not build_weighting("tag_affinity", 3).needs_validation_batches


# --------------------------------------------------------------------------- the grouping search
def test_docstring_examples_run():
    import doctest
    import importlib
    for name in ("mtlrepro.search.grouping", "mtlrepro.search.tag"):
        result = doctest.testmod(importlib.import_module(name))
        assert result.failed == 0, name
    assert importlib.import_module("mtlrepro.search.grouping").__doc__.count(">>>") >= 2


def test_set_partitions_lists_each_partition_once():
    for n, k in [(1, 1), (4, 2), (5, 3), (6, 2), (6, 6), (7, 3)]:
        parts = list(set_partitions(n, k))
        canon = {frozenset(map(frozenset, p)) for p in parts}
        brute = {frozenset(frozenset(t for t in range(n) if lab[t] == b) for b in range(k))
                 for lab in itertools.product(range(k), repeat=n) if len(set(lab)) == k}
        assert len(parts) == len(canon) == len(brute) and canon == brute
    assert len(list(set_partitions(9, 2))) == 255


def _oracle(A, G, score, singleton=-1e6):
    """Brute force over label vectors, the objective written independently."""
    T = len(A)
    best = -math.inf
    for lab in itertools.product(range(G), repeat=T):
        if len(set(lab)) != G:
            continue
        total = 0.0
        for a in range(T):
            mates = [b for b in range(T) if b != a and lab[b] == lab[a]]
            if not mates:
                total += singleton
            else:
                total += sum(A[b][a] for b in mates) / (len(mates) if score == "mean" else 1)
        best = max(best, total / T)
    return best


@pytest.mark.parametrize("score", ["mean", "sum"])
def test_best_grouping_equals_brute_force_on_random_matrices(score):
    rng = np.random.default_rng(0)
    for T, G in [(5, 2), (6, 2), (6, 3), (7, 2)]:
        for _ in range(5):
            A = rng.normal(size=(T, T))
            g = best_grouping(A, G, score=score)
            assert len(g.groups) == G and sorted(t for grp in g.groups for t in grp) == list(range(T))
            assert g.score == pytest.approx(_oracle(A, G, score), abs=1e-12)
            assert g.score == pytest.approx(grouping_value(A, g.groups, score)[0], abs=1e-12)


def test_the_two_scores_can_disagree_and_transposing_never_matters():
    rng = np.random.default_rng(1)
    disagree = 0
    for _ in range(40):
        A = rng.normal(size=(7, 7))
        mean, total = best_grouping(A, 2, "mean"), best_grouping(A, 2, "sum")
        disagree += mean.groups != total.groups
        for s in ("mean", "sum"):   # over partitions only ordered pairs within a group count
            assert best_grouping(A.T, 2, s).groups == best_grouping(A, 2, s).groups
    assert disagree > 0


def test_planted_groups_of_the_celeba_size_are_found():
    rng = np.random.default_rng(2)
    planted = ((0, 2, 5, 7), (1, 3, 4, 6, 8))
    label = {t: i for i, g in enumerate(planted) for t in g}
    A = np.array([[(1.0 if label[i] == label[j] else -1.0) + 0.3 * rng.normal() for j in range(9)]
                  for i in range(9)])
    g = best_grouping(A, 2)
    assert g.groups == planted
    scores = grouping_value(A, planted)[1]
    assert g.task_scores == tuple(scores)
    three = best_grouping(A, 3).groups   # a third group splits a planted one, never mixes two
    assert all(any(set(grp) <= set(p) for p in planted) for grp in three)


def test_a_task_scores_the_affinity_onto_it_from_its_group():
    A = np.zeros((4, 4))
    A[1, 0], A[0, 1] = 3.0, 1.0                    # 1 -> 0 helps more than 0 -> 1
    A[2, 3], A[3, 2] = 4.0, 2.0
    value, scores = grouping_value(A, ((0, 1), (2, 3)))
    assert scores.tolist() == [3.0, 1.0, 2.0, 4.0] and value == 2.5
    _, scores = grouping_value(A, ((0, 1, 2), (3,)), score="sum")
    assert scores.tolist() == [3.0, 1.0, 0.0, -1e6]
    _, scores = grouping_value(A, ((0, 1, 2), (3,)), score="mean")
    assert scores.tolist() == [1.5, 0.5, 0.0, -1e6]


def test_a_singleton_is_avoided_when_possible_and_scored_when_not():
    A = np.zeros((3, 3))
    A[0, 1], A[1, 0], A[2, 0], A[0, 2] = 5.0, 5.0, 1.0, 1.0
    g = best_grouping(A, 2)
    assert g.groups == ((0, 1), (2,)) and g.task_scores == (5.0, 5.0, -1e6)
    assert best_grouping(A, 2, singleton_score=0.0).score == pytest.approx(10.0 / 3)
    assert best_grouping(np.zeros((4, 4)), 2).groups == ((0, 1), (2, 3))   # ties: the first partition listed
    with pytest.raises(ValueError, match="square"):
        best_grouping(np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="non-finite"):
        best_grouping(np.full((3, 3), np.nan), 2)


def test_export_is_a_branched_architecture_with_one_partition_per_module():
    from mtlrepro.models import build_model
    torch.manual_seed(0)
    model = build_model("resnet18", "hard_sharing", [1, 1, 1, 1])
    w = TAGAffinity(4, lookahead_lr=0.1, lookahead="sgd")
    assert w.model_parameters_it_steps(model) == []
    with pytest.raises(RuntimeError, match="no affinity"):
        w.export_architecture()
    A = torch.tensor([[0., 1., -1., -1.], [1., 0., -1., -1.], [-1., -1., 0., 2.], [-1., -1., 2., 0.]])
    w.affinity_sum.copy_(A.double() * 2)
    w.set_extra_state({"steps": 2, "measured": 2, "n_modules": 5})
    arch = w.export_architecture()
    assert arch["groups"] == [[[0, 1], [2, 3]]] * 5 and arch["n_modules"] == 5 and arch["n_tasks"] == 4
    assert arch["affinity"] == A.tolist() and arch["grouping_score"] == 1.5 and arch["method"] == "tag"
    tree = BranchedArchitecture.from_dict(arch)
    assert tree.shared_modules() == [(k, i) for k in range(5) for i in range(2)]
    with pytest.raises(ValueError, match="branch modules"):
        w.model_parameters_it_steps(Linear(3, 4))


# --------------------------------------------------------------------------- through the harness
def _celeba9(**kw):
    from mtlrepro.profiles import apply_profile
    from mtlrepro.recipe import get_recipe
    base = apply_profile(get_recipe("etr_nlp/table4/hard_sharing_g8"), "tiny")
    return dataclasses.replace(base, task_set="conal9", **kw)


def test_a_tiny_search_on_celeba9_and_the_retrain_of_its_two_networks(tmp_path, tiny_env):
    from mtlrepro.train.trainer import train_run
    search = _celeba9(id="conal/table6/tag_search_test", row="tag_search_test", weighting="tag_affinity",
                      weighting_kwargs={"affinity_every": 2, "lookahead_batch": "stream"})
    rec = train_run(search, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    assert rec.status == "finished" and len(rec.epochs) == 2
    per_epoch = [np.array(e.weighting_logs["affinity"]) for e in rec.epochs]   # steps 0 and 2 measured
    assert all(a.shape == (9, 9) and np.isfinite(a).all() for a in per_epoch)
    assert not np.allclose(per_epoch[0], per_epoch[1])
    mean = np.mean(per_epoch, axis=0)
    expected = best_grouping(mean, 2)
    if "architecture" in (rec.artifacts or {}):     # once the trainer exports the weighting's architecture
        arch = rec.artifacts["architecture"]
        np.testing.assert_allclose(np.array(arch["affinity"]), mean, rtol=1e-6)
        assert [tuple(map(tuple, lvl)) for lvl in arch["groups"]] == [expected.groups] * 5
    arch = BranchedArchitecture(9, tuple(expected.groups for _ in range(5))).to_dict()
    retrain = _celeba9(id="conal/table6/tag2_test", row="tag2_test", sharing="branched",
                       sharing_kwargs={"architecture": {k: arch[k] for k in ("n_tasks", "groups")}})
    rec2 = train_run(retrain, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    assert rec2.status == "finished"
    assert rec2.complexity["params_total"] == 2 * 11_176_512 + 9 * (512 + 1)   # two ResNet-18s + 9 heads


def _joint_step_hands_the_batch() -> bool:
    from mtlrepro.train.steps import joint_step
    return "bind_batch" in inspect.getsource(joint_step)


@pytest.mark.skipif(not _joint_step_hands_the_batch(),
                    reason="the joint step does not hand the batch to the weighting yet (bind_batch)")
def test_the_paper_s_same_batch_look_ahead_through_the_harness(tmp_path, tiny_env):
    from mtlrepro.train.trainer import train_run
    search = _celeba9(id="conal/table6/tag_search_train_batch_test", row="tag_search_train_batch_test",
                      weighting="tag_affinity", weighting_kwargs={"affinity_every": 2})
    rec = train_run(search, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    assert rec.status == "finished"
    assert all(np.isfinite(np.array(e.weighting_logs["affinity"])).all() for e in rec.epochs)
