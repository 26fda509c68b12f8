"""SegNet backbone (MTAN's layout) and the SegNet-family schemes: exact counts, shapes, fvcore.

Published trainable-parameter counts (REFERENCE.md, "SegNet family"): MTAN's scripts print them,
and every MTAN MULTI-task model also holds ``logsigma`` (``T`` uncertainty-weighting scalars, a
loss weighting's parameters, which our models do not hold): those counts are checked as
``ours + T``. MTAN's single-task SegNet has no ``logsigma``; Max Roaming's counts neither.
"""
from __future__ import annotations

import pytest
import torch

from mtlrepro.complexity import count
from mtlrepro.models import SHARING, build_model, count_parameters
from mtlrepro.models.backbones.segnet import SEGNET_PARAMS
from mtlrepro.models.heads.segnet_head import segnet_head_params
from mtlrepro.models.sharing.task_routing import MaskedUnit

NYU3 = [13, 1, 3]          # MTAN NYUv2: 13-class segmentation + depth + normals
CITY2 = [7, 1]             # MTAN Cityscapes: 7-class segmentation + depth
MR15 = [1] * 13 + [1, 3]   # Max Roaming / ETR-NLP NYUv2: 13 one-vs-rest + depth + normals
MR8 = [1] * 7 + [1]        # Max Roaming / ETR-NLP Cityscapes: 7 one-vs-rest + depth
CONDITIONAL = ["attentive", "task_routing", "max_roaming", "etr", "etr_nlp", "single_task"]


_CACHE: dict = {}


def model(scheme: str, dims, **kw):
    key = (scheme, tuple(dims), tuple(sorted(kw.items())))
    if key not in _CACHE:
        torch.manual_seed(0)
        _CACHE[key] = build_model("segnet", scheme, list(dims), **kw)
    return _CACHE[key]


def n_params(m) -> int:
    return count_parameters(m.parameters())


# ------------------------------------------------------------------------------ backbone ----

