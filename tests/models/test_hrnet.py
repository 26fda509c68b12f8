"""HRNetV2-W18 backbone (``hrnet18``) and its ``hrnet`` head: the conv surgery against timm's own
network (float64), counts against a hand derivation of HRNet-W18 and REFERENCE.md (GatedMTL Table 1,
NYUD 3 tasks at 480x640), shapes, and the missing-weights message."""
from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlrepro.data.errors import DataError
from mtlrepro.models import ConvBN, ConvSpec, build_model, count_parameters
from mtlrepro.models.backbones.hrnet import HRNetEncoder, route_convs, timm_hrnet_w18
from mtlrepro.models.heads.hrnet_head import HRNetHead, concat_branches, hrnet_head_params

NYUD = [40, 1, 3]
WIDTHS = (18, 36, 72, 144)


# --- HRNet-W18 by hand (Wang et al. 2020 / HRNet-Image-Classification's w18 config) ----------------
def hand_hrnet_w18() -> tuple[int, int]:
    """``(parameters, convs)``: bias-free convs, a BN (2 C) after each; stem 3->64->64 (3x3/2),
    layer1 = 4 Bottlenecks of 64 planes (256 out, 1x1 shortcut in block 0), stages 2 / 3 / 4 =
    1 / 4 / 3 modules of 2 / 3 / 4 branches x 4 BasicBlocks, widths 18 / 36 / 72 / 144; fuse into
    branch i from j > i: 1x1 conv, from j < i: i - j 3x3/2 convs (width j, the last width i)."""
    n = {"p": 0, "c": 0}

    def conv(i: int, o: int, k: int) -> None:
        n["p"] += k * k * i * o + 2 * o
        n["c"] += 1

    conv(3, 64, 3), conv(64, 64, 3)
    for b in range(4):
        cin = 64 if b == 0 else 256
        conv(cin, 64, 1), conv(64, 64, 3), conv(64, 256, 1)
        if b == 0:
            conv(64, 256, 1)
    conv(256, 18, 3), conv(256, 36, 3)            # transition1
    for n_modules, n_br in ((1, 2), (4, 3), (3, 4)):
        if n_br > 2:
            conv(WIDTHS[n_br - 2], WIDTHS[n_br - 1], 3)  # transition: the new branch
        w = WIDTHS[:n_br]
        for _ in range(n_modules):
            for c in w:
                for _ in range(4 * 2):
                    conv(c, c, 3)
            for i in range(n_br):
                for j in range(n_br):
                    if j > i:
                        conv(w[j], w[i], 1)
                    for k in range(i - j):
                        conv(w[j], w[i] if k == i - j - 1 else w[j], 3)
    return n["p"], n["c"]


ENC_PARAMS, N_CONVS = hand_hrnet_w18()


@pytest.fixture(scope="module")
def mtl():
    torch.manual_seed(0)
    return build_model("hrnet18", "hard_sharing", NYUD)


@pytest.fixture(scope="module")
def stl():
    torch.manual_seed(0)
    return build_model("hrnet18", "single_task", NYUD)


def test_hand_count_and_timm_agree():
    net = timm_hrnet_w18()
    assert sum(p.numel() for p in net.parameters()) == ENC_PARAMS == 9_562_260
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == N_CONVS == 305


