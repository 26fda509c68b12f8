"""Sharing schemes: shapes, gradient routing, masks, roaming, parameter counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlrepro.models import build_model, count_parameters
from mtlrepro.models.primitives import NLPBlock
from mtlrepro.models.sharing.etr import ETRUnit
from mtlrepro.models.sharing.task_routing import MaskedUnit, init_routing_mask, n_active_units

GROUPS8 = [9, 5, 9, 4, 2, 5, 2, 4]
ATTR40 = [1] * 40
SCHEMES = ["hard_sharing", "attentive", "task_routing", "max_roaming", "etr", "etr_nlp", "nlp"]
CONDITIONAL = {"attentive", "task_routing", "max_roaming", "etr", "etr_nlp"}
ENC = 11_176_512
HEAD0 = {8: 512 * 9 + 9, 40: 512 + 1}  # task 0's head

_CACHE: dict = {}


def model(scheme: str, n: int, **kw):
    key = (scheme, n, tuple(sorted(kw.items())))
    if key not in _CACHE:
        torch.manual_seed(0)
        _CACHE[key] = build_model("resnet18", scheme, GROUPS8 if n == 8 else ATTR40, **kw)
    return _CACHE[key]


@pytest.mark.parametrize("n", [8, 40])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_forward_shapes_64(scheme, n):
    m = model(scheme, n)
    dims = GROUPS8 if n == 8 else ATTR40
    assert m.n_tasks == n and m.task_conditional == (scheme in CONDITIONAL)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        if m.task_conditional:
            for t in (0, n - 1):
                assert m(x, task=t).shape == (2, dims[t])
            with pytest.raises(ValueError):
                m(x)
        else:
            assert [o.shape for o in m(x)] == [(2, d) for d in dims]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_forward_all_32(scheme):
    m = model(scheme, 8)
    with torch.no_grad():
        outs = m.forward_all(torch.randn(2, 3, 32, 32))
    assert [o.shape for o in outs] == [(2, d) for d in GROUPS8]


@pytest.mark.parametrize("scheme", sorted(CONDITIONAL))
def test_gradients_reach_only_active_task_and_shared(scheme):
    m = model(scheme, 8)
    m.train()
    m.zero_grad(set_to_none=True)
    t = 3
    m(torch.randn(2, 3, 32, 32), task=t).pow(2).sum().backward()
    for j in range(8):
        grads = [p.grad for p in m.task_parameters(j)]
        if j == t:
            assert any(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads), f"task {j} private parameters got gradients"
    shared = m.shared_parameters()
    assert shared and all(p.grad is not None for p in shared)
    private = {id(p) for j in range(8) for p in m.task_parameters(j)}
    assert count_parameters(shared) + count_parameters(p for p in m.parameters() if id(p) in private) \
        == count_parameters(m.parameters())
    m.zero_grad(set_to_none=True)


@pytest.mark.parametrize("scheme", ["hard_sharing", "nlp"])
def test_hard_family_gradients(scheme):
    m = model(scheme, 8)
    m.zero_grad(set_to_none=True)
    z = m.encode(torch.randn(2, 3, 32, 32))
    m.decode(z, 1).sum().backward()
    assert all(p.grad is None for j in range(8) if j != 1 for p in m.task_parameters(j))
    assert all(p.grad is not None for p in m.shared_parameters())
    m.zero_grad(set_to_none=True)


def test_active_parameter_counts(capsys):
    published = {"hard_sharing": 11.2, "attentive": 12.9, "task_routing": 11.2, "max_roaming": 11.2,
                 "etr": 11.2, "etr_nlp": 8.0, "nlp": 2.05}
    rows = {s: (model(s, 8).active_parameter_count(0), model(s, 40).active_parameter_count(0)) for s in SCHEMES}
    with capsys.disabled():
        print("\nactive parameters (ResNet18, task 0)     CelebA-8     CelebA-40   published")
        for s, (a, b) in rows.items():
            print(f"  {s:<36}{a:>12,}{b:>14,}   {published[s]}M")
    for n, i in ((8, 0), (40, 1)):
        assert rows["hard_sharing"][i] == 11_197_032
        one_head = ENC + HEAD0[n]
        # masks and the 0.9/0.1 ETR split do not change what one task's pass uses
        assert rows["task_routing"][i] == rows["max_roaming"][i] == rows["etr"][i] == one_head
        assert abs(rows["attentive"][i] - 12.9e6) < 0.05e6
        assert abs(rows["etr_nlp"][i] - 8.0e6) / 8.0e6 < 0.02          # justified defaults, see etr_nlp.py
        assert rows["etr_nlp"][i] < rows["hard_sharing"][i]
        assert abs(rows["nlp"][i] - 2.05e6) / 2.05e6 < 0.01
    assert rows["etr_nlp"] == (7_885_449, 7_881_345)  # regression: changes must be deliberate
    assert rows["attentive"] == (12_929_129, 12_925_025)


# --- task routing ----------------------------------------------------------------------------

def _masks(m):
    return [u.mask.clone() for u in m.units() if isinstance(u, MaskedUnit)]


def _check_masks(masks, n, sigma):
    for mk in masks:
        T, C = mk.shape
        assert T == n
        frac = mk.sum(1) / C
        assert torch.all((frac - sigma).abs() <= 1.0 / C + 1e-9)   # ~sigma active per task and layer
        assert torch.all(mk.sum(1) == n_active_units(C, sigma))
        assert torch.all(mk.sum(0) >= 1)                            # every unit used by >= 1 task
        assert set(mk.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("n", [8, 40])
def test_task_routing_masks(n):
    masks = _masks(model("task_routing", n))
    assert len(masks) == 20
    _check_masks(masks, n, 0.9)


@pytest.mark.parametrize("sigma", [0.8, 0.6, 0.5, 0.3])
@pytest.mark.parametrize("n", [8, 40])
def test_routing_mask_init_other_ratios(sigma, n):
    widths = [64, 128, 256, 512]
    _check_masks([torch.from_numpy(init_routing_mask(n, c, sigma, seed=i)) for i, c in enumerate(widths)], n, sigma)


def test_task_routing_masks_deterministic_per_seed():
    a = _masks(build_model("resnet18", "task_routing", GROUPS8, mask_seed=5))
    torch.manual_seed(1234)
    np.random.seed(1)
    b = _masks(build_model("resnet18", "task_routing", GROUPS8, mask_seed=5))
    c = _masks(build_model("resnet18", "task_routing", GROUPS8, mask_seed=6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_task_routing_zeroes_inactive_units():
    m = model("task_routing", 8)
    unit = m.units()[1]
    x = torch.randn(2, 64, 8, 8)
    m.ctx.task = 2
    try:
        y = unit(x)
    finally:
        m.ctx.task = None
    off = unit.mask[2] == 0
    assert off.any() and torch.all(y[:, off] == 0) and y[:, ~off].abs().sum() > 0


# --- max roaming -----------------------------------------------------------------------------

def _roam_state(m):
    return [(u.mask.clone(), u.usage.clone()) for u in m.units()]


def test_max_roaming_single_update():
    m = build_model("resnet18", "max_roaming", GROUPS8, mask_seed=1)
    before = _roam_state(m)
    assert m.roam() == 20
    for (mb, ub), (ma, ua) in zip(before, _roam_state(m)):
        assert torch.equal(mb.sum(1), ma.sum(1))               # same number active per task
        d = ma - mb
        assert torch.all((d == 1).sum(1) == 1) and torch.all((d == -1).sum(1) == 1)  # one swap
        incoming = (d == 1).float().argmax(1)
        rows = torch.arange(len(incoming))
        assert torch.all(ub[rows, incoming] == 0)               # a never-used unit came in
        assert torch.equal(ua - ub, (d == 1).long())            # usage counts the activation
    assert int(m.roam_updates) == 1


def test_max_roaming_schedule_and_global_rng_independence():
    a = build_model("resnet18", "max_roaming", GROUPS8, mask_seed=2)
    b = build_model("resnet18", "max_roaming", GROUPS8, mask_seed=2)
    for s in range(20):  # 20 steps per epoch, update_every 0.1 -> interval int(2)+1 = 3
        a.on_train_step(s, 20)
        torch.manual_seed(s), np.random.seed(s)  # global RNG noise must not matter
        b.on_train_step(s, 20)
    assert int(a.roam_updates) == 6  # steps 3, 6, 9, 12, 15, 18
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(_roam_state(a), _roam_state(b)))
    e = build_model("resnet18", "max_roaming", GROUPS8, update_every=1.0)
    e.on_train_step(10, 20)
    assert int(e.roam_updates) == 0
    e.on_epoch_end(0)
    assert int(e.roam_updates) == 1


def test_max_roaming_resume_equivalence():
    spe, total, cut = 10, 40, 17

    def run(m, start, stop):
        for s in range(start, stop):
            m.on_train_step(s, spe)

    torch.manual_seed(0)
    straight = build_model("resnet18", "max_roaming", GROUPS8, mask_seed=9)
    run(straight, 0, total)
    first = build_model("resnet18", "max_roaming", GROUPS8, mask_seed=9)
    run(first, 0, cut)
    state = {k: v.clone() for k, v in first.state_dict().items()}
    torch.manual_seed(99)  # different weights before loading: everything must come from state
    resumed = build_model("resnet18", "max_roaming", GROUPS8, mask_seed=9)
    resumed.load_state_dict(state)
    run(resumed, cut, total)
    assert int(resumed.roam_updates) == int(straight.roam_updates) == 19
    for (ma, ua), (mb, ub) in zip(_roam_state(straight), _roam_state(resumed)):
        assert torch.equal(ma, mb) and torch.equal(ua, ub)
    fresh = build_model("resnet18", "max_roaming", GROUPS8, mask_seed=9)
    run(fresh, cut, total)  # without the state the result differs: the test has teeth
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(_roam_state(straight), _roam_state(fresh)))


def test_max_roaming_reaches_full_coverage_then_stops():
    m = build_model("resnet18", "max_roaming", GROUPS8, sharing_ratio=0.8)
    n_updates = max(u.mask.shape[1] - u.n_active for u in m.units())  # 512 - 410 = 102
    for _ in range(n_updates):
        m.roam()
    for u in m.units():
        assert torch.all(u.usage > 0)  # every unit visited by every task
    before = _roam_state(m)
    assert m.roam() == 0
    assert all(torch.equal(a[0], b[0]) for a, b in zip(before, _roam_state(m)))


# --- ETR / ETR-NLP / attentive ----------------------------------------------------------------

def test_etr_units_split_channels():
    m = model("etr", 8)
    units = m.units()
    assert all(isinstance(u, ETRUnit) for u in units)
    splits = {u.spec.out_ch: (u.c_shared, u.c_specific) for u in units}
    assert splits == {64: (58, 6), 128: (115, 13), 256: (230, 26), 512: (461, 51)}
    u = units[1]
    assert len(u.specific) == 8
    assert count_parameters(m.task_parameters(0)) > count_parameters(m.heads[0].parameters())


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_etr_extreme_gammas(gamma):
    m = build_model("resnet18", "etr", [2, 3], gamma=gamma)
    assert m(torch.randn(2, 3, 32, 32), task=1).shape == (2, 3)
    if gamma == 1.0:
        assert count_parameters(m.task_parameters(0)) == 512 * 2 + 2
    else:
        assert count_parameters(m.shared_parameters()) == 0


def test_etr_nlp_structure():
    m = model("etr_nlp", 8)
    nlp = [u for u in m.units() if isinstance(u.shared, NLPBlock)]
    assert len(nlp) == 16  # stem and 1x1 projections keep learnable shared convs by default
    assert all(b.E == 6 and b.groups == 1 for b in (u.shared for u in nlp))
    fixed = [k for k in m.state_dict() if ".prims." in k]
    assert fixed and all(k not in dict(m.named_parameters()) for k in fixed)


def test_attentive_variants():
    m = build_model("resnet18", "attentive", [2, 2], reduction=16)
    assert m.active_parameter_count(0) == ENC + 2 * 1_740_800 // 16 + 4800 + 300 + 512 * 2 + 2
    b = build_model("resnet18", "attentive", [2, 2], placement="block", task_bn=True)
    assert b(torch.randn(2, 3, 32, 32), task=1).shape == (2, 2)
    with pytest.raises(ValueError):
        build_model("resnet18", "attentive", [2], placement="everywhere")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_state_dict_round_trip(scheme):
    a = model(scheme, 8)
    torch.manual_seed(7)
    b = build_model("resnet18", scheme, GROUPS8)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        oa, ob = a.forward_all(x), b.forward_all(x)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(oa, ob))
    a.train()


def test_nlp_flops_match_table2():
    """fvcore FLOPs of the NLPs ResNet18 at 64x64: published 43M (NLPs) and 148M (NLPs 2x)."""
    fvcore = pytest.importorskip("fvcore.nn")
    out = {}
    for w in (1, 2):
        m = build_model("resnet18", "nlp", ATTR40, width_mult=w).eval()
        f = fvcore.FlopCountAnalysis(m, torch.randn(1, 3, 64, 64))
        f.unsupported_ops_warnings(False)
        f.uncalled_modules_warnings(False)
        out[w] = f.total() / 1e6
    assert abs(out[1] - 43) < 1 and abs(out[2] - 148) < 1.5, out
