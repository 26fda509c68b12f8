"""Update schemes x weightings: every pair is applied as the table in ``train/steps.py`` says, or
rejected before anything trains (issue 10, item 8: no weighting is dropped silently)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtlrepro.methods import WEIGHTINGS, build_weighting
from mtlrepro.train.steps import STEPS

T = 3
#: every registered method, written out (a new one must be added here with its pair decisions)
ALL_METHODS = {"equal", "hard_sharing", "scalar", "uw", "uncertainty", "dwa", "rlw", "rdw", "gradnorm",
               "auto_lambda", "mgda_ub", "mgda", "pcgrad", "cagrad", "gradvac", "nash_mtl", "pareto_mtl", "imtl",
               "rotograd", "conal_search", "ltb_search", "tag_affinity",
               "bmtas_search", "conal_pro_search", "mtl_nas_search",
               "conal_partial_search"}
#: the loss weightings whose objective is a fixed sum_t f_t(L_t) within a batch
SEPARABLE = {"equal", "hard_sharing", "scalar", "uw", "uncertainty", "dwa", "rlw", "rdw"}
REJECTED = {(u, w) for u in ("steady_state", "synchronized") for w in ALL_METHODS - SEPARABLE}


class JointTiny(nn.Module):
    """Hard sharing: ``model(x)`` gives all heads; ``encode`` / ``decode`` for MGDA-UB."""
    task_conditional = False

    def __init__(self, n_tasks: int = T):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(n_tasks))

    def encode(self, x):
        return self.enc(x)

    def decode(self, z, t):
        return self.heads[t](z).squeeze(-1)

    def forward(self, x):
        z = self.encode(x)
        return [self.decode(z, t) for t in range(len(self.heads))]

    def last_shared_layer(self):
        return self.enc[0]

    def shared_parameters(self):
        return list(self.enc.parameters())


class CondTiny(JointTiny):
    """Task-conditional: ``model(x, task=t)``; optionally advertises batched task passes."""
    task_conditional = True

    def __init__(self, n_tasks: int = T, batched: bool = False):
        super().__init__(n_tasks)
        self.supports_batched_tasks = batched
        self.forward_tasks_calls: list[list[int]] = []

    def forward(self, x, task=None):
        return self.decode(self.encode(x), task)

    def forward_tasks(self, x, tasks):
        self.forward_tasks_calls.append(list(tasks))
        return [self(x, task=t) for t in tasks]


class Problem:
    n_tasks = T

    def task_loss(self, t, out, y):
        return ((out - y) ** 2).mean() * (t + 1)  # unequal scales, so weightings matter


def batch():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 6, generator=g, dtype=torch.float64)
    return x, [torch.randn(16, generator=g, dtype=torch.float64) for _ in range(T)]


def model_for(update: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return (JointTiny() if update == "joint" else CondTiny(**kw)).double()


def run(update, model, weighting, logs=None, **kw):
    x, targets = batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    extra = {"logs": logs} if logs is not None else {}
    return STEPS.get(update)(model, weighting, opt, Problem(), x, targets, **extra, **kw)


# --------------------------------------------------------------------------- the table
@pytest.mark.parametrize("update", ["joint", "steady_state", "synchronized"])
@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_check_update_weighting_implements_or_rejects_every_pair(update, name):
    from mtlrepro.train.steps import check_update_weighting, supported_weightings
    assert set(STEPS.names()) == {"joint", "steady_state", "synchronized"}
    assert set(WEIGHTINGS.names()) == ALL_METHODS
    if (update, name) in REJECTED:
        with pytest.raises(ValueError) as e:
            check_update_weighting(update, name)
        msg = str(e.value)
        assert f"update {update!r} with weighting {name!r}" in msg
        assert "equal" in msg and "joint" in msg  # the alternatives
        assert name not in supported_weightings(update)
    else:
        check_update_weighting(update, name)
        assert name in supported_weightings(update)


def test_check_update_weighting_unknown_names():
    from mtlrepro.registry import UnknownKeyError
    from mtlrepro.train.steps import check_update_weighting
    with pytest.raises(UnknownKeyError, match="synchronized"):
        check_update_weighting("synchronised", "equal")
    with pytest.raises(UnknownKeyError, match="gradnorm"):
        check_update_weighting("joint", "gradnrom")


@pytest.mark.parametrize("update,name", sorted(REJECTED))
def test_one_task_per_forward_steps_refuse_non_separable_weightings(update, name):
    """Before: the step trained with the plain sum and never called GradNorm / MGDA-UB."""
    model = model_for(update)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=f"weighting {name!r}"):
        run(update, model, build_weighting(name, T))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), "nothing may train before the error"


# --------------------------------------------------------------------------- the implemented pairs
def _reference(update: str, c: float) -> tuple[list[torch.Tensor], float]:
    """Hand-written schedule: steady_state steps on c*L_t per task; synchronized sums c*grad L_t.
    Returns the parameters after the step and the plain sum of the task losses seen."""
    model = model_for(update)
    x, targets = batch()
    prob = Problem()
    lr, seen = 0.1, 0.0
    if update == "steady_state":
        for t in range(T):
            model.zero_grad(set_to_none=True)
            loss = prob.task_loss(t, model(x, task=t), targets[t])
            seen += float(loss.detach())
            (c * loss).backward()
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p -= lr * p.grad
    else:
        model.zero_grad(set_to_none=True)
        for t in range(T):
            loss = prob.task_loss(t, model(x, task=t), targets[t])
            seen += float(loss.detach())
            (c * loss).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
    return [p.detach() for p in model.parameters()], seen


@pytest.mark.parametrize("update,kw", [("steady_state", {}), ("synchronized", {}),
                                       ("synchronized", {"batched": True})])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_equal_weighting_is_applied_task_by_task(update, kw, reduction):
    """Before: ``reduction="mean"`` was ignored by both schemes (each task stepped on L_t)."""
    c = 1.0 if reduction == "sum" else 1.0 / T
    model = model_for(update, **kw)
    step_kw = {"task_chunk": 2} if kw else {}
    total = run(update, model, build_weighting("equal", T, reduction=reduction), **step_kw)
    want_params, want_total = _reference(update, c)
    for p, q in zip(model.parameters(), want_params):
        torch.testing.assert_close(p.detach(), q, atol=1e-12, rtol=0)
    if kw:
        assert model.forward_tasks_calls == [[0, 1], [2]]
    assert total.shape == () and not total.requires_grad
    assert float(total) == pytest.approx(want_total, rel=1e-12)  # the plain sum, not the weighted one


# --------------------------------------------------------------------------- per-step logs
@pytest.mark.parametrize("update,name", [(u, w) for u in ("joint", "steady_state", "synchronized")
                                         for w in ("equal", "gradnorm", "mgda_ub") if (u, w) not in REJECTED])
def test_every_implemented_pair_logs_task_weights(update, name):
    from mtlrepro.methods.logs import EpochLogs
    acc = EpochLogs()
    model = model_for(update)
    w = build_weighting(name, T, **({"reduction": "mean"} if name == "equal" else {}))
    for _ in range(2):
        run(update, model, w, logs=acc)
    means = acc.means()
    assert len(acc) == 2 and len(means["task_weights"]) == T and isinstance(means["total_loss"], float)
    if name == "equal":
        assert means["task_weights"] == pytest.approx([1 / T] * T, abs=1e-15)
    if name == "mgda_ub":
        assert sum(means["task_weights"]) == pytest.approx(1.0)


def test_every_registered_recipe_is_an_implemented_pair():
    from mtlrepro.recipe import recipe_sets
    from mtlrepro.train.steps import check_update_weighting
    pairs = {(r.update, r.weighting) for rs in recipe_sets().values() for r in rs.recipes}
    assert ("joint", "gradnorm") in pairs and ("synchronized", "equal") in pairs
    for update, weighting in sorted(pairs):
        check_update_weighting(update, weighting)
