"""Batched task passes (``forward_tasks`` / ``forward_all`` / the synchronized step) equal the
per-task loop: outputs, gradients of the summed task losses, BN running statistics, masks.

Small models (ResNet18 at ``width_mult=0.25``, 32x32 inputs, 5 tasks) keep the file fast.
Every comparison runs in float64 (models ``.double()``, float64 inputs) and asks for agreement
to rounding (``RTOL`` = 1e-9): the batched pass is the loop's computation, so anything beyond
float64 rounding is a bug. Not float32: its SIMD kernels round differently for the batched
``(T*B, ...)`` and the looped ``(B, ...)`` shapes, by an amount that depends on the CPU and
``ATEN_CPU_CAPABILITY`` (measured on an AVX-512 CPU: the ETR-NLP ``prims`` stride variant's stem
gradient was within rtol 1e-4 of the loop under ``default`` and beyond it under ``avx2`` and
``avx512``), so a float32 equality test passes or fails by machine. Only the bf16 autocast test
runs in reduced precision, on outputs, with a bf16-sized tolerance.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlrepro.methods import build_weighting
from mtlrepro.models import BACKBONES, build_model
from mtlrepro.models.backbones import Backbone
from mtlrepro.models.batched import (channels_to_tasks, grouped_batch_norm, per_task_batch_norm, task_chunks,
                                     tasks_to_channels)
from mtlrepro.models.units import ConvSpec
from mtlrepro.models.primitives import Perturb
from mtlrepro.models.sharing.task_routing import MaskedUnit, TaskRouting
from mtlrepro.train.steps import STEPS

DIMS = [3, 1, 2, 1, 2]
RTOL, ATOL = 1e-9, 1e-10  # float64: the batched pass equals the loop up to rounding
SMALL = {"width_mult": 0.25}
# every task-conditional scheme, with the variants that take other code paths
VARIANTS = {
    "task_routing": ("task_routing", {}),
    "max_roaming": ("max_roaming", {}),
    "max_roaming_no_running_stats": ("max_roaming", {"track_running_stats": False}),
    "attentive": ("attentive", {}),
    "attentive_block_task_bn": ("attentive", {"placement": "block", "task_bn": True}),
    "etr": ("etr", {}),
    "etr_gamma0": ("etr", {"gamma": 0.0}),
    "etr_nlp": ("etr_nlp", {}),
    "etr_nlp_prims_stride": ("etr_nlp", {"stride_mode": "prims", "nlp_downsample": True}),
}


def _build(name: str, backbone: str = "resnet18", dims=DIMS, dtype=torch.float64, **extra) -> nn.Module:
    scheme, kw = VARIANTS[name]
    torch.manual_seed(0)
    bkw = dict(SMALL) if backbone == "resnet18" else {}
    return build_model(backbone, scheme, dims, **kw, **bkw, **extra).to(dtype)


def _randn(*shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def _bns(m: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def _calibrate(m: nn.Module, x: torch.Tensor) -> None:
    """Running statistics = the average over all tasks' passes (so eval outputs are O(1))."""
    saved = [(b, b.momentum) for b in _bns(m)]
    for b, _ in saved:
        b.momentum = None
        b.reset_running_stats()
    m.train()
    for t in range(m.n_tasks):
        m(x, task=t)
    for b, mom in saved:
        b.momentum = mom


def _loss(outs, targets) -> torch.Tensor:
    return sum(F.binary_cross_entropy_with_logits(o, y) * (i + 1) for i, (o, y) in enumerate(zip(outs, targets)))


def _targets(batch: int, dims=DIMS, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 2, (batch, d), generator=g).to(dtype) for d in dims]


def _assert_grads_close(a: nn.Module, b: nn.Module, rtol: float = RTOL) -> None:
    """Elementwise ``rtol``, with an absolute floor of ``rtol`` times the model's largest
    gradient: a conv bias right before a training-mode BatchNorm has gradient zero up to rounding."""
    top = max(p.grad.abs().max().item() for p in a.parameters() if p.grad is not None)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is None:
            continue
        atol = rtol * top
        torch.testing.assert_close(q.grad, p.grad, rtol=rtol, atol=atol, msg=name)


def _assert_buffers_close(a: nn.Module, b: nn.Module, rtol: float = RTOL) -> None:
    for (name, p), q in zip(a.named_buffers(), b.buffers()):
        if p.is_floating_point():
            torch.testing.assert_close(q, p, rtol=rtol, atol=rtol * 1e-2, msg=name)
        else:
            assert torch.equal(p, q), name


