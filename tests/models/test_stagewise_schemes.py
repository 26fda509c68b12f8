"""MTAN and cross-stitch on the staged-backbone protocol: SegNet as MTAN's code, ResNet18 / VGG16 too.

The references below are written from the papers' code (``lorenmt/mtan``
``model_segnet_mtan.py`` / ``model_segnet_cross.py``; LibMTL's MTAN on a ResNet encoder) against
the backbones' own modules - not through the protocol - and must equal the schemes in float64.
Parameter counts are computed by hand from the layer shapes.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlrepro.models import BACKBONES, Backbone, ConvSpec, build_model, count_parameters
from mtlrepro.models.backbones.resnet import RESNET18_ENCODER_PARAMS


def fresh(backbone: str, scheme: str, dims, **kw):
    torch.manual_seed(0)
    return build_model(backbone, scheme, list(dims), **kw).double()


def att_params(i: int, h: int, o: int) -> int:
    """Conv1x1(i, h) + BN(h) + Conv1x1(h, o) + BN(o), convs with bias."""
    return i * h + h + 2 * h + h * o + o + 2 * o


def block_params(i: int, o: int) -> int:
    """Conv3x3(i, o) with bias + BN(o)."""
    return 9 * i * o + o + 2 * o


# ------------------------------------------------------------------------ references ----

def mtan_segnet_reference(m, x: torch.Tensor) -> list[torch.Tensor]:
    """MTAN's SegNet forward, on the model's modules (``g_encoder``, ``g_upsampl``, ``g_decoder``)."""
    enc = m.encoder
    first, last, idx, sizes, up, dec_last = [], [], [], [], [], []
    h = x
    for s in range(5):
        f, l_ = enc.enc[s].first_last(h)
        first.append(f), last.append(l_), sizes.append(l_.shape[-2:])
        h, i = F.max_pool2d(l_, 2, 2, return_indices=True)
        idx.append(i)
    for d in range(5):
        u = F.max_unpool2d(h, idx[-d - 1], 2, 2, output_size=sizes[-d - 1])
        _, h = enc.dec[d].first_last(u)
        up.append(u), dec_last.append(h)
    outs = []
    for t in range(m.n_tasks):
        a = None
        for s in range(5):
            g = first[s] if s == 0 else torch.cat((first[s], a), dim=1)
            a = F.max_pool2d(m.enc_block_att[s](m.enc_att[t][s](g) * last[s]), 2, 2)
        for d in range(5):
            a = F.interpolate(a, size=up[d].shape[-2:], mode="bilinear", align_corners=True)
            a = m.dec_block_att[d](a)
            a = m.dec_att[t][d](torch.cat((up[d], a), dim=1)) * dec_last[d]
        outs.append(m.heads[t](a))
    return outs


def mtan_resnet_reference(m, x: torch.Tensor) -> list[torch.Tensor]:
    """LibMTL-style MTAN on ResNet: per layer, gate the last block's output with a mask of
    [first block's output, attended previous layer]; shared conv block + 2x2 max pool between."""
    enc = m.encoder
    h = enc.maxpool(enc.relu(enc.stem(x)))
    first, last = [], []
    for layer in (enc.layer1, enc.layer2, enc.layer3, enc.layer4):
        f = layer[0](h)
        h = layer[1](f)
        first.append(f), last.append(h)
    outs = []
    for t in range(m.n_tasks):
        a = m.enc_att[t][0](first[0]) * last[0]
        for s in range(1, 4):
            a = F.max_pool2d(m.enc_block_att[s - 1](a), 2, 2)
            a = m.enc_att[t][s](torch.cat((first[s], a), dim=1)) * last[s]
        outs.append(m.heads[t](torch.flatten(enc.avgpool(a), 1)))
    return outs


def cross_stitch_segnet_reference(m, x: torch.Tensor) -> list[torch.Tensor]:
    """MTAN's cross-stitch SegNet: units before encoder stages 1-4 and before each unpool."""
    T = m.n_tasks
    xs, idx, sizes = [x] * T, [[] for _ in range(T)], []
    for s in range(5):
        if s > 0:
            xs = m.cs_enc[s - 1](xs)
        new = []
        for t, net in enumerate(m.nets):
            l_ = net.enc[s](xs[t])
            p, i = F.max_pool2d(l_, 2, 2, return_indices=True)
            new.append(p), idx[t].append(i)
        sizes.append(l_.shape[-2:])
        xs = new
    for d in range(5):
        xs = m.cs_dec[d](xs)
        xs = [net.dec[d](F.max_unpool2d(xs[t], idx[t][-d - 1], 2, 2, output_size=sizes[-d - 1]))
              for t, net in enumerate(m.nets)]
    return [h(z) for h, z in zip(m.heads, xs)]


def cross_stitch_resnet_reference(m, x: torch.Tensor) -> list[torch.Tensor]:
    """Misra et al. on ResNet18: a unit after layer1, layer2, layer3."""
    xs = [net.maxpool(net.relu(net.stem(x))) for net in m.nets]
    for s, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
        if s > 0:
            xs = m.cs_enc[s - 1](xs)
        xs = [getattr(net, name)(h) for net, h in zip(m.nets, xs)]
    return [head(torch.flatten(net.avgpool(z), 1)) for net, head, z in zip(m.nets, m.heads, xs)]


def _equal_to_reference(m, ref, x):
    for train in (True, False):
        m.train(train)
        with torch.no_grad():
            got = m(x)
            want = ref(m, x)
        assert len(got) == len(want) and all(torch.allclose(g, w, rtol=0, atol=1e-12) for g, w in zip(got, want))


@pytest.mark.parametrize("hw", [(64, 96), (40, 72)], ids=["multiple_of_32", "odd_sizes"])
def test_mtan_on_segnet_is_mtans_code(hw):
    m = fresh("segnet", "mtan", [3, 1], width_mult=0.125)
    _equal_to_reference(m, mtan_segnet_reference, torch.randn(2, 3, *hw, dtype=torch.float64))


@pytest.mark.parametrize("hw", [(64, 96), (40, 72)], ids=["multiple_of_32", "odd_sizes"])
def test_cross_stitch_on_segnet_is_mtans_code(hw):
    m = fresh("segnet", "cross_stitch", [3, 1], width_mult=0.125, mixing="matrix")
    with torch.no_grad():
        for u in m.cross_stitch_units():
            u.weight.uniform_(0.2, 1.2)  # away from the init, so that every mixing weight matters
    _equal_to_reference(m, cross_stitch_segnet_reference, torch.randn(2, 3, *hw, dtype=torch.float64))


def test_mtan_on_resnet18_is_libmtls_rule():
    m = fresh("resnet18", "mtan", [3, 1, 2], width_mult=0.25)
    assert (len(m.enc_att[0]), len(m.dec_att[0]), len(m.enc_block_att), len(m.dec_block_att)) == (4, 0, 3, 0)
    _equal_to_reference(m, mtan_resnet_reference, torch.randn(2, 3, 64, 64, dtype=torch.float64))


def test_cross_stitch_on_resnet18_is_misras_rule():
    m = fresh("resnet18", "cross_stitch", [3, 1], width_mult=0.25, mixing="matrix")
    assert len(m.cross_stitch_units()) == 3 and len(m.cs_dec) == 0
    with torch.no_grad():
        for u in m.cross_stitch_units():
            u.weight.uniform_(0.2, 1.2)
    _equal_to_reference(m, cross_stitch_resnet_reference, torch.randn(2, 3, 64, 64, dtype=torch.float64))


# ---------------------------------------------------------------------- parameter counts ----

def test_mtan_resnet18_parameter_count_by_hand():
    dims = [9, 5, 9, 4, 2, 5, 2, 4]   # the 8 CelebA groups
    m = build_model("resnet18", "mtan", dims)
    w = (64, 128, 256, 512)
    att = att_params(64, 64, 64) + sum(att_params(2 * c, c, c) for c in w[1:])
    blocks = block_params(64, 128) + block_params(128, 256) + block_params(256, 512)
    heads = 512 * 40 + 40
    assert count_parameters(m.parameters()) == RESNET18_ENCODER_PARAMS + 8 * att + blocks + heads
    assert count_parameters(m.task_parameters(0)) == att + 512 * 9 + 9


def test_cross_stitch_resnet18_parameter_count_by_hand():
    m = build_model("resnet18", "cross_stitch", [9, 5])
    assert count_parameters(m.parameters()) == 2 * RESNET18_ENCODER_PARAMS + 512 * 14 + 14 + 3 * 2
    assert count_parameters(m.shared_parameters()) == 3 * 2   # only the alphas are shared
    assert m.last_shared_layer() is m.cs_enc[-1]


def test_mtan_vgg16_parameter_count_by_hand():
    m = build_model("vgg16", "mtan", [2, 3])
    w = (64, 128, 256, 512, 512)
    att = att_params(64, 64, 64) + sum(att_params(2 * c, c, c) for c in w[1:])
    blocks = sum(block_params(a, b) for a, b in zip(w[:-1], w[1:]))
    assert count_parameters(m.parameters()) == 14_714_688 + 2 * att + blocks + 512 * 5 + 5


# ----------------------------------------------------------------------- training ----

@pytest.mark.parametrize("backbone", ["resnet18", "vgg16"])
@pytest.mark.parametrize("scheme", ["mtan", "cross_stitch"])
def test_stagewise_schemes_train_on_classification_backbones(scheme, backbone):
    torch.manual_seed(0)
    m = build_model(backbone, scheme, [2, 1], width_mult=0.25)
    outs = m(torch.randn(4, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(4, 2), (4, 1)]
    outs[1].square().mean().backward()
    assert all(p.grad is None or not p.grad.any() for p in m.heads[0].parameters())
    assert all(p.grad is not None for p in m.heads[1].parameters())
    assert any(p.grad is not None and p.grad.any() for p in m.shared_parameters())


class _Flat(nn.Module):
    """A backbone without stages (what the unit-wise schemes need, not the stage-wise ones)."""

    def __init__(self, make_unit):
        super().__init__()
        self.u = make_unit(ConvSpec(3, 4, 3, 1, 1))

    def forward(self, x):
        return self.u(x).mean(dim=(2, 3))

    def units(self):
        return [self.u]

    def last_shared_layer(self):
        return self.u


@pytest.mark.parametrize("scheme", ["mtan", "cross_stitch"])
def test_stagewise_schemes_refuse_a_backbone_without_stages(scheme):
    BACKBONES.register("flat_test", lambda make_unit, **kw: Backbone(_Flat(make_unit), 4, lambda d: nn.Linear(4, d)))
    try:
        build_model("flat_test", "hard_sharing", [1])  # the unit-wise schemes run on it
        with pytest.raises(ValueError, match="staged backbone"):
            build_model("flat_test", scheme, [1, 1])
    finally:
        BACKBONES._entries.pop("flat_test", None)
