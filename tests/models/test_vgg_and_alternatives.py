"""VGG16 backbone and the ``conv_alt`` scheme (ETR-NLP Table 2): exact counts, training, reuse."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from mtlrepro.complexity import count
from mtlrepro.models import SHARING, build_model
from mtlrepro.models.primitives import NLPBlock
from mtlrepro.fit.table2_layouts import TABLE2_METHODS
from mtlrepro.models.backbones.vgg import VGG16_FEATURES_MACS_64, VGG16_FEATURES_PARAMS
from mtlrepro.models.sharing.conv_alternatives import CONV_TYPES, LBConvUnit, LocalBinaryConv

GROUPS8 = [9, 5, 9, 4, 2, 5, 2, 4]
ATTR40 = [1] * 40
HEADS40 = 512 * 40 + 40  # Linear(512, .) heads for 40 outputs in all
BACKBONES = ("resnet18", "vgg16")

_CACHE: dict = {}


def model(backbone: str, scheme: str = "conv_alt", dims=GROUPS8, **kw):
    key = (backbone, scheme, tuple(dims), tuple(sorted(kw.items())))
    if key not in _CACHE:
        torch.manual_seed(0)
        _CACHE[key] = build_model(backbone, scheme, list(dims), **kw)
    return _CACHE[key]


# ---------------------------------------------------------------------------------- VGG16 ----

def test_vgg16_features_params_and_macs():
    m = model("vgg16", "hard_sharing")
    assert sum(p.numel() for p in m.encoder.parameters()) == VGG16_FEATURES_PARAMS == 14_714_688
    assert m.active_parameter_count(0) == 14_714_688 + HEADS40 == 14_735_208  # published 14.7M
    c = count(m, (3, 64, 64))
    # torchvision vgg16().features at 64x64: 1,252,786,176 fvcore MACs (REFERENCE.md: 1252.8M);
    # the model adds global average pooling (512 x 2 x 2 = 2,048) and the heads (512 x 40).
    assert c.flops == VGG16_FEATURES_MACS_64 + 2_048 + 512 * 40
    assert abs(c.flops / 1252.8e6 - 1) < 0.005  # published 1.25G
    assert m.feature_dim == 512 and len(m.units()) == 13
    assert all(u.spec.role == "conv" and u.spec.kernel_size == 3 and u.spec.bias and not u.spec.norm
               for u in m.units())
    assert m.last_shared_layer() is m.units()[-1]


def test_vgg16_equals_torchvision_features():
    tv = pytest.importorskip("torchvision")
    ref = tv.models.vgg16().features.eval()
    m = model("vgg16", "hard_sharing").eval()
    # same layer positions: our features[i] is the unit (conv at [0]) where torchvision has the conv
    sd = {k.replace("features.", "").replace(".0.", ".", 1): v for k, v in m.encoder.state_dict().items()}
    ref.load_state_dict(sd)
    ref.double()
    encoder = copy.deepcopy(m.encoder).double()  # float64: equal up to rounding, on any CPU
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        want = F.adaptive_avg_pool2d(ref(x), 1).flatten(1)
        assert torch.allclose(encoder(x), want, rtol=1e-9, atol=1e-10)


def test_vgg16_width_and_batch_norm():
    m2 = model("vgg16", "hard_sharing", width_mult=2)
    assert m2.feature_dim == 1024 and m2.units()[-1].spec.out_ch == 1024
    bn = model("vgg16", "hard_sharing", batch_norm=True)
    assert bn.active_parameter_count(0) == 14_735_208 + 2 * 4_224  # vgg16_bn: BN after all 13 convs
    assert sum(isinstance(x, torch.nn.BatchNorm2d) for x in bn.modules()) == 13
    with torch.no_grad():
        assert [o.shape for o in bn(torch.randn(2, 3, 32, 32))] == [(2, d) for d in GROUPS8]


# single_task and cross_stitch hold one network per task, so their units() list T networks' convs.
PER_TASK_NETWORKS = {"single_task", "cross_stitch", "nddr_cnn", "afa", "mtl_nas", "mtl_nas_supernet"}


@pytest.mark.parametrize("scheme", SHARING.names())
def test_every_scheme_runs_on_vgg16(scheme):
    if getattr(SHARING.get(scheme), "needs_branch_modules", False):   # branched / search spaces: ResNets only
        with pytest.raises(ValueError, match="branch modules"):
            model("vgg16", scheme)
        return
    m = model("vgg16", scheme)
    with torch.no_grad():
        outs = m.forward_all(torch.randn(2, 3, 32, 32))
    assert [o.shape for o in outs] == [(2, d) for d in GROUPS8]
    assert len(m.units()) == 13 * (len(GROUPS8) if scheme in PER_TASK_NETWORKS else 1)


# ------------------------------------------------------------------------------- conv_alt ----

def fresh(backbone: str, scheme: str, dims=GROUPS8, **kw):
    """An uncached model built from seed 0 (for exact equality with another scheme)."""
    torch.manual_seed(0)
    return build_model(backbone, scheme, list(dims), **kw)


def test_conv_alt_conv_is_hard_sharing():
    alt, hs = fresh("resnet18", "conv_alt", ATTR40, conv="conv"), fresh("resnet18", "hard_sharing", ATTR40)
    assert alt.active_parameter_count(0) == hs.active_parameter_count(0) == 11_197_032
    assert alt.state_dict().keys() == hs.state_dict().keys()
    alt.eval(), hs.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(alt(x), hs(x)))


@pytest.mark.parametrize("width, expected", [(1, 2_042_472), (2, 8_090_792)])
def test_conv_alt_nlp_is_the_nlp_scheme(width, expected):
    alt = fresh("resnet18", "conv_alt", conv="nlp", width_mult=width)
    ref = fresh("resnet18", "nlp", width_mult=width)
    assert alt.active_parameter_count(0) == ref.active_parameter_count(0) == expected
    assert sum(isinstance(u, NLPBlock) for u in alt.units()) == 16  # stem + 3 shortcuts learnable
    sa, sr = alt.state_dict(), ref.state_dict()
    assert sa.keys() == sr.keys() and all(torch.equal(sa[k], sr[k]) for k in sa)


def test_lbconv_unit_is_fixed_binary_then_learnable_1x1():
    u = next(x for x in model("resnet18", conv="lbconv").units() if isinstance(x, LBConvUnit))
    fixed = u.fixed
    assert isinstance(fixed, LocalBinaryConv) and fixed.out_ch == u.spec.out_ch  # m = C_out
    assert set(fixed.weight.unique().tolist()) <= {-1.0, 0.0, 1.0}
    nnz = (fixed.weight != 0).flatten(1).sum(1)
    assert torch.all(nnz == round(0.5 * fixed.in_ch * 9))
    assert not any(p is fixed.weight for p in u.parameters())
    assert [tuple(p.shape) for p in u.parameters()][0] == (u.spec.out_ch, u.maps, 1, 1)


def test_unknown_alternative_raises():
    with pytest.raises(ValueError, match="conv must be one of"):
        build_model("resnet18", "conv_alt", GROUPS8, conv="octave")


@pytest.mark.parametrize("conv", CONV_TYPES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_alternative_trains_a_step(backbone, conv):
    m = model(backbone, conv=conv)
    m.train()
    buffers = {k: v.clone() for k, v in m.named_buffers() if "running" not in k and "num_batches" not in k}
    params = [p.detach().clone() for p in m.parameters()]
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    outs = m(x)
    assert [o.shape for o in outs] == [(2, d) for d in GROUPS8]
    loss = sum(F.cross_entropy(o, torch.zeros(2, dtype=torch.long)) for o in outs)
    assert math.isfinite(loss.item())
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(params, m.parameters()))
    after = dict(m.named_buffers())
    assert all(torch.equal(v, after[k]) for k, v in buffers.items())  # fixed weights never move
    if conv == "lbconv":
        n_fixed = sum(k.endswith("fixed.weight") for k in buffers)
        assert n_fixed == (16 if backbone == "resnet18" else 13)
    opt.zero_grad(set_to_none=True)


def test_shift_layout_default_depends_on_backbone():
    assert {u.layout for u in model("resnet18", conv="shift").units() if hasattr(u, "layout")} == {"csc"}
    assert {u.layout for u in model("vgg16", conv="shift").units()} == {"shift_conv"}


# Regression: the defaults' counts (active params for one pass with the 8 CelebA groups = 40
# outputs; fvcore MACs for one 1x3x64x64 image). Published Table 2 cell and gap in the comment.
EXPECTED = {
    ("resnet18", "conv"): (11_197_032, 148_473_856),           # 11.2M / 148M: 0.0% / +0.3%
    ("resnet18", "lbconv"): (1_604_200, 165_251_072),          # 1.61M / 165M: -0.4% / +0.2%
    ("resnet18", "shift"): (2_832_488, 48_666_624),            # 2.81M / 42M: +0.8% / +15.9%
    ("resnet18", "depthwise_conv"): (2_912_040, 46_486_528),   # 2.91M / 45M: +0.1% / +3.3%
    ("resnet18", "ghost"): (5_721_576, 80_607_232),            # 5.77M / 46M: -0.8% / +75.2%
    ("resnet18", "nlps"): (2_042_472, 42_754_048),             # 2.05M / 43M: -0.4% / -0.6%
    ("resnet18", "nlps_2x"): (8_090_792, 148_422_656),         # 8.11M / 148M: -0.2% / +0.3%
    ("vgg16", "conv"): (14_735_208, 1_252_808_704),            # 14.7M / 1.25G: +0.2% / +0.2%
    ("vgg16", "lbconv"): (1_835_176, 1_433_163_776),           # 1.84M / 1.43G: -0.3% / +0.2%
    ("vgg16", "shift"): (1_659_240, 139_220_992),              # 1.67M / 0.14G: -0.6% / -0.6%
    ("vgg16", "depthwise_conv"): (3_553_286, 336_201_728),     # 3.57M / 0.34G: -0.5% / -1.1%
    ("vgg16", "ghost"): (7_398_984, 631_392_256),              # 7.45M / 0.32G: -0.7% / +97.3%
    ("vgg16", "nlps"): (2_476_776, 216_672_256),               # 2.48M / 0.22G: -0.1% / -1.5%
    ("vgg16", "nlps_2x"): (9_856_424, 848_470_016),            # 14.3M / 1.23G: -31.1% / -31.0%
}


@pytest.mark.parametrize("backbone, method", sorted(EXPECTED))
def test_table2_default_counts(backbone, method):
    m = model(backbone, **TABLE2_METHODS[method])
    c = count(m, (3, 64, 64))
    print(f"{backbone} {method}: {c.params:,} params, {c.flops / 1e6:.2f}M MACs")
    assert (c.params, c.flops) == EXPECTED[(backbone, method)]
    assert m.active_parameter_count(0) == model(backbone, dims=ATTR40, **TABLE2_METHODS[method]) \
        .active_parameter_count(0)  # 8 groups and 40 attributes: the same 40 outputs
