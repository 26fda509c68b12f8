"""CoNAL's search: the supernet's mixing, Eq. 5's conflict noticing, the architecture step, the split."""
import numpy as np
import pytest
import torch
from torch import nn

from mtlrepro.models import build_model
from mtlrepro.problems.base import Problem, Split
from mtlrepro.search.conal import CoNALSearch, noticed_mask
from mtlrepro.search.split import SearchValBatches, search_split


def test_noticed_mask_zeroes_the_first_conflicted_module_and_every_later_one():
    neg = torch.tensor([[False], [False], [True], [False], [False]])
    assert noticed_mask(neg).tolist() == [False, False, True, True, True]
    assert noticed_mask(torch.zeros(5, 3, dtype=torch.bool)).tolist() == [False] * 5


class _ChainToy(nn.Module):
    """Three shared 'modules' w0, w1, w2 and one private weight per task: L_t = c_t . (w0, w1, w2) +
    h_t^2, so grad_t^(k) = c_t[k] exactly and the conflicts are chosen by hand."""

    def __init__(self, c: torch.Tensor):
        super().__init__()
        self.c = c
        self.w = nn.ParameterList([nn.Parameter(torch.ones(2, dtype=torch.float64)) for _ in range(3)])
        self.h = nn.ParameterList([nn.Parameter(torch.tensor(0.5, dtype=torch.float64)) for _ in range(2)])
        self.alpha = nn.Parameter(torch.zeros(2, 4, dtype=torch.float64))

    def losses(self) -> torch.Tensor:
        return torch.stack([sum((self.c[t, k] * self.w[k]).sum() for k in range(3)) + self.h[t] ** 2
                            for t in range(2)])

    def arch_parameters(self):
        return [self.alpha]

    def shared_module_parameters(self):
        return [[w] for w in self.w]

    def branch_probabilities(self):
        return torch.softmax(self.alpha, -1)


def test_eq5_zeroes_exactly_the_modules_it_says_on_a_constructed_two_task_case():
    # module 0: gradients (1,1)/(1,0) agree; module 1: (1,0)/(-1,0) conflict; module 2 agrees again
    c = torch.tensor([[[1.0, 1.0], [1.0, 0.0], [0.0, 2.0]],
                      [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    toy = _ChainToy(c)
    logs = CoNALSearch(2).backward(toy.losses(), toy)
    assert torch.equal(toy.w[0].grad, c[0, 0] + c[1, 0])          # kept: the sum over tasks
    assert toy.w[1].grad is None and toy.w[2].grad is None        # the conflict and every later module
    assert toy.h[0].grad.item() == 1.0 and toy.h[1].grad.item() == 1.0   # private: always 2 h_t
    assert toy.alpha.grad is None                                 # the weight step never moves alpha
    assert logs["frozen"].tolist() == [0.0, 1.0, 1.0]
    toy2 = _ChainToy(c)
    CoNALSearch(2, conflict_noticing=False).backward(toy2.losses(), toy2)   # the released script's behaviour
    assert torch.equal(toy2.w[2].grad, c[0, 2] + c[1, 2])


def _onehot(model, points):
    with torch.no_grad():
        model.alpha.fill_(-1e9)
        for t, p in enumerate(points):
            model.alpha[t, p] = 0.0


def test_supernet_with_one_hot_alpha_is_the_branched_model_it_discretises_to():
    torch.manual_seed(0)
    points = [5, 3, 0]
    sup = build_model("resnet18", "conal_supernet", [2, 3, 1]).double()
    _onehot(sup, points)
    exported = sup.export_architecture()
    assert exported["argmax_points"] == points and exported["branch_points"] == [3, 3, 0]  # 0 is alone after 2
    arch = {k: v for k, v in sup.export_architecture().items() if k in ("n_tasks", "groups")}
    br = build_model("resnet18", "branched", [2, 3, 1], architecture=arch).double()
    for k, level in enumerate(br.architecture.groups):
        for i, g in enumerate(level):
            src = sup.own[g[0]] if points[g[0]] <= k else sup.encoder   # owned from the branch point on
            br.blocks[k][i].branch_module(k).load_state_dict(src.branch_module(k).state_dict())
    for t in range(3):
        br.heads[t].load_state_dict(sup.heads[t].state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for a, b in zip(sup(x), br(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_architecture_step_moves_alpha_only_and_leaves_weight_gradients_alone():
    torch.manual_seed(0)
    sup = build_model("resnet18", "conal_supernet", [2, 2])
    method = CoNALSearch(2, arch_lr=0.1)
    arch = method.model_parameters_it_steps(sup)
    assert arch == [sup.alpha]
    x, ys = torch.randn(4, 3, 32, 32), [torch.randn(4, 2), torch.randn(4, 2)]
    method.bind_training(lambda t, o, y: ((o - y) ** 2).mean())
    method.bind_validation(lambda: (x, ys))
    before = {n: p.detach().clone() for n, p in sup.named_parameters()}
    method.before_step(sup)
    moved = {n for n, p in sup.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"alpha"} and all(p.grad is None for p in sup.parameters())


def test_search_split_is_the_released_one():
    n = 795
    train = Split(torch.arange(n).view(n, 1).float(), [torch.arange(n)])
    problem = Problem("p", ["a"], [1], (1,), train, train, "val", True, {}, lambda x: x, None, None)
    p2, val, info = search_split(problem, 0.2, 688)
    expected = np.random.RandomState(688).choice(np.arange(n), size=636, replace=False)
    assert (info["search_train"], info["search_val"]) == (636, 159)
    assert p2.train.targets[0].tolist() == expected.tolist()
    assert sorted(p2.train.targets[0].tolist() + val.targets[0].tolist()) == list(range(n))
    batches = SearchValBatches(p2, val, 64)       # in order, cycling, the last one short
    sizes = [batches.next()[0].shape[0] for _ in range(4)]
    assert sizes == [64, 64, 31, 64]
    batches.set_epoch(1, 3)
    assert torch.equal(batches.next()[0], val.inputs[:64])
    with pytest.raises(ValueError):
        search_split(problem, 0.0)
