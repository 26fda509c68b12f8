"""BMTAS: the supergraph's hard paths are the branched tree, the resource loss by hand, the schedule,
discretisation, a tiny search through the harness, and the full-size counts behind CoNAL's rows."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from mtlrepro.models import build_model
from mtlrepro.models.interface import count_parameters
from mtlrepro.search.architecture import BranchedArchitecture
from mtlrepro.search.bmtas import BMTASSearch, temperature
from mtlrepro.search.bmtas_resource import BranchingResource, count_flops, set_partitions

from ..harness_utils import tiny_env  # noqa: F401 (fixture)


def _one_hot(model, choices):
    """alpha such that task t takes copy choices[j][t] at searched layer j, with certainty."""
    with torch.no_grad():
        model.alpha.fill_(-1e9)
        for j, row in enumerate(choices):
            for t, c in enumerate(row):
                model.alpha[j, t, c] = 0.0


def _branched_on_supernet_weights(sup, choices):
    arch = {k: v for k, v in sup.export_architecture().items() if k in ("n_tasks", "groups")}
    br = build_model("resnet18", "branched", sup.out_dims, architecture=arch).double()
    copy_of = {k: row for k, row in zip(sup.searched, choices)}
    for k, level in enumerate(br.architecture.groups):
        for i, g in enumerate(level):
            src = copy_of[k][g[0]] if k in copy_of else 0
            br.blocks[k][i].branch_module(k).load_state_dict(sup.copies[src].branch_module(k).state_dict())
    for t in range(sup.n_tasks):
        br.heads[t].load_state_dict(sup.heads[t].state_dict())
    return br


# layer2: {0,1} | {2}; layer3: task 2 takes copy 0 like tasks 0 and 1 but from its own branch; layer4: all apart
CHOICES = [[0, 0, 0], [1, 1, 2], [0, 0, 0], [2, 0, 0]]


def test_hard_one_hot_supergraph_is_the_branched_model_it_discretises_to():
    torch.manual_seed(0)
    sup = build_model("resnet18", "bmtas_supernet", [2, 3, 1]).double()
    _one_hot(sup, CHOICES)
    exported = sup.export_architecture()
    assert exported["groups"] == [[[0, 1, 2]], [[0, 1, 2]], [[0, 1], [2]], [[0, 1], [2]], [[0], [1], [2]]]
    br = _branched_on_supernet_weights(sup, CHOICES)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    sup.eval(), br.eval()
    for a, b in zip(sup(x), br(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    sup.train(), br.train()              # sampled weights are exactly one-hot: the same batch statistics
    sup.set_search_state(False, 0.5)
    for a, b in zip(sup(x), br(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    _one_hot(sup, [[0, 0, 0], [1, 1, 2], [0, 0, 0], [2, 2, 0]])   # a different tree computes something else
    sup.eval()
    assert not torch.allclose(sup(x)[1], br(x)[1])


def test_warmup_runs_task_t_on_copy_t_and_soft_weights_mix_the_copies():
    torch.manual_seed(0)
    sup = build_model("resnet18", "bmtas_supernet", [2, 2]).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    sup.set_search_state(True, 5.0)
    warm = sup(x)
    _one_hot(sup, [[0, 1]] * 4)          # task t on copy t everywhere = the warm-up's networks
    sup.set_search_state(False, 5.0)
    for a, b in zip(warm, sup(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    sup.train()
    with torch.no_grad():
        sup.alpha.zero_()
    sup.eval()
    hard = sup(x)[0]                     # zero alpha: argmax takes copy 0 for both tasks
    sup.train()
    for m in sup.modules():              # batch statistics without touching the running ones
        if isinstance(m, torch.nn.BatchNorm2d):
            m.track_running_stats = False
    torch.manual_seed(1)
    y1, y2 = sup(x)[0], sup(x)[0]
    assert not torch.allclose(y1, y2)    # a fresh Gumbel sample per forward
    y1.sum().backward()
    assert sup.alpha.grad is not None and sup.alpha.grad.abs().sum() > 0   # the relaxation reaches alpha


def test_discretisation_gives_the_refinement_tree_for_random_alphas():
    torch.manual_seed(3)
    sup = build_model("resnet18", "bmtas_supernet", [1, 1, 1, 1])
    for _ in range(20):
        with torch.no_grad():
            sup.alpha.normal_()
        d = sup.export_architecture()
        arch = BranchedArchitecture.from_dict(d)         # validates: partitions that refine (a tree)
        choice = sup.alpha.argmax(-1).tolist()
        for k in range(arch.n_modules):
            for s, t in itertools.combinations(range(4), 2):
                together = all(choice[j][s] == choice[j][t] for j in range(k))   # module k is searched layer k-1
                assert (arch.group_of(k, s) == arch.group_of(k, t)) == together
        assert d["choices"] == choice and len(d["probabilities"]) == 4


def test_resource_by_hand_for_two_tasks_and_two_layers():
    alpha = torch.tensor([[[0.3, -0.2], [1.0, 0.1]], [[-0.5, 0.4], [0.2, 0.2]]], dtype=torch.float64)
    c = torch.tensor([2.0, 7.0], dtype=torch.float64)
    p = alpha.softmax(-1)
    s0 = (p[0, 0] * p[0, 1]).sum()              # both tasks take the same copy of layer 0
    s1 = s0 * (p[1, 0] * p[1, 1]).sum()         # ... and of layer 1
    by_hand = c[0] * (s0 + 2 * (1 - s0)) + c[1] * (s1 + 2 * (1 - s1))
    for est in ("released", "exact"):           # two tasks: the released estimate is exact
        torch.testing.assert_close(BranchingResource(2, c, est)(alpha), by_hand, rtol=0, atol=1e-12)


def _enumerated_cost(alpha, c):
    """E[cost] by enumerating every choice vector of every layer (three tasks, two layers)."""
    T, p = alpha.shape[1], alpha.softmax(-1)
    total = torch.zeros((), dtype=alpha.dtype)
    for a0 in itertools.product(range(T), repeat=T):
        for a1 in itertools.product(range(T), repeat=T):
            prob = torch.prod(torch.stack([p[0, t, a0[t]] * p[1, t, a1[t]] for t in range(T)]))
            groups0 = len(set(a0))
            groups1 = len(set(zip(a0, a1)))
            total = total + prob * (c[0] * groups0 + c[1] * groups1)
    return total


def test_exact_estimator_is_the_expectation_and_the_released_one_over_estimates_it():
    torch.manual_seed(0)
    assert len(set_partitions(3)) == 5 and len(set_partitions(4)) == 15
    alpha = torch.randn(2, 3, 3, dtype=torch.float64)
    c = torch.tensor([1.5, 4.0], dtype=torch.float64)
    truth = _enumerated_cost(alpha, c)
    exact = BranchingResource(3, c, "exact")(alpha)
    released = BranchingResource(3, c, "released")(alpha)
    torch.testing.assert_close(exact, truth, rtol=0, atol=1e-12)
    assert released > exact + 1e-6                  # it misses "choices coarser than the grouping already is"
    P = BranchingResource(3, c, "released").grouping_probabilities(alpha)
    pc = alpha.softmax(-1)
    same = lambda l, s, t: (pc[l, s] * pc[l, t]).sum()   # noqa: E731
    all3 = lambda l: (pc[l, 0] * pc[l, 1] * pc[l, 2]).sum()  # noqa: E731
    # released, partition {0,1}{2} at layer 1: P(choices = {0,1}{2}) * (P_0({012}) + P_0({01}{2}))
    k = BranchingResource(3, c).partitions.index(((0, 1), (2,)))
    p_choice = same(1, 0, 1) - all3(1)
    torch.testing.assert_close(P[1, k], p_choice * (all3(0) + same(0, 0, 1) - all3(0)), rtol=0, atol=1e-12)
    torch.testing.assert_close(P.sum(1), torch.ones(2, dtype=torch.float64))


def test_flop_counter_is_the_released_convention():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    pool = torch.nn.MaxPool2d(2)
    net = torch.nn.Sequential(conv, pool)
    flops, out = count_flops(lambda: net(torch.zeros(1, 3, 8, 8)), net)
    assert out.shape == (1, 4, 4, 4)
    assert flops == (2 * 27 - 1) * 4 * 8 * 8 + 2 * 2 * 4 * 4 * 4


def test_temperature_schedule_is_the_released_linear_one():
    taus = [temperature(e, 160, 8) for e in range(160)]
    assert taus[:9] == [5.0] * 9                    # warm-up epochs, then the first search epoch at 5
    assert taus[-1] == pytest.approx(0.1) and taus[84] == pytest.approx(5 - 76 / 151 * 4.9)
    assert [temperature(e, 2, 0) for e in range(2)] == [5.0, pytest.approx(0.1)]


def test_architecture_step_moves_alpha_only_with_the_resource_counted_per_task():
    torch.manual_seed(0)
    sup = build_model("resnet18", "bmtas_supernet", [2, 2])
    x, ys = torch.randn(4, 3, 32, 32), [torch.randn(4, 2), torch.randn(4, 2)]
    steps = {}
    for per_task in (True, False):
        with torch.no_grad():
            sup.alpha.copy_(torch.arange(24.0).view(4, 2, 3)[:, :, :2] / 10)
        m = BMTASSearch(2, resource_weight=0.5, resource_per_task=per_task, epochs=4, arch_update="step")
        m.model_parameters_it_steps(sup)
        m._arch_opt = torch.optim.SGD([sup.alpha], lr=1.0)           # the step is then minus the gradient
        m.bind_training(lambda t, o, y: 0.0 * o.sum())             # the resource term alone
        m.bind_validation(lambda: (x, ys))
        before = {n: p.detach().clone() for n, p in sup.named_parameters()}
        m.on_epoch_start(0)
        m.before_step(sup)
        moved = {n for n, p in sup.named_parameters() if not torch.equal(p, before[n])}
        assert moved == {"alpha"} and all(p.grad is None for p in sup.parameters())
        steps[per_task] = sup.alpha.detach() - before["alpha"]
        a = before["alpha"].clone().requires_grad_(True)
        expected = -0.5 * torch.autograd.grad(m.resource_module(sup, x.shape[1:])(a), [a])[0]
        torch.testing.assert_close(steps[per_task], expected * (2 if per_task else 1), rtol=1e-5, atol=1e-7)
    assert steps[True].abs().sum() > 0


@pytest.mark.slow
def test_tiny_search_through_the_harness_exports_a_tree_branched_retrains(tmp_path, tiny_env):
    from mtlrepro.profiles import apply_profile
    from mtlrepro.recipe import get_recipe
    from mtlrepro.train.trainer import train_run
    recipe = dataclasses.replace(apply_profile(get_recipe("conal/table3/conal_search"), "tiny"),
                                 sharing="bmtas_supernet", weighting="bmtas_search", grad_clip=None,
                                 weighting_kwargs={"epochs": 2, "warmup_epochs": 1, "resource_weight": 0.2,
                                                   "resource_normalise": True},
                                 epochs=2, batch_size=2, max_steps_per_epoch=1)
    rec = train_run(recipe, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    arch = rec.artifacts["architecture"]
    tree = BranchedArchitecture.from_dict(arch)
    assert tree.n_tasks == 3 and arch["method"] == "bmtas"
    logs = [e.weighting_logs for e in rec.epochs]
    assert [lg["warmup"] for lg in logs] == [1.0, 0.0] and logs[1]["tau"] == pytest.approx(5.0)
    assert "arch_loss" in logs[1] and 1.0 <= logs[1]["resource"] <= 3.0
    assert "arch_loss" not in logs[0]
    assert arch["probabilities"] != [[[1 / 3] * 3] * 3] * 4        # alpha moved in the search epoch
    retrain = build_model("resnet50_dilated", "branched", [13, 1, 3], head="aspp",
                          architecture={k: arch[k] for k in ("n_tasks", "groups")})
    assert retrain.architecture == tree


# ---- full size: the counts behind CoNAL's BMTAS rows (dilated ResNet-50 + one ASPP head per task) ----
def _count(sharing, dims, **kw):
    return count_parameters(build_model("resnet50_dilated", sharing, dims, head="aspp", **kw).parameters())


def test_full_size_branched_counts_are_stl_minus_the_shared_copies():
    enc = build_model("resnet50_dilated", "hard_sharing", [1], head="aspp").encoder
    size = [count_parameters(enc.branch_module(k).parameters()) for k in range(5)]
    for dims, groups, saved in [
        ([7, 1], [[[0, 1]], [[0, 1]], [[0], [1]], [[0], [1]], [[0], [1]]], size[0] + size[1]),
        ([13, 1, 3], [[[0, 1, 2]]] * 3 + [[[0], [1], [2]]] * 2, 2 * (size[0] + size[1] + size[2])),
    ]:
        stl = _count("single_task", dims)
        n = _count("branched", dims, architecture={"n_tasks": len(dims), "groups": groups})
        assert n == stl - saved
        print(f"{len(dims)} tasks: STL {stl}, branched {n} ({n / 1e6:.3f}M)")


def test_full_size_supernet_holds_t_copies_of_the_searched_modules():
    enc = build_model("resnet50_dilated", "hard_sharing", [1], head="aspp").encoder
    stem = count_parameters(enc.branch_module(0).parameters())
    sup = build_model("resnet50_dilated", "bmtas_supernet", [7, 1], head="aspp")
    stl = _count("single_task", [7, 1])
    assert count_parameters(sup.parameters()) == stl - stem + 4 * 2 * 2   # one stem; alpha: 4 layers x T x T
