"""The dilated ResNet-50 + ASPP model (CoNAL's LibMTL setting): topology against torchvision's
own dilated ResNet-50, parameter counts against LibMTL's measured ones (REFERENCE.md), shapes,
forward / backward, and the scheme / backbone contracts."""
from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch
import torchvision
from torch import nn

from mtlrepro.models import BACKBONES, ConvBN, build_model, count_parameters
from mtlrepro.models.backbones.resnet_dilated import BLOCKS, RESNET50_ENCODER_PARAMS, ResNet50DilatedEncoder
from mtlrepro.models.heads.aspp import DeepLabHead, aspp_head_params
from mtlrepro.models.pretrained import map_to_units

NYU, CITY = [13, 1, 3], [7, 1]


def torchvision_dilated() -> nn.Module:
    """torchvision's ResNet-50 with stride replaced by dilation in layer3 / layer4: the same
    rule as LibMTL's ``_nostride_dilate`` (block 0's 3x3 keeps the previous dilation)."""
    return torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])


def tv_features(tv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    return tv.layer4(tv.layer3(tv.layer2(tv.layer1(x))))


def test_encoder_params_equal_torchvision_resnet50_without_fc():
    enc = ResNet50DilatedEncoder(ConvBN)
    tv = torchvision.models.resnet50(weights=None)
    tv_count = sum(p.numel() for n, p in tv.named_parameters() if not n.startswith("fc."))
    assert count_parameters(enc.parameters()) == tv_count == RESNET50_ENCODER_PARAMS == 23_508_032
    assert len(enc.units()) == 53


def test_equals_torchvision_dilated_resnet50_with_its_weights():
    """Same weights -> same features (float64): checks every stride, dilation and padding."""
    torch.manual_seed(0)
    tv = torchvision_dilated().double().eval()
    for m in tv.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    enc = ResNet50DilatedEncoder(ConvBN).double().eval()
    map_to_units(tv.state_dict(), enc.units())
    x = torch.randn(2, 3, 40, 56, dtype=torch.float64)
    with torch.no_grad():
        ref, out = tv_features(tv, x), enc(x)
    assert out.shape == ref.shape == (2, 2048, 5, 7)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_stages_widths_strides_and_staged_pass():
    enc = ResNet50DilatedEncoder(ConvBN).double().eval()
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        feats = enc.forward_features(x)
        taps = enc.forward_taps(x)
        out = enc(x)
    assert enc.widths == (256, 512, 1024, 2048) and enc.strides == (4, 8, 8, 8)
    for f, w, s in zip(feats, enc.widths, enc.strides):
        assert f.shape == (1, w, 64 // s, 96 // s)
    torch.testing.assert_close(enc.readout(feats[-1]), out, rtol=0, atol=0)
    # LibMTL's MTAN split: `first` is layer[:-1]'s output, `last` layer[-1]'s
    with torch.no_grad():
        h = enc.forward_stem(x)
        first = enc.layer1[:-1](h)
    torch.testing.assert_close(taps[0].first, first, rtol=0, atol=0)
    torch.testing.assert_close(taps[0].last, enc.layer1[-1](first).detach(), rtol=0, atol=0)


def test_aspp_head_params_by_hand():
    # ASPP: 1x1 + pooling 1x1 (2 x 2048*256), three 3x3 (3 x 9*2048*256), projection 1280*256;
    # 3x3 256->256; seven BNs of 256 (weight + bias); classifier 256*d + d
    by_hand = 2 * 2048 * 256 + 3 * 9 * 2048 * 256 + 1280 * 256 + 9 * 256 * 256 + 7 * 512
    assert by_hand == 16_125_440
    for d in (13, 1, 3, 7):
        head = DeepLabHead(2048, d)
        assert count_parameters(head.parameters()) == by_hand + 257 * d == aspp_head_params(d)


@pytest.mark.parametrize("sharing, out_dims, expected", [
    ("hard_sharing", NYU, 71_888_721), ("hard_sharing", CITY, 55_760_968),
    ("single_task", NYU, 118_904_785), ("single_task", CITY, 79_269_000),
], ids=["hps-nyu", "hps-city", "stl-nyu", "stl-city"])
def test_trainable_params_match_libmtl(sharing, out_dims, expected):
    """REFERENCE.md, CoNAL's setting: LibMTL's measured trainable parameter counts."""
    m = build_model("resnet50_dilated", sharing, out_dims)
    assert count_parameters(p for p in m.parameters() if p.requires_grad) == expected


@pytest.mark.parametrize("out_dims, expected", [(CITY, 72_044_232), (NYU, 92_347_921)], ids=["city", "nyu"])
def test_mtan_params_match_libmtl(out_dims, expected):
    """LibMTL's ResNet MTAN: attention hidden width C / 4, shared Bottleneck blocks (planes =
    next width / 4, 1x1 conv -> BN projection); counted by hand on top of hard sharing."""
    def att(i, h, o):  # Conv1x1(bias) -> BN -> Conv1x1(bias) -> BN
        return i * h + h + 2 * h + h * o + o + 2 * o

    def bottleneck(i, o):  # 1x1 (i -> p), 3x3 (p -> p), 1x1 (p -> o), projection 1x1 (i -> o), BNs
        p = o // 4
        return i * p + 9 * p * p + p * o + i * o + 2 * (p + p + o + o)

    w = (256, 512, 1024, 2048)
    per_task = att(w[0], w[0] // 4, w[0]) + sum(att(2 * c, c // 4, c) for c in w[1:])
    blocks = sum(bottleneck(w[s], w[s + 1]) for s in range(3))
    hps = {2: 55_760_968, 3: 71_888_721}[len(out_dims)]  # LibMTL-measured, as above
    assert hps + len(out_dims) * per_task + blocks == expected
    m = build_model("resnet50_dilated", "mtan", out_dims)
    assert count_parameters(m.parameters()) == expected


def test_mtan_forward_is_libmtls_resnet_mtan_float64():
    """LibMTL's ``_transform_resnet_MTAN.forward`` written on the model's modules: layer[:-1] /
    layer[-1] split, a 2x2 max pool after stage 0's block, another wherever sizes differ."""
    torch.manual_seed(0)
    m = build_model("resnet50_dilated", "mtan", [3, 1]).double().eval()
    enc = m.encoder
    blk = m.enc_block_att[0]
    assert type(blk).__name__ == "Bottleneck" and blk.downsample is not None
    assert m.enc_att[0][1][0].out_channels == 512 // 4
    x = torch.randn(1, 3, 32, 48, dtype=torch.float64)
    with torch.no_grad():
        h = enc.maxpool(enc.relu(enc.stem(x)))
        first, last = [], []
        for layer in (enc.layer1, enc.layer2, enc.layer3, enc.layer4):
            f = layer[:-1](h)
            h = layer[-1](f)
            first.append(f), last.append(h)
        ref = []
        for t in range(2):
            a = None
            for i in range(4):
                if i == 0:
                    mask = m.enc_att[t][0](first[0])
                else:
                    if a.shape[-2:] != first[i].shape[-2:]:
                        a = torch.nn.functional.max_pool2d(a, 2, 2)
                    mask = m.enc_att[t][i](torch.cat([first[i], a], dim=1))
                a = mask * last[i]
                if i < 3:
                    a = m.enc_block_att[i](a)
                if i == 0:
                    a = torch.nn.functional.max_pool2d(a, 2, 2)
            ref.append(m.heads[t](a))
        out = m(x)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)


def test_default_head_is_aspp_and_output_is_input_size_with_gradients():
    torch.manual_seed(0)
    m = build_model("resnet50_dilated", "hard_sharing", [7, 1])
    assert all(isinstance(h, DeepLabHead) for h in m.heads)
    x = torch.randn(2, 3, 32, 64)
    assert m.encoder(x).shape == (2, 2048, 4, 8)  # output stride 8 before the upsampling
    outs = m(x)
    assert [tuple(o.shape) for o in outs] == [(2, 7, 32, 64), (2, 1, 32, 64)]
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing


def test_head_upsamples_bilinearly_with_aligned_corners():
    head = DeepLabHead(16, 2, ch=8).eval()
    z = torch.randn(1, 16, 4, 6)
    with torch.no_grad():
        low = head.body(z)
        out = head(z)
    assert out.shape == (1, 2, 32, 48)
    # align_corners=True keeps the corner pixels of the low-resolution map
    for i, j in [(0, 0), (-1, -1), (0, -1), (-1, 0)]:
        torch.testing.assert_close(out[..., i, j], low[..., i, j])


@pytest.mark.parametrize("sharing", ["mtan", "cross_stitch", "max_roaming"])
def test_other_schemes_run_on_it(sharing):
    m = build_model("resnet50_dilated", sharing, [3, 1])
    m.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        outs = m.forward_all(x) if m.task_conditional else m(x)
    assert [tuple(o.shape) for o in outs] == [(1, 3, 32, 32), (1, 1, 32, 32)]


def test_unit_that_ignores_dilation_is_refused():
    with pytest.raises(ValueError, match="ignores ConvSpec.dilation=2"):
        ResNet50DilatedEncoder(lambda spec: ConvBN(replace(spec, dilation=1)))


def test_pretrained_refused_by_backbones_without_weights():
    with pytest.raises(ValueError, match="'segnet' has no pretrained weights 'imagenet1k_v1' "
                       r"\(it has none\).*'resnet50_dilated': \('imagenet1k_v1',\)"):
        build_model("segnet", "hard_sharing", [1], pretrained="imagenet1k_v1")
    with pytest.raises(ValueError, match="it has imagenet1k_v1"):
        build_model("resnet50_dilated", "hard_sharing", [1], pretrained="IMAGENET1K_V2")


def test_fingerprint_defaults_do_not_repeat_pretrained():
    from mtlrepro.fingerprint import resolve_kwargs
    assert "pretrained" not in resolve_kwargs({}, BACKBONES.get("resnet50_dilated"))


# --- the dilated ResNet-18 (GatedMTL's PASCAL-Context encoder) and the width multiplier ---------

def _nostride_dilate(m: nn.Module, dilate: int) -> None:
    """Vandenhende's / LibMTL's ``ResnetDilated._nostride_dilate``, written out for the test."""
    if isinstance(m, nn.Conv2d):
        if m.stride == (2, 2):
            m.stride = (1, 1)
            if m.kernel_size == (3, 3):
                m.dilation, m.padding = (dilate // 2, dilate // 2), (dilate // 2, dilate // 2)
        elif m.kernel_size == (3, 3):
            m.dilation, m.padding = (dilate, dilate), (dilate, dilate)


def test_dilated_resnet18_equals_torchvision_resnet18_dilated_by_vandenhendes_rule():
    from mtlrepro.models.backbones.resnet_dilated import ResNet18DilatedEncoder
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None).double().eval()
    tv.layer3.apply(lambda m: _nostride_dilate(m, 2))
    tv.layer4.apply(lambda m: _nostride_dilate(m, 4))
    enc = ResNet18DilatedEncoder(ConvBN).double().eval()
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    map_to_units(state, enc.units())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ours, ref = enc(x), tv_features(tv, x)
    assert ours.shape == (2, 512, 8, 8)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    # 11,176,512 = torchvision's resnet18 without fc
    assert count_parameters(enc.parameters()) == 11_176_512


def test_pascal_r18_aspp_counts_match_the_reference():
    pascal = [21, 7, 1, 3, 1]
    hps = build_model("resnet18_dilated", "hard_sharing", pascal)
    stl = build_model("resnet18_dilated", "single_task", pascal)
    heads = sum(aspp_head_params(d, in_ch=512) for d in pascal)
    assert count_parameters(hps.parameters()) == 11_176_512 + heads
    assert count_parameters(stl.parameters()) == 5 * 11_176_512 + heads
    assert abs(count_parameters(hps.parameters()) / 34.80e6 - 1) < 0.001     # REFERENCE 34.80M
    assert abs(count_parameters(stl.parameters()) / 79.50e6 - 1) < 0.001     # REFERENCE 79.50M


def test_width_mult_scales_every_stage_and_keeps_the_full_network_at_one():
    full = ResNet50DilatedEncoder(ConvBN)
    half = ResNet50DilatedEncoder(ConvBN, width_mult=0.5)
    assert half.widths == tuple(w // 2 for w in full.widths) and half.out_features == 1024
    assert count_parameters(full.parameters()) == RESNET50_ENCODER_PARAMS
    m = build_model("resnet50_dilated", "hard_sharing", [40, 1, 3], width_mult=0.25)
    assert m(torch.randn(2, 3, 32, 32))[0].shape == (2, 40, 32, 32)
    with pytest.raises(ValueError, match="width_mult 1 only"):
        build_model("resnet50_dilated", "hard_sharing", [1], width_mult=0.5, pretrained="imagenet1k_v1")


def test_aspp_upsampling_follows_the_setting():
    torch.manual_seed(0)
    lib, van = DeepLabHead(8, 2, ch=4), DeepLabHead(8, 2, ch=4, align_corners=False)
    van.load_state_dict(lib.state_dict())
    lib.eval(), van.eval()
    x = torch.randn(1, 8, 4, 4)
    y = van.body(x)
    torch.testing.assert_close(van(x), torch.nn.functional.interpolate(y, size=(32, 32), mode="bilinear"))
    assert not torch.allclose(van(x), lib(x))


# --- resnet18_dilated: hand counts, every conv's geometry, strides, MTAN / cross-stitch, weights --

def _r18_hand_count(w: tuple[int, int, int, int]) -> int:
    """torchvision's ResNet-18 without fc, by hand: 7x7 stem, two BasicBlocks (two bias-free 3x3
    convs + BN each) per stage, a 1x1 conv + BN projection in block 0 where the shape changes;
    a BN has 2 learnable parameters per channel."""
    total = 3 * w[0] * 49 + 2 * w[0]
    c_in = w[0]
    for c in w:
        for b in range(2):
            total += 9 * c_in * c + 2 * c + 9 * c * c + 2 * c
            if b == 0 and c_in != c:
                total += c_in * c + 2 * c
            c_in = c
    return total


@pytest.mark.parametrize("mult", [1.0, 0.5, 0.25])
def test_resnet18_dilated_params_by_hand(mult):
    from mtlrepro.models.backbones.resnet_dilated import ResNet18DilatedEncoder
    w = tuple(int(c * mult) for c in (64, 128, 256, 512))
    enc = ResNet18DilatedEncoder(ConvBN, width_mult=mult)
    assert count_parameters(enc.parameters()) == _r18_hand_count(w)
    assert enc.widths == w and enc.out_features == w[-1] and len(enc.units()) == 20
    if mult == 1.0:
        assert _r18_hand_count(w) == 11_176_512


def _r50_hand_count(p: tuple[int, int, int, int]) -> int:
    """torchvision's ResNet-50 without fc, by hand (Bottleneck 1x1 -> 3x3 -> 1x1, expansion 4,
    a 1x1 projection in every stage's block 0), for planes ``p`` (the stem has ``p[0]``)."""
    total = 3 * p[0] * 49 + 2 * p[0]
    c_in = p[0]
    for planes, n in zip(p, BLOCKS):
        out = 4 * planes
        for b in range(n):
            total += c_in * planes + 9 * planes * planes + planes * out + 2 * (2 * planes + out)
            if b == 0:
                total += c_in * out + 2 * out
            c_in = out
    return total


@pytest.mark.parametrize("mult", [1.0, 0.5, 0.25])
def test_resnet50_width_mult_params_by_hand(mult):
    p = tuple(int(c * mult) for c in (64, 128, 256, 512))
    enc = ResNet50DilatedEncoder(ConvBN, width_mult=mult)
    assert count_parameters(enc.parameters()) == _r50_hand_count(p)
    assert enc.out_features == 4 * p[-1]


@pytest.mark.parametrize("mult, expected", [(0.5, (31_473_740, 43_259_020)), (0.25, (15_658_812, 18_620_764))])
def test_nyud_width_mult_counts_keep_the_aspp_width(mult, expected):
    """GatedMTL Table 7 right (NYUD, 3 tasks): encoder x ``mult``, the ASPP decoders read the
    narrower map with their 256 channels (hand counts: encoder + aspp_head_params)."""
    p = tuple(int(c * mult) for c in (64, 128, 256, 512))
    dims = [40, 1, 3]
    heads = sum(aspp_head_params(d, in_ch=4 * p[-1]) for d in dims)
    assert (_r50_hand_count(p) + heads, 3 * _r50_hand_count(p) + heads) == expected
    assert count_parameters(build_model("resnet50_dilated", "hard_sharing", dims, width_mult=mult)
                            .parameters()) == expected[0]
    # the other reading, ASPP channels x mult too, is the head's ``ch``
    m = build_model("resnet50_dilated", "hard_sharing", dims, width_mult=mult, head="aspp",
                    head_kwargs={"ch": int(256 * mult)})
    ch_heads = sum(aspp_head_params(d, in_ch=4 * p[-1], ch=int(256 * mult)) for d in dims)
    assert count_parameters(m.parameters()) == _r50_hand_count(p) + ch_heads


def _tv_resnet18_dilated() -> nn.Module:
    tv = torchvision.models.resnet18(weights=None)
    tv.layer3.apply(lambda m: _nostride_dilate(m, 2))
    tv.layer4.apply(lambda m: _nostride_dilate(m, 4))
    return tv


def test_resnet18_dilated_every_conv_as_vandenhendes_rule():
    """Unit ``i`` is torchvision's conv ``i`` (state_dict order) after ``_nostride_dilate``:
    same kernel, stride, dilation and padding; and by name, the rule as specified."""
    from mtlrepro.models.backbones.resnet_dilated import ResNet18DilatedEncoder
    enc = ResNet18DilatedEncoder(ConvBN)
    tv = _tv_resnet18_dilated()
    tv_convs = [m for m in tv.modules() if isinstance(m, nn.Conv2d)]
    ours = [next(m for m in u.modules() if isinstance(m, nn.Conv2d)) for u in enc.units()]
    assert len(ours) == len(tv_convs) == 20
    geom = lambda c: (c.in_channels, c.out_channels, c.kernel_size, c.stride, c.dilation, c.padding)  # noqa: E731
    assert [geom(c) for c in ours] == [geom(c) for c in tv_convs]
    conv = lambda u: next(m for m in u.modules() if isinstance(m, nn.Conv2d))  # noqa: E731
    for layer, (d0, d) in ((enc.layer3, (1, 2)), (enc.layer4, (2, 4))):
        assert conv(layer[0].conv1).stride == (1, 1) and conv(layer[0].conv1).dilation == (d0, d0)
        assert conv(layer[0].conv2).dilation == (d, d) and conv(layer[1].conv1).dilation == (d, d)
        assert conv(layer[1].conv2).dilation == (d, d) and conv(layer[1].conv2).padding == (d, d)
        assert conv(layer[0].downsample).stride == (1, 1) and conv(layer[0].downsample).kernel_size == (1, 1)
    assert conv(enc.layer2[0].conv1).stride == (2, 2) and conv(enc.layer2[0].conv1).dilation == (1, 1)


@pytest.mark.parametrize("hw", [(64, 96), (40, 56)])
def test_resnet18_dilated_output_strides_and_staged_pass(hw):
    from mtlrepro.models.backbones.resnet_dilated import ResNet18DilatedEncoder
    torch.manual_seed(0)
    enc = ResNet18DilatedEncoder(ConvBN, width_mult=0.25).double().eval()
    x = torch.randn(1, 3, *hw, dtype=torch.float64)
    with torch.no_grad():
        feats, out = enc.forward_features(x), enc(x)
    assert enc.widths == (16, 32, 64, 128) and enc.strides == (4, 8, 8, 8)
    for f, w, s in zip(feats, enc.widths, enc.strides):
        assert f.shape == (1, w, hw[0] // s, hw[1] // s)
    torch.testing.assert_close(enc.readout(feats[-1]), out, rtol=0, atol=0)


def test_mtan_on_resnet18_dilated_is_vandenhendes_mtan_float64():
    """Vandenhende's ``models/mtan.py`` on a dilated ResNet-18 (``configs/pascal/resnet18/mtan.yml``):
    AttentionLayer(C, C/4, C) on ``layer[:-1]``'s output, a shared Bottleneck refinement, a 2x2
    max pool after layer1 only (``downsample: layer1``), written on the model's modules."""
    torch.manual_seed(0)
    m = build_model("resnet18_dilated", "mtan", [3, 1], width_mult=0.25).double().eval()
    enc = m.encoder
    x = torch.randn(1, 3, 32, 48, dtype=torch.float64)
    with torch.no_grad():
        h = enc.maxpool(enc.relu(enc.stem(x)))
        first, last = [], []
        for layer in (enc.layer1, enc.layer2, enc.layer3, enc.layer4):
            f = layer[:-1](h)
            h = layer[-1](f)
            first.append(f), last.append(h)
        ref = []
        for t in range(2):
            a = m.enc_att[t][0](first[0]) * last[0]
            a = torch.nn.functional.max_pool2d(m.enc_block_att[0](a), 2, 2)
            for i in (1, 2, 3):
                a = m.enc_att[t][i](torch.cat([first[i], a], dim=1)) * last[i]
                if i < 3:
                    a = m.enc_block_att[i](a)
            ref.append(m.heads[t](a))
        out = m(x)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)


def test_mtan_resnet18_dilated_params_by_hand():
    def att(i, h, o):  # Conv1x1(bias) -> BN -> Conv1x1(bias) -> BN
        return i * h + h + 2 * h + h * o + o + 2 * o

    def bottleneck(i, o):  # Vandenhende's RefinementBlock: Bottleneck(i, o / 4), 1x1 conv + BN projection
        p = o // 4
        return i * p + 9 * p * p + p * o + i * o + 2 * (p + p + o + o)

    w, dims = (64, 128, 256, 512), [21, 7, 1, 3, 1]
    per_task = att(w[0], w[0] // 4, w[0]) + sum(att(2 * c, c // 4, c) for c in w[1:])
    blocks = sum(bottleneck(w[s], w[s + 1]) for s in range(3))
    heads = sum(aspp_head_params(d, in_ch=512) for d in dims)
    m = build_model("resnet18_dilated", "mtan", dims)
    assert count_parameters(m.parameters()) == _r18_hand_count(w) + heads + 5 * per_task + blocks


def test_cross_stitch_on_resnet18_dilated_float64():
    """A unit before layer2, layer3, layer4 (the scheme's rule); dense heads on the last map."""
    torch.manual_seed(0)
    m = build_model("resnet18_dilated", "cross_stitch", [3, 1], width_mult=0.25, mixing="matrix").double().eval()
    with torch.no_grad():
        for u in m.cross_stitch_units():
            u.weight.uniform_(0.2, 1.2)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        xs = [net.maxpool(net.relu(net.stem(x))) for net in m.nets]
        for s, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
            if s > 0:
                xs = m.cs_enc[s - 1](xs)
            xs = [getattr(net, name)(h) for net, h in zip(m.nets, xs)]
        ref = [head(z) for head, z in zip(m.heads, xs)]
        out = m(x)
    assert [tuple(o.shape) for o in out] == [(1, 3, 32, 32), (1, 1, 32, 32)]
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # torch.hub.get_dir() reads TORCH_HOME
    return tmp_path


def test_resnet18_dilated_loads_a_torchvision_resnet18_file(torch_home, monkeypatch):
    """A fake ``resnet18-<sha256 prefix>.pth`` (a random torchvision ResNet-18's state dict) in the
    hub cache goes through the real loader; the tensors land where their names say."""
    import hashlib
    torch.manual_seed(3)
    tv = torchvision.models.resnet18(weights=None)
    for mod in tv.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    state = tv.state_dict()
    ckpt = torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    raw = ckpt / "raw.pth"
    torch.save(state, raw)
    named = raw.with_name(f"resnet18-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth")
    raw.rename(named)
    seen = []
    monkeypatch.setattr("mtlrepro.models.pretrained.weights_path",
                        lambda name="resnet50", weights="IMAGENET1K_V1": seen.append(name) or named)
    m = build_model("resnet18_dilated", "hard_sharing", [2, 1], pretrained="imagenet1k_v1")
    assert seen == ["resnet18"]
    enc = m.encoder
    torch.testing.assert_close(enc.stem[0].weight, state["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(enc.layer3[0].conv1[0].weight, state["layer3.0.conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(enc.layer3[0].downsample[1].running_var, state["layer3.0.downsample.1.running_var"],
                               rtol=0, atol=0)
    torch.testing.assert_close(enc.layer4[1].conv2[1].bias, state["layer4.1.bn2.bias"], rtol=0, atol=0)
    assert len(enc.state_dict()) == len([k for k in state if not k.startswith("fc.")]) == 20 * 6


def test_resnet18_dilated_missing_weights_name_the_file(torch_home):
    from mtlrepro.data.errors import DataError
    name = os.path.basename(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url)
    with pytest.raises(DataError) as e:
        build_model("resnet18_dilated", "hard_sharing", [1], pretrained="imagenet1k_v1")
    msg = str(e.value)
    assert str(torch_home / "hub" / "checkpoints" / name) in msg
    assert "torchvision.models.resnet18(weights='IMAGENET1K_V1')" in msg
