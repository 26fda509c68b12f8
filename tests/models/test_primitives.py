"""Non-learnable primitives and the NLP block."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mtlrepro.models.primitives import (PRIMITIVE_TYPES, AvgPool, FixedConv, MaxPool, NLPBlock, Perturb,
                                        Shift, build_primitive, parse_prim, prims_expansion)
from mtlrepro.registry import UnknownKeyError


SPECS = {
    "avg": "avg:k=5",
    "max": "max:k=3",
    "conv": "conv:k=3,e=2,sparsity=0.5",
    "shift": "shift",
    "noise": "noise:level=0.1,e=2",
}


@pytest.mark.parametrize("name", PRIMITIVE_TYPES)
@pytest.mark.parametrize("stride", [1, 2])
def test_primitive_shapes_and_no_parameters(name, stride):
    p = build_primitive(SPECS[name], channels=18, stride=stride, seed=3)
    assert list(p.parameters()) == []
    x = torch.randn(2, 18, 16, 16)
    y = p(x)
    e = p.expansion
    assert y.shape == (2, 18 * e, 16 // stride, 16 // stride)
    assert p.out_channels == 18 * e


def test_pools_match_torch():
    x = torch.randn(2, 4, 9, 9)
    assert torch.allclose(AvgPool(4, 5)(x), F.avg_pool2d(x, 5, 1, 2, count_include_pad=False))
    assert torch.allclose(MaxPool(4, 3)(x), F.max_pool2d(x, 3, 1, 1))
    with pytest.raises(ValueError):
        AvgPool(4, 4)  # even kernels have no 'same' padding


@pytest.mark.parametrize("depthwise,binary", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_fixed_conv_weights_and_sparsity(depthwise, binary, sparsity):
    c = FixedConv(8, kernel_size=3, depthwise=depthwise, binary=binary, sparsity=sparsity, expansion=2, seed=1)
    w = c.weight
    fan_in = (1 if depthwise else 8) * 9
    assert w.shape == (16, fan_in // 9, 3, 3)
    if binary:
        assert set(w.unique().tolist()) <= {-1.0, 0.0, 1.0}
    nnz = (w.view(16, -1) != 0).sum(1)
    expected = max(1, round((1 - sparsity) * fan_in))
    assert (nnz == expected).all()  # exact sparsity per filter
    assert abs(1 - expected / fan_in - sparsity) <= 1 / fan_in + 1e-9
    assert torch.equal(w, FixedConv(8, 3, depthwise=depthwise, binary=binary, sparsity=sparsity,
                                    expansion=2, seed=1).weight)  # deterministic per seed
    assert not torch.equal(w, FixedConv(8, 3, depthwise=depthwise, binary=binary, sparsity=sparsity,
                                        expansion=2, seed=2).weight)


def test_fixed_weights_do_not_change_under_training():
    torch.manual_seed(0)
    blk = NLPBlock(8, 12, ["avg:k=3", "conv:k=3,e=2", "noise:level=0.2", "shift", "max:k=3"], groups=2, seed=5)
    fixed = {k: v.clone() for k, v in blk.state_dict().items() if "prims" in k}
    learn = {k: v.detach().clone() for k, v in blk.named_parameters()}
    assert all(k.startswith(("conv1x1", "bn")) for k in learn)
    opt = torch.optim.SGD(blk.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        blk(torch.randn(4, 8, 8, 8)).pow(2).mean().backward()
        opt.step()
    for k, v in blk.state_dict().items():
        if k in fixed:
            assert torch.equal(v, fixed[k]), k
    assert any(not torch.equal(p, learn[k]) for k, p in blk.named_parameters())


@pytest.mark.parametrize("distribution", ["uniform", "gaussian"])
@pytest.mark.parametrize("level", [0.05, 0.5])
def test_perturb_noise_strength(distribution, level):
    p = Perturb(16, level=level, expansion=2, distribution=distribution, seed=7)
    x = torch.randn(2, 16, 32, 32)
    y = p(x)
    noise = y - x.repeat_interleave(2, dim=1)
    assert torch.allclose(noise[0], noise[1], atol=1e-5)  # a fixed mask, not per-sample noise
    assert noise[0].std().item() == pytest.approx(level, rel=0.05)
    assert noise[0].mean().abs().item() < 0.05 * level + 1e-3
    if distribution == "uniform":
        assert noise.abs().max().item() <= math.sqrt(3) * level + 1e-6


def test_perturb_deterministic_lazy_and_resumable():
    a, b = Perturb(4, 0.1, seed=11), Perturb(4, 0.1, seed=11)
    x = torch.zeros(1, 4, 8, 8)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), Perturb(4, 0.1, seed=12)(x))
    assert a(torch.zeros(1, 4, 6, 6)).shape == (1, 4, 6, 6)  # regenerated for a new size ...
    assert torch.equal(a(x), b(x))                           # ... and back, deterministically
    c = Perturb(4, 0.3, seed=99)
    c(x)
    c.load_state_dict(a.state_dict())  # seed / level are buffers; the cache is rebuilt
    assert torch.equal(c(x), a(x))
    assert "noise" not in a.state_dict() and {"seed", "level"} <= set(a.state_dict())


def test_shift_moves_groups_by_one_pixel():
    s = Shift(9)
    x = torch.zeros(1, 9, 5, 5)
    x[:, :, 2, 2] = 1.0
    y = s(x)
    for i, (dy, dx) in enumerate(Shift.DIRECTIONS):
        assert y[0, i, 2 + dy, 2 + dx] == 1.0 and y[0, i].sum() == 1.0
    assert torch.equal(y[0, 8], x[0, 8])  # identity group
    assert torch.equal(Shift(4)(x[:, :4]), x[:, :4])  # fewer than 9 channels: all identity


def test_channel_shuffle_groups_every_primitive_per_input_channel():
    x = torch.randn(1, 3, 4, 4)
    blk = NLPBlock(3, 3, ["avg:k=1", "conv:k=1,e=2,sparsity=0", "max:k=1"], seed=0)
    y = blk.features(x)
    assert y.shape == (1, 12, 4, 4)
    conv = blk.prims[1]
    for c in range(3):
        assert torch.allclose(y[0, 4 * c], x[0, c])               # avg k=1
        for j in range(2):
            w = conv.weight[2 * c + j].item() * conv.scale.item()
            assert torch.allclose(y[0, 4 * c + 1 + j], w * x[0, c])  # conv, both filters
        assert torch.allclose(y[0, 4 * c + 3], x[0, c])           # max k=1
    # expansion 1 everywhere: identical to torch.channel_shuffle(cat, groups=k)
    blk2 = NLPBlock(6, 6, ["avg:k=3", "max:k=3", "shift"])
    cat = torch.cat([p(torch.ones(1, 6, 5, 5) * torch.arange(6.).view(1, 6, 1, 1)) for p in blk2.prims], 1)
    assert torch.equal(blk2.features(torch.ones(1, 6, 5, 5) * torch.arange(6.).view(1, 6, 1, 1)),
                       torch.channel_shuffle(cat, 3))


def test_all_31_configurations_build_and_run():
    n = 0
    x = torch.randn(2, 9, 8, 8)
    for r in range(1, 6):
        for combo in itertools.combinations(PRIMITIVE_TYPES, r):
            blk = NLPBlock(9, 6, [SPECS[t] for t in combo], groups=3, stride=2)
            assert blk(x).shape == (2, 6, 4, 4)
            assert blk.E == prims_expansion([SPECS[t] for t in combo])
            n += 1
    assert n == 31


def test_stride_modes_agree_for_deterministic_primitives():
    torch.manual_seed(0)
    prims = ["avg:k=5", "max:k=3", "conv:k=3,e=2", "shift"]
    a = NLPBlock(9, 8, prims, stride=2, seed=4, stride_mode="after")
    b = NLPBlock(9, 8, prims, stride=2, seed=4, stride_mode="prims")
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.randn(2, 9, 9, 9)
    assert torch.allclose(a(x), b(x), atol=1e-6)


@pytest.mark.parametrize("groups,stride,stride_mode", [(1, 1, "after"), (2, 2, "after"), (3, 2, "prims")])
@pytest.mark.parametrize("input_layout", ["nchw", "channels_last"])
def test_channels_last_compute_equals_nchw(groups, stride, stride_mode, input_layout, monkeypatch):
    """The channels-last CPU path computes the same features, outputs and gradients as NCHW,
    and returns the caller's layout."""
    prims = ["avg:k=5", "avg:k=9", "max:k=3", "conv:k=3,e=2,sparsity=0.5", "shift", "noise:e=2"]
    torch.manual_seed(0)
    blk = NLPBlock(9, 6, prims, groups=groups, stride=stride, seed=3, stride_mode=stride_mode).double()
    x0 = torch.randn(2, 9, 11, 11, dtype=torch.float64)
    if input_layout == "channels_last":
        x0 = x0.contiguous(memory_format=torch.channels_last)
    results = {}
    for layout in ("nchw", "channels_last"):
        monkeypatch.setattr(NLPBlock, "compute_layout", layout)
        x = x0.clone().requires_grad_()
        blk.zero_grad()
        y = blk(x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results[layout] = (blk.features(x0), y, x.grad, blk.conv1x1.weight.grad.clone())
        want_cl = input_layout == "channels_last"
        assert y.is_contiguous(memory_format=torch.channels_last if want_cl else torch.contiguous_format)
    for a, b in zip(results["nchw"], results["channels_last"]):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(NLPBlock, "compute_layout", "auto")
    assert blk.compute_channels_last(x0)  # CPU default
    monkeypatch.setattr(NLPBlock, "compute_layout", "nhwc")
    with pytest.raises(ValueError, match="compute_layout"):
        blk(x0)


def test_groups_and_parameter_count():
    blk = NLPBlock(64, 58, ["avg:k=9", "conv:k=3", "noise"], groups=2)
    assert blk.groups == 2
    assert sum(p.numel() for p in blk.parameters()) == 64 * 3 * 58 // 2 + 2 * 58
    assert NLPBlock(64, 58, ["avg"], groups=4).groups == 2  # gcd fallback (58 = 2 * 29)


def test_spec_parsing():
    assert parse_prim("conv:k=3,e=2,binary=false,sparsity=0.25") == (
        "conv", {"kernel_size": 3, "expansion": 2, "binary": False, "sparsity": 0.25})
    assert parse_prim({"type": "avg", "k": 9}) == ("avg", {"kernel_size": 9})
    assert parse_prim(("noise", {"level": 0.2})) == ("noise", {"level": 0.2})
    with pytest.raises(UnknownKeyError, match="avg"):
        parse_prim("avgg:k=3")
    with pytest.raises(TypeError, match="conv"):
        build_primitive("conv:kernal=3", 4)