def _train_compare(a: nn.Module, x: torch.Tensor, rtol=RTOL, out_atol=ATOL):
    """Loop on ``a``, batched on a copy: outputs, gradients, buffers (all in float64)."""
    assert x.dtype == torch.float64 and all(p.dtype == torch.float64 for p in a.parameters())
    b = copy.deepcopy(a)
    assert b.supports_batched_tasks
    a.train(), b.train()
    ys = _targets(x.shape[0], a.out_dims)
    la = [a(x, task=t) for t in range(a.n_tasks)]
    _loss(la, ys).backward()
    lb = b.forward_tasks(x, list(range(b.n_tasks)))
    _loss(lb, ys).backward()
    for oa, ob in zip(la, lb):
        torch.testing.assert_close(ob, oa, rtol=rtol, atol=out_atol)
    _assert_grads_close(a, b, rtol)
    _assert_buffers_close(a, b, rtol)
    return b


# --- every conditional scheme: eval and train, loop vs batched -------------------------------------
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_eval_outputs_equal_loop(name):
    m = _build(name)
    x = _randn(4, 3, 32, 32)
    _calibrate(m, x)
    m.eval()
    with torch.no_grad():
        loop = [m(x, task=t) for t in range(m.n_tasks)]
        batched = m.forward_all(x, task_chunk=0)
    assert [o.shape for o in batched] == [(4, d) for d in DIMS]
    for oa, ob in zip(loop, batched):
        torch.testing.assert_close(ob, oa, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("batch", [4, 8])  # 4: ResNet18's last stage normalises 4 values per channel
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_train_outputs_gradients_running_stats_equal_loop(name, batch):
    m = _build(name)
    _train_compare(m, _randn(batch, 3, 32, 32))


def test_subset_of_tasks_in_any_order():
    m = _build("etr_nlp")
    x = _randn(4, 3, 32, 32)
    _calibrate(m, x)
    m.eval()
    with torch.no_grad():
        outs = m.forward_tasks(x, [4, 1, 2])
        for t, o in zip([4, 1, 2], outs):
            torch.testing.assert_close(o, m(x, task=t), rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError):
        m.forward_tasks(x, [1, 1])
    with pytest.raises(IndexError):
        m.forward_tasks(x, [5])


def test_channels_last_model():
    for name in ("max_roaming", "etr_nlp", "attentive_block_task_bn"):
        m = _build(name)
        x = _randn(4, 3, 32, 32)
        _calibrate(m, x)
        m = m.to(memory_format=torch.channels_last).eval()
        xc = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            for t, o in enumerate(m.forward_all(xc, task_chunk=0)):
                torch.testing.assert_close(o, m(xc, task=t), rtol=RTOL, atol=ATOL)


def test_bf16_autocast_outputs():
    """The trainer's ``amp`` option: outputs agree under CPU bf16 autocast (gradients there are
    dominated by bf16 rounding for loop and batched alike, so only outputs are compared)."""
    for name in ("max_roaming", "etr_nlp"):
        m = _build(name, dtype=torch.float32)
        x = torch.randn(8, 3, 32, 32)
        _calibrate(m, x)
        m.train()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            loop = [m(x, task=t) for t in range(m.n_tasks)]
            batched = m.forward_tasks(x, list(range(m.n_tasks)))
        for oa, ob in zip(loop, batched):
            assert ob.dtype == oa.dtype
            torch.testing.assert_close(ob.float(), oa.float(), rtol=2e-2, atol=2e-2)


# --- Max Roaming: masks roam, usage counts, and batched passes follow them ---------------------------
def test_max_roaming_after_roaming_updates():
    m = _build("max_roaming")
    before = m.masks()
    for _ in range(3):
        assert m.roam() > 0
    assert any(not torch.equal(p, q) for p, q in zip(before, m.masks()))
    x = _randn(8, 3, 32, 32)
    b = _train_compare(m, x)
    assert all(torch.equal(p, q) for p, q in zip(m.masks(), b.masks()))
    _calibrate(b, x)
    b.eval()
    with torch.no_grad():
        for t, o in enumerate(b.forward_all(x, task_chunk=0)):
            torch.testing.assert_close(o, b(x, task=t), rtol=RTOL, atol=ATOL)


class _Problem:
    def __init__(self, dims):
        self.out_dims, self.n_tasks = list(dims), len(dims)

    @staticmethod
    def task_loss(t, out, y):
        return F.binary_cross_entropy_with_logits(out, y)


def _sync_steps(m: nn.Module, chunk, steps: int = 2) -> tuple[nn.Module, list[float]]:
    """``steps`` synchronized SGD steps with Max-Roaming-style schedule hooks."""
    m = copy.deepcopy(m).train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    step = STEPS.get("synchronized")
    weighting = build_weighting("equal", m.n_tasks)  # sum of the task losses
    g = torch.Generator().manual_seed(3)
    losses = []
    for s in range(steps):
        x = _randn(8, 3, 32, 32, generator=g)
        m.on_train_step(s, 2)  # MaxRoaming below: roams at every s > 0
        losses.append(float(step(m, weighting, opt, _Problem(m.out_dims), x, _targets(8, m.out_dims), task_chunk=chunk)))
    return m, losses


@pytest.mark.parametrize("name", ["max_roaming", "etr_nlp", "attentive_block_task_bn"])
def test_synchronized_step_loop_batched_chunked_agree(name):
    m = _build(name)
    if name == "max_roaming":
        m.update_every = 0.4  # int(0.4 * 2) + 1 = 1: a roaming update at every step > 0
    ref, lref = _sync_steps(m, chunk=1)          # the per-task loop
    for chunk in (0, 2):                          # all tasks in one pass; chunks of 2 (2 + 2 + 1)
        got, lgot = _sync_steps(m, chunk=chunk)
        assert lgot == pytest.approx(lref, rel=RTOL)
        for (name_, p), q in zip(ref.named_parameters(), got.parameters()):
            torch.testing.assert_close(q, p, rtol=RTOL, atol=ATOL, msg=name_)
        _assert_buffers_close(ref, got)
    if name == "max_roaming":
        assert int(ref.roam_updates) == 1 and int(got.roam_updates) == 1


def test_chunked_forward_all_equals_unchunked(monkeypatch):
    m = _build("etr")
    x = _randn(4, 3, 32, 32)
    _calibrate(m, x)
    m.eval()
    with torch.no_grad():
        full = m.forward_all(x, task_chunk=0)
        for chunk in (1, 2, 3):
            for a, b in zip(full, m.forward_all(x, task_chunk=chunk)):
                torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL)
        monkeypatch.setenv("MTLREPRO_TASK_CHUNK", "2")
        for a, b in zip(full, m.forward_all(x)):
            torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL)