def test_segnet_layout():
    m = model("hard_sharing", CITY2)
    units = m.units()
    assert len(units) == 26 and m.feature_dim == 64
    assert all(u.spec.kernel_size == 3 and u.spec.padding == 1 and u.spec.bias and u.spec.norm
               and u.spec.role == "conv" for u in units)
    assert [u.spec.index for u in units] == list(range(26))
    assert [len(s.units) for s in m.encoder.enc] == [2, 2, 3, 3, 3]
    assert [len(s.units) for s in m.encoder.dec] == [3, 3, 3, 2, 2]
    chans = [(u.spec.in_ch, u.spec.out_ch) for u in units]
    assert chans[:13] == [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                          (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    assert chans[13:] == [(512, 512), (512, 512), (512, 512), (512, 256), (256, 256), (256, 256),
                          (256, 128), (128, 128), (128, 128), (128, 64), (64, 64), (64, 64), (64, 64)]
    assert n_params(m.encoder) == SEGNET_PARAMS == 24_943_296
    assert m.last_shared_layer() is units[-1]
    head = m.heads[0]
    assert [type(x).__name__ for x in head] == ["Conv2d", "Conv2d"]
    assert (head[0].kernel_size, head[1].kernel_size) == ((3, 3), (1, 1))


# ------------------------------------------------------------------- parameter counts ----

def test_single_task_nyuv2_24_981_069():
    m = model("single_task", NYU3)
    assert m.active_parameter_count(0) == 24_981_069  # the 13-class semantic network
    assert [m.active_parameter_count(t) for t in (1, 2)] == [24_980_289, 24_980_419]
    assert n_params(m) == 3 * SEGNET_PARAMS + sum(segnet_head_params(d) for d in NYU3)


def test_single_task_cityscapes_24_980_679():
    assert model("single_task", CITY2).active_parameter_count(0) == 24_980_679  # 7-class semantic


def test_hard_sharing_nyuv2_25_055_188():
    assert model("hard_sharing", NYU3).active_parameter_count(0) + 3 == 25_055_188


def test_hard_sharing_cityscapes_25_017_674():
    assert model("hard_sharing", CITY2).active_parameter_count(0) + 2 == 25_017_674


def test_mtan_nyuv2_44_229_076():
    assert model("mtan", NYU3).active_parameter_count(0) + 3 == 44_229_076


def test_mtan_cityscapes_41_206_986():
    assert model("mtan", CITY2).active_parameter_count(0) + 2 == 41_206_986


def test_cross_stitch_nyuv2_74_941_807():
    m = model("cross_stitch", NYU3)
    assert m.active_parameter_count(0) + 3 == 74_941_807
    assert sum(u.weight.numel() for u in m.cross_stitch_units()) == 9 * 3  # (4 + 5) units x T


def test_cross_stitch_cityscapes_49_960_988():
    assert model("cross_stitch", CITY2).active_parameter_count(0) + 2 == 49_960_988


def test_cross_stitch_matrix_mixing_count():
    m = build_model("segnet", "cross_stitch", CITY2, mixing="matrix")
    assert n_params(m) == 49_960_986 + 9 * (4 - 2)
    w = m.cs_enc[0].weight
    assert w.shape == (2, 2) and torch.allclose(w.sum(1), torch.ones(2))


def test_max_roaming_cityscapes_25_239_240():
    """Max Roaming's per-task-head models (8 tasks) hold 25,239,240 trainable parameters."""
    hs, mr = model("hard_sharing", MR8), model("max_roaming", MR8)
    assert n_params(hs) == n_params(mr) == 25_239_240
    assert mr.active_parameter_count(0) == SEGNET_PARAMS + segnet_head_params(1) == 24_980_289


def test_max_roaming_nyuv2_25_498_321():
    hs, tr = model("hard_sharing", MR15), model("task_routing", MR15)
    assert n_params(hs) == n_params(tr) == 25_498_321
    assert tr.active_parameter_count(14) == SEGNET_PARAMS + segnet_head_params(3)


def test_mtan_parameter_partition():
    m = model("mtan", NYU3)
    per_task = [count_parameters(m.task_parameters(t)) for t in range(3)]
    att = [per_task[t] - segnet_head_params(d) for t, d in enumerate(NYU3)]
    assert att[0] == att[1] == att[2] > 0
    assert count_parameters(m.shared_parameters()) + sum(per_task) == n_params(m)


# --------------------------------------------------------------------------- shapes ----

@pytest.mark.parametrize("hw", [(128, 256), (288, 384)], ids=["cityscapes", "nyuv2"])
@pytest.mark.parametrize("scheme", ["hard_sharing", "mtan", "cross_stitch", "single_task"])
def test_full_size_shapes_on_meta(scheme, hw):
    """Shape-only at the datasets' sizes: built and run on the meta device (no compute)."""
    with torch.device("meta"):
        m = build_model("segnet", scheme, NYU3)
        outs = m.forward_all(torch.empty(1, 3, *hw))
    assert [tuple(o.shape) for o in outs] == [(1, d, *hw) for d in NYU3]


@pytest.mark.parametrize("scheme", ["hard_sharing", "mtan", "cross_stitch", "single_task"])
def test_forward_values_small(scheme):
    m = model(scheme, NYU3)
    with torch.no_grad():
        outs = m.forward_all(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, d, 64, 96) for d in NYU3]
    assert all(torch.isfinite(o).all() for o in outs)


def test_sizes_not_multiple_of_32():
    """Unpooling restores each stage's pre-pool size, so odd intermediate sizes work."""
    for scheme in ("hard_sharing", "mtan", "cross_stitch"):
        with torch.no_grad():
            outs = model(scheme, CITY2).forward_all(torch.randn(1, 3, 40, 72))
        assert [tuple(o.shape) for o in outs] == [(1, d, 40, 72) for d in CITY2]


@pytest.mark.parametrize("scheme", SHARING.names())
def test_every_scheme_runs_on_segnet(scheme):
    if getattr(SHARING.get(scheme), "needs_branch_modules", False):   # branched / search spaces: ResNets only
        with pytest.raises(ValueError, match="branch modules"):
            model(scheme, [2, 1])
        return
    m = model(scheme, [2, 1])
    with torch.no_grad():
        outs = m.forward_all(torch.randn(1, 3, 32, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 2, 32, 64), (1, 1, 32, 64)]


def test_max_roaming_masks_all_26_convs():
    m = build_model("segnet", "max_roaming", MR8, sharing_ratio=0.6, update_every=1)
    assert len(m.masked_units()) == 26
    before = [u.mask.clone() for u in m.masked_units()]
    assert all((b.sum(0) >= 1).all() for b in before)  # every unit used by >= 1 task
    m.on_epoch_end(0)
    after = [u.mask for u in m.masked_units()]
    assert all(not torch.equal(a, b) for a, b in zip(after, before))
    assert all(torch.equal(a.sum(1), b.sum(1)) for a, b in zip(after, before))


# ---------------------------------------------------------------------------- fvcore ----

def test_fvcore_counts_max_unpool_and_whole_model():
    from fvcore.nn import FlopCountAnalysis
    m = model("hard_sharing", CITY2)
    c = count(m, (3, 128, 256))
    assert "aten::max_unpool2d" not in c.unsupported_ops
    assert c.params == 25_017_672
    enc = FlopCountAnalysis(m.encoder.eval(), torch.zeros(1, 3, 128, 256))
    enc.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    enc_flops = enc.total()  # without the unpool handle
    m.train()
    heads = 128 * 256 * sum(64 * 64 * 9 + 64 * d for d in CITY2)
    # one op per unpooled element (complexity's handle): decoder inputs 512@1/16 ... 64@1/1
    unpool = 512 * 8 * 16 + 512 * 16 * 32 + 256 * 32 * 64 + 128 * 64 * 128 + 64 * 128 * 256
    assert c.flops == enc_flops + heads + unpool == 19_133_693_952


# ------------------------------------------------------------------------- gradients ----

@pytest.mark.parametrize("scheme", CONDITIONAL)
def test_gradients_reach_only_active_task_and_shared(scheme):
    m = model(scheme, [2, 1])
    m.zero_grad(set_to_none=True)
    m(torch.randn(2, 3, 32, 64), task=1).square().mean().backward()
    own = m.task_parameters(1)
    other = {id(p) for p in m.task_parameters(0)}
    assert all(p.grad is None or not p.grad.any() for p in m.parameters() if id(p) in other)
    assert all(p.grad is not None for p in m.heads[1].parameters())
    assert any(p.grad is not None and p.grad.any() for p in own)
    shared = m.shared_parameters()
    if scheme == "single_task":
        assert shared == []
    else:
        assert any(p.grad is not None and p.grad.any() for p in shared)
    m.zero_grad(set_to_none=True)


def test_mtan_task_loss_reaches_only_its_attention():
    m = model("mtan", CITY2)
    m.zero_grad(set_to_none=True)
    m(torch.randn(2, 3, 32, 64))[0].square().mean().backward()
    assert all(p.grad is None for p in m.task_parameters(1))
    assert all(p.grad is not None for p in m.enc_att[0].parameters())
    assert all(p.grad is not None for p in m.encoder.parameters())
    m.zero_grad(set_to_none=True)


def test_cross_stitch_units_learn():
    m = model("cross_stitch", CITY2)
    m.zero_grad(set_to_none=True)
    m(torch.randn(2, 3, 32, 64))[1].square().mean().backward()
    assert all(u.weight.grad is not None and u.weight.grad.any() for u in m.cross_stitch_units())
    assert m.last_shared_layer() is m.cs_dec[-1]
    m.zero_grad(set_to_none=True)


def test_batched_task_pass_equals_loop_on_segnet():
    torch.manual_seed(0)
    a = build_model("segnet", "etr", [2, 1]).double()  # float64: equal up to rounding, on any CPU
    b = build_model("segnet", "etr", [2, 1]).double()
    b.load_state_dict(a.state_dict())
    assert a.supports_batched_tasks
    x = torch.randn(2, 3, 32, 64, dtype=torch.float64)
    batched = a.forward_tasks(x, [0, 1])
    loop = [b(x, task=t) for t in (0, 1)]
    assert all(torch.allclose(p, q, rtol=1e-9, atol=1e-9) for p, q in zip(batched, loop))
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.allclose(sa[k], sb[k], rtol=1e-9, atol=1e-12) for k in sa if "running" in k)
