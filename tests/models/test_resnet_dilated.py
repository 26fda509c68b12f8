"""The dilated ResNet-50 + ASPP model (CoNAL's LibMTL setting): topology against torchvision's
own dilated ResNet-50, parameter counts against LibMTL's measured ones (REFERENCE.md), shapes,
forward / backward, and the scheme / backbone contracts."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torchvision
from torch import nn

from mtlrepro.models import BACKBONES, ConvBN, build_model, count_parameters
from mtlrepro.models.backbones.resnet_dilated import RESNET50_ENCODER_PARAMS, ResNet50DilatedEncoder
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