def test_units_cover_every_conv_in_forward_order(mtl):
    units = mtl.units()
    assert len(units) == N_CONVS and all(isinstance(u, ConvBN) for u in units)
    assert [u.spec.index for u in units] == list(range(N_CONVS))
    inside = {id(m) for u in units for m in u.modules()}
    stray = [m for m in mtl.encoder.modules()
             if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) and id(m) not in inside]
    assert not stray
    # by hand: 4 + 104 blocks (conv1, conv2), 4 bottleneck conv3, 1 shortcut, 2 + 1 + 1 transitions,
    # fuse units 2 (stage 2) + 4 x 7 (stage 3) + 3 x 16 (stage 4)
    assert Counter(u.spec.role for u in units) == {"stem": 2, "conv1": 108, "conv2": 108, "conv3": 4,
                                                   "downsample": 1, "transition": 4, "fuse": 78}
    assert units[0].spec == ConvSpec(3, 64, 3, 2, 1, index=0, role="stem")
    assert mtl.last_shared_layer() is units[-1]
    called = []
    hooks = [u.register_forward_hook(lambda m, i, o: called.append(m.spec.index)) for u in units]
    with torch.no_grad():
        mtl.eval()(torch.zeros(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert called == list(range(N_CONVS))   # units() is the call order


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_surgery_preserves_timm_function_float64(train):
    torch.manual_seed(0)
    ref = timm_hrnet_w18().double()
    for m in ref.modules():  # non-trivial BN parameters and statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    enc = HRNetEncoder(ConvBN, net=copy.deepcopy(ref))
    ref.train(train), enc.train(train)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        want, got = ref(x), enc.forward_branches(x)
        z = enc(x)
    assert [tuple(t.shape) for t in got] == [(2, c, 16 // s, 24 // s) for c, s in zip(WIDTHS, (1, 2, 4, 8))]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z, concat_branches(want), rtol=1e-12, atol=1e-12)


class _TwoConvUnit(nn.Sequential):
    def __init__(self, spec: ConvSpec):
        super().__init__(ConvBN(spec), ConvBN(ConvSpec(spec.out_ch, spec.out_ch, 1)))


class _ConvTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.bn, self.bn2 = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.c(x)) + self.bn2(self.c(x))


class _SharedBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.bn = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.c2(self.bn(self.c1(x))))


class _UnusedBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.bn, self.spare = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.c(x))


@pytest.mark.parametrize("net, match", [
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), "not followed"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)), "not followed"),
    (lambda: _ConvTwice(), "more than once"),
    (lambda: _SharedBN(), "claimed by two"),
    (lambda: _UnusedBN(), "unused or unpaired"),
], ids=["no_bn", "bn_not_reading_conv", "conv_twice", "bn_twice", "unused_bn"])
def test_surgery_raises_unless_one_to_one(net, match):
    with pytest.raises(ValueError, match=match):
        route_convs(net(), ConvBN, probe_hw=(8, 8))


def test_surgery_copies_weights_or_refuses_when_required():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    w = net[0].weight.detach().clone()
    (unit,) = route_convs(copy.deepcopy(net), ConvBN, probe_hw=(8, 8), require_copy=True)
    assert torch.equal(unit.conv.weight, w) and unit.spec.role == "stem"
    with pytest.raises(ValueError, match="cannot take its weights"):
        route_convs(copy.deepcopy(net), _TwoConvUnit, probe_hw=(8, 8), require_copy=True)
    assert len(route_convs(copy.deepcopy(net), _TwoConvUnit, probe_hw=(8, 8))) == 1  # random init: fine