def test_task_chunks_option(monkeypatch):
    monkeypatch.delenv("MTLREPRO_TASK_CHUNK", raising=False)
    assert task_chunks(5, device="cuda") == [[0, 1, 2, 3, 4]]           # auto: all on accelerators
    assert task_chunks(6, device="cpu") == [[0, 1, 2, 3], [4, 5]]        # auto: 4 per pass on CPU
    assert task_chunks(5, 0) == task_chunks(5, "all") == [[0, 1, 2, 3, 4]]
    assert task_chunks(5, 2) == [[0, 1], [2, 3], [4]]
    assert task_chunks([4, 2, 0], 2) == [[4, 2], [0]]
    monkeypatch.setenv("MTLREPRO_TASK_CHUNK", "3")
    assert task_chunks(5, device="cuda") == [[0, 1, 2], [3, 4]]
    monkeypatch.setenv("MTLREPRO_TASK_CHUNK", "lots")
    with pytest.raises(ValueError, match="MTLREPRO_TASK_CHUNK"):
        task_chunks(5)


# --- BatchNorm: per-task statistics and running-stat updates as T sequential passes ----------------
@pytest.mark.parametrize("kw", [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}])
def test_grouped_batch_norm_equals_sequential_passes(kw):
    torch.manual_seed(0)
    n, B, C = 4, 3, 5
    a = nn.BatchNorm2d(C, **kw).double()
    if a.running_mean is not None:
        a.running_mean.uniform_(-1, 1), a.running_var.uniform_(0.5, 2)
        a.num_batches_tracked.fill_(3)
    if a.weight is not None:
        nn.init.uniform_(a.weight), nn.init.uniform_(a.bias)
    b = copy.deepcopy(a)
    x = _randn(n * B, C, 4, 4) * torch.arange(1, n + 1).repeat_interleave(B)[:, None, None, None]
    loop = torch.cat([a(xi) for xi in x.chunk(n)])
    grouped = grouped_batch_norm(b, x, n)
    torch.testing.assert_close(grouped, loop, rtol=RTOL, atol=ATOL)
    _assert_buffers_close(a, b)
    a.eval(), b.eval()
    torch.testing.assert_close(grouped_batch_norm(b, x, n), torch.cat([a(xi) for xi in x.chunk(n)]),
                               rtol=RTOL, atol=ATOL)


def test_per_task_batch_norm_and_layouts():
    torch.manual_seed(0)
    n, B, C = 3, 4, 2
    bns = [nn.BatchNorm2d(C, momentum=m).double() for m in (0.1, 0.1, 0.1)]
    for bn in bns:
        nn.init.uniform_(bn.weight)
    ref = copy.deepcopy(bns)
    x = _randn(n * B, C, 3, 3)
    assert torch.equal(channels_to_tasks(tasks_to_channels(x, n), n), x)
    y = channels_to_tasks(per_task_batch_norm(bns, tasks_to_channels(x, n)), n)
    torch.testing.assert_close(y, torch.cat([bn(xi) for bn, xi in zip(ref, x.chunk(n))]), rtol=RTOL, atol=ATOL)
    for p, q in zip(ref, bns):
        _assert_buffers_close(p, q)


