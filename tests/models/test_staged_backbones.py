"""The staged-backbone protocol (models/backbones/protocol.py) on the three built-in backbones.

The staged pass (stem -> stage by stage -> readout, the generic code of ``StagedBackbone``) must
equal each encoder's own hand-written ``forward`` exactly in float64, in training mode (batch
statistics) and in eval mode; the declared ``widths`` / ``strides`` must be what the features
are; the protocol must not register anything (state_dict keys and parameter counts as before).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlrepro.models import BACKBONES, ConvBN, StagedBackbone, count_parameters
from mtlrepro.models.backbones.resnet import RESNET18_ENCODER_PARAMS
from mtlrepro.models.backbones.segnet import SEGNET_PARAMS
from mtlrepro.models.backbones.vgg import VGG16_FEATURES_PARAMS

SMALL = {"resnet18": {"width_mult": 0.25}, "vgg16": {"width_mult": 0.125},
         "vgg16_bn": {"width_mult": 0.125, "batch_norm": True}, "segnet": {"width_mult": 0.125}}
FULL_PARAMS = {"resnet18": RESNET18_ENCODER_PARAMS, "vgg16": VGG16_FEATURES_PARAMS, "segnet": SEGNET_PARAMS}
STAGES = {"resnet18": 4, "vgg16": 5, "vgg16_bn": 5, "segnet": 10}


def encoder(name: str, **kw) -> StagedBackbone:
    torch.manual_seed(0)
    kwargs = dict(SMALL[name], **kw)
    return BACKBONES.get(name.removesuffix("_bn"))(ConvBN, **kwargs).encoder.double()


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_staged_pass_equals_forward_float64(name, train):
    enc = encoder(name).train(train)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        want = enc(x)
        staged = StagedBackbone.forward(enc, x)
        feats = enc.forward_features(x)
        taps = enc.forward_taps(x)
    assert torch.equal(staged, want)
    assert torch.equal(enc.readout(feats[-1]), want)
    assert all(torch.equal(t.out, f) for t, f in zip(taps, feats))


@pytest.mark.parametrize("hw", [(64, 96), (40, 72)], ids=["multiple_of_32", "odd_sizes"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_widths_and_strides_describe_the_features(name, hw):
    enc = encoder(name).eval()
    x = torch.randn(1, 3, *hw, dtype=torch.float64)
    with torch.no_grad():
        feats, taps = enc.forward_features(x), enc.forward_taps(x)
    assert len(feats) == len(enc.stages) == len(enc.widths) == len(enc.strides) == enc.n_stages == STAGES[name]
    assert [f.shape[1] for f in feats] == list(enc.widths)
    for t, w in zip(taps, enc.widths):
        assert t.first.shape[1] == t.last.shape[1] == w
    if hw == (64, 96):  # exact strides when every pooling divides
        assert [(64 // f.shape[2], 96 // f.shape[3]) for f in feats] == [(s, s) for s in enc.strides]
    assert enc.readout(feats[-1]).shape[1] == enc.out_features


def test_declared_widths_by_hand():
    assert encoder("resnet18", width_mult=1.0).widths == (64, 128, 256, 512)
    assert encoder("vgg16", width_mult=1.0).widths == (64, 128, 256, 512, 512)
    seg = encoder("segnet", width_mult=1.0)
    assert seg.widths == (64, 128, 256, 512, 512, 512, 256, 128, 64, 64)
    assert (seg.n_encoder_stages, seg.n_decoder_stages) == (5, 5)
    assert seg.strides == (2, 4, 8, 16, 32, 16, 8, 4, 2, 1)


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "segnet"])
def test_protocol_registers_nothing(name):
    """``stages`` are views of existing submodules: parameter counts and state_dict keys as before."""
    torch.manual_seed(0)
    enc = BACKBONES.get(name)(ConvBN).encoder
    assert count_parameters(enc.parameters()) == FULL_PARAMS[name]
    assert not any(k.startswith(("stages.", "_stage")) for k in enc.state_dict())
    staged = {id(p) for s in enc.stages for p in s.parameters()}
    stem = set() if name != "resnet18" else {id(p) for p in enc.stem.parameters()}
    assert staged | stem == {id(p) for p in enc.parameters()}   # every parameter in a stage or the stem
    units = [u for s in enc.stages for u in s.modules() if u in set(enc.units())]
    assert units == enc.units()[len(enc.units()) - len(units):]  # forward order


def test_segnet_taps_by_hand():
    """Encoder stages: ``out`` is the 2x2 max pool of ``last``; decoder stages: ``input`` is the
    max-unpool of the previous output with the mirrored encoder stage's indices."""
    enc = encoder("segnet").eval()
    x = torch.randn(1, 3, 40, 72, dtype=torch.float64)
    with torch.no_grad():
        taps = enc.forward_taps(x)
        for s in range(5):
            pooled, _ = torch.nn.functional.max_pool2d(taps[s].last, 2, 2, return_indices=True)
            assert torch.equal(taps[s].out, pooled)
        for d in range(5):
            e = 4 - d
            _, idx = torch.nn.functional.max_pool2d(taps[e].last, 2, 2, return_indices=True)
            up = torch.nn.functional.max_unpool2d(taps[4 + d].out, idx, 2, 2, output_size=taps[e].last.shape[-2:])
            assert torch.equal(taps[5 + d].input, up)
    assert tuple(taps[-1].out.shape) == (1, 8, 40, 72)


class _TinyStaged(StagedBackbone):
    """A new backbone in ~15 lines: ``stages`` as an ``nn.ModuleList`` attribute."""

    widths = (4, 8)
    strides = (1, 2)

    def __init__(self, make_unit):
        super().__init__()
        self.u = [make_unit(_spec(3, 4, 1, 0)), make_unit(_spec(4, 8, 2, 1))]
        self.stages = nn.ModuleList([nn.Sequential(self.u[0], nn.ReLU()), nn.Sequential(self.u[1], nn.ReLU())])
        self.out_features = 8

    def stage_taps(self, s, h, state):
        from mtlrepro.models import StageTaps
        y = self.stages[s](h)
        return StageTaps(input=h, first=y, last=y, out=y)

    def readout(self, h):
        return h.mean(dim=(2, 3))

    def units(self):
        return list(self.u)

    def last_shared_layer(self):
        return self.u[-1]


def _spec(i, o, stride, idx):
    from mtlrepro.models import ConvSpec
    return ConvSpec(i, o, 3, stride, 1, index=idx)


@pytest.fixture
def tiny_staged():
    from mtlrepro.models import Backbone
    from mtlrepro.models.heads import HeadFactory

    def build(make_unit, **kw):
        enc = _TinyStaged(make_unit)
        return Backbone(enc, 8, HeadFactory("linear", 8))

    BACKBONES.register("tiny_staged_test", build)
    yield "tiny_staged_test"
    BACKBONES._entries.pop("tiny_staged_test", None)


@pytest.mark.parametrize("scheme", ["hard_sharing", "mtan", "cross_stitch", "max_roaming"])
def test_a_new_staged_backbone_runs_every_kind_of_scheme(tiny_staged, scheme):
    from mtlrepro.models import build_model
    m = build_model(tiny_staged, scheme, [2, 3])
    outs = m.forward_all(torch.randn(2, 3, 8, 8))
    assert [tuple(o.shape) for o in outs] == [(2, 2), (2, 3)]
    sum(o.square().mean() for o in outs).backward()
    assert all(p.grad is not None for p in m.heads.parameters())