def test_head_shape_params_and_branch_input():
    torch.manual_seed(0)
    head = HRNetHead(270, 5).eval()
    assert count_parameters(head.parameters()) == hrnet_head_params(5) == 270 * 270 + 270 + 540 + 270 * 5 + 5
    xs = [torch.randn(2, c, 16 // s, 24 // s) for c, s in zip(WIDTHS, (1, 2, 4, 8))]
    with torch.no_grad():
        y = head(xs)
        assert torch.equal(y, head(concat_branches(xs)))
    assert y.shape == (2, 5, 64, 96)
    assert concat_branches(xs).shape == (2, 270, 16, 24)
    # Vandenhende's maths written out: F.interpolate(mode='bilinear') with its default align_corners
    cat = torch.cat([xs[0]] + [F.interpolate(x, (16, 24), mode="bilinear") for x in xs[1:]], 1)
    with torch.no_grad():
        want = F.interpolate(head.last_layer(cat), (64, 96), mode="bilinear")
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="270 channels"):
        head(torch.randn(1, 18, 4, 4))


def test_output_shapes_and_gradients(mtl, stl):
    x = torch.randn(2, 3, 64, 96)
    mtl.train()
    z = mtl.encode(x)
    assert z.shape == (2, 270, 16, 24) and z.requires_grad
    outs = [mtl.decode(z, t) for t in range(3)]
    assert [tuple(o.shape) for o in outs] == [(2, d, 64, 96) for d in NYUD]
    sum(o.mean() for o in outs).backward()
    assert mtl.units()[0].conv.weight.grad is not None
    mtl.zero_grad(set_to_none=True)
    with torch.no_grad():
        outs = stl.eval().forward_all(x)
    assert [tuple(o.shape) for o in outs] == [(2, d, 64, 96) for d in NYUD]
    assert len(stl.units()) == 3 * N_CONVS and len(stl.units(1)) == N_CONVS


def test_params_hand_count_and_reference(mtl, stl):
    heads = sum(hrnet_head_params(d) for d in NYUD)
    assert count_parameters(mtl.parameters()) == ENC_PARAMS + heads
    assert count_parameters(stl.parameters()) == 3 * ENC_PARAMS + heads
    want = [ENC_PARAMS + hrnet_head_params(d) for d in NYUD]
    assert [stl.active_parameter_count(t) for t in range(3)] == want
    assert count_parameters(mtl.parameters()) / 9.80e6 == pytest.approx(1, abs=0.005)   # REFERENCE 9.80M
    assert count_parameters(stl.parameters()) / 28.92e6 == pytest.approx(1, abs=0.005)  # REFERENCE 28.92M


class _Task(nn.Module):
    def __init__(self, model, task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x):
        return self.model(x, task=self.task) if self.model.task_conditional else tuple(self.model(x))


def _fvcore_ops(model, task: int, hw=(32, 32)) -> dict[str, int]:
    from fvcore.nn import FlopCountAnalysis
    a = FlopCountAnalysis(_Task(model.eval(), task), (torch.zeros(1, 3, *hw),))
    a.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        return dict(a.by_operator())


def test_fvcore_convs_match_reference_at_480x640_by_scaling(mtl, stl):
    """At 32x32 every map is 1/300 of its 480x640 size (sides multiples of 32), so fvcore's counts
    scale by 300 exactly. REFERENCE's 24.5 / 64.7 G are the conv MACs (see the backbone's docstring)."""
    scale = 480 * 640 // (32 * 32)
    mtl_ops = _fvcore_ops(mtl, 0)
    stl_ops = [_fvcore_ops(stl, t) for t in range(3)]
    assert scale * mtl_ops["conv"] / 24.5e9 == pytest.approx(1, abs=0.003)
    assert scale * sum(o["conv"] for o in stl_ops) / 64.7e9 == pytest.approx(1, abs=0.003)
    # the heads' convs by hand: (270^2 + 270 d) MACs per pixel at stride 4
    px = 8 * 8
    per_head = [px * (270 * 270 + 270 * d) for d in NYUD]
    assert stl_ops[0]["conv"] - stl_ops[1]["conv"] == per_head[0] - per_head[1]
    assert mtl_ops["conv"] - stl_ops[0]["conv"] == per_head[1] + per_head[2]


def test_pretrained_missing_weights_raise_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    from huggingface_hub import constants   # read at its import: point it at the empty folder too
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(DataError, match=r"hrnet_w18\.ms_aug_in1k") as e:
        build_model("hrnet18", "hard_sharing", NYUD, pretrained="imagenet1k")
    assert str(tmp_path) in str(e.value) and "timm.create_model('hrnet_w18.ms_aug_in1k'" in str(e.value)
    with pytest.raises(ValueError, match="no pretrained weights 'imagenet21k'"):
        build_model("hrnet18", "hard_sharing", NYUD, pretrained="imagenet21k")