def test_perturb_noise_same_for_every_task_copy():
    p = Perturb(4, level=0.5, expansion=2, seed=3)
    x = torch.randn(2, 4, 6, 6)
    single = p(x)
    batched = p(x.repeat(5, 1, 1, 1))
    for part in batched.chunk(5):
        assert torch.equal(part, single)


# --- backbone-agnostic: other backbones, and units that do not know batched mode -------------------
class _ToyEncoder(nn.Module):
    """Conv units with a BN outside the units, a residual and a strided unit."""

    def __init__(self, make_unit):
        super().__init__()
        self.u0 = make_unit(ConvSpec(3, 8, 3, 1, 1, index=0, role="stem"))
        self.u1 = make_unit(ConvSpec(8, 8, 3, 1, 1, index=1, role="conv"))
        self.u2 = make_unit(ConvSpec(8, 16, 3, 2, 1, index=2, role="conv"))
        self.extra_bn = nn.BatchNorm2d(16)

    def units(self):
        return [self.u0, self.u1, self.u2]

    def last_shared_layer(self):
        return self.u2

    def forward(self, x):
        h = F.relu(self.u0(x))
        h = F.relu(self.u1(h) + h)
        h = F.relu(self.extra_bn(self.u2(h)))
        return h.mean(dim=(2, 3))


def _toy_backbone(make_unit, **kw) -> Backbone:
    return Backbone(_ToyEncoder(make_unit), 16,
                    lambda d: nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, d)))


@pytest.fixture
def toy_backbone():
    """Registered only for the test (the registry is global to the process)."""
    BACKBONES.register("toy_batched_test", _toy_backbone)
    yield "toy_batched_test"
    BACKBONES._entries.pop("toy_batched_test", None)


@pytest.mark.parametrize("name", ["max_roaming", "attentive_block_task_bn", "etr", "etr_nlp"])
def test_other_backbone(name, toy_backbone):
    m = _build(name, backbone=toy_backbone)
    _train_compare(m, _randn(8, 3, 12, 12))


@pytest.mark.skipif("vgg16" not in BACKBONES, reason="no vgg16 backbone registered")
@pytest.mark.parametrize("name", ["task_routing", "etr_nlp"])
def test_vgg16_with_batch_norm(name):
    m = _build(name, backbone="vgg16", dims=[1, 2, 1], width_mult=0.125, batch_norm=True)
    _train_compare(m, _randn(8, 3, 64, 64))


@pytest.mark.skipif("segnet" not in BACKBONES, reason="no segnet backbone registered")
@pytest.mark.parametrize("name", ["max_roaming", "etr_nlp"])
def test_segnet_dense_heads(name):
    """Max-unpooling with indices, feature maps into per-task conv heads (run task by task).
    Dense outputs reach |y| ~ 10, so the output tolerance scales with the output. (In float32
    this comparison says nothing about the batched pass: for ETR-NLP on this small SegNet the
    LOOP's own float32 gradients are 7e-3 (oneDNN convs) to 1.4e-1 (native convs) from float64
    in the worst element.)"""
    m = _build(name, backbone="segnet", dims=[2, 1, 3], width_mult=0.125)
    x = _randn(8, 3, 32, 32)
    b = copy.deepcopy(m)
    m.train(), b.train()
    la = [m(x, task=t) for t in range(3)]
    lb = b.forward_tasks(x, [0, 1, 2])
    scale = max(o.abs().max().item() for o in la)
    for oa, ob in zip(la, lb):
        assert ob.shape == oa.shape == (8, oa.shape[1], 32, 32)
        torch.testing.assert_close(ob, oa, rtol=RTOL, atol=RTOL * scale)
    sum((o * o).mean() for o in la).backward()
    sum((o * o).mean() for o in lb).backward()
    _assert_grads_close(m, b)
    _assert_buffers_close(m, b)


class _LoopOnlyUnit(MaskedUnit):
    batched_tasks = False


class _LoopOnlyRouting(TaskRouting):
    def make_unit(self, spec):
        u = super().make_unit(spec)
        u.__class__ = _LoopOnlyUnit
        return u


def test_units_without_batched_support_fall_back_to_the_loop():
    torch.manual_seed(0)
    m = _LoopOnlyRouting("resnet18", DIMS, **SMALL)
    assert not m.supports_batched_tasks
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        outs = m.forward_all(x, task_chunk=0)
        assert all(torch.equal(o, m(x, task=t)) for t, o in enumerate(outs))
    hs = build_model("resnet18", "hard_sharing", DIMS, **SMALL).eval()
    assert not hs.supports_batched_tasks
    with torch.no_grad():
        sel = hs.forward_tasks(x, [2, 0])
        full = hs(x)
    assert torch.equal(sel[0], full[2]) and torch.equal(sel[1], full[0])
