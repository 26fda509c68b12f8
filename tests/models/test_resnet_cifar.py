"""CIFAR-style ResNet-20 (GatedMTL's CelebA encoder): hand-counted parameters, shapes, shortcuts."""
from __future__ import annotations

import pytest
import torch

from mtlrepro.models import ConvBN, build_model, count_parameters
from mtlrepro.models.backbones.resnet_cifar import CifarResNetEncoder, ShortcutA


def _hand_count(w: tuple[int, int, int], shortcut: str) -> int:
    """3x3 convs without bias + BN (2 per channel), 3 stages of 3 blocks."""
    conv_bn = lambda i, o, k: i * o * k * k + 2 * o   # noqa: E731
    total = conv_bn(3, w[0], 3)
    c_in = w[0]
    for c in w:
        for _ in range(3):
            total += conv_bn(c_in, c, 3) + conv_bn(c, c, 3)
            if shortcut == "B" and c_in != c:
                total += conv_bn(c_in, c, 1)
            c_in = c
    return total


@pytest.mark.parametrize("mult,widths", [(1.0, (16, 32, 64)), (0.5, (8, 16, 32)), (0.25, (4, 8, 16))])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_parameters_equal_the_hand_count(mult, widths, shortcut):
    enc = CifarResNetEncoder(ConvBN, width_mult=mult, shortcut=shortcut)
    assert count_parameters(enc.parameters()) == _hand_count(widths, shortcut)
    assert len(enc.units()) == 19 + (2 if shortcut == "B" else 0)
    assert enc.out_features == widths[-1]


def test_no_pooling_in_the_stem_and_the_strides():
    enc = CifarResNetEncoder(ConvBN).eval()
    feats = enc.forward_features(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 32), (16, 16), (8, 8)]
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 64)


def test_option_a_shortcut_is_subsample_and_zero_pad():
    x = torch.arange(2 * 4 * 4, dtype=torch.float64).view(1, 2, 4, 4)
    y = ShortcutA(2, 6, 2)(x)
    assert y.shape == (1, 6, 2, 2)
    torch.testing.assert_close(y[:, 2:4], x[:, :, ::2, ::2])
    assert y[:, :2].abs().sum() == 0 and y[:, 4:].abs().sum() == 0


def test_three_linear_heads_and_stl():
    m = build_model("resnet20", "hard_sharing", [1, 1, 5], width_mult=0.5)
    outs = m(torch.randn(4, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(4, 1), (4, 1), (4, 5)]
    stl = build_model("resnet20", "single_task", [1, 1, 5])
    assert stl(torch.randn(2, 3, 32, 32), task=2).shape == (2, 5)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNetEncoder(ConvBN, depth=21)


# --- against an independent ResNet-20 (the common public CIFAR code), MTAN and cross-stitch on it --

class _RefBlock(torch.nn.Module):
    """A CIFAR BasicBlock as the common public ResNet-20 code writes it (torchvision-style names,
    option A: ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``)."""

    def __init__(self, i: int, o: int, stride: int, option: str):
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1 = nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o)
        self.conv2, self.bn2 = nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o)
        self.option, self.pad = option, (o - i) // 2
        if option == "B" and (stride != 1 or i != o):
            self.downsample = nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))
        self.shape_changes = stride != 1 or i != o

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if not self.shape_changes:
            sc = x
        elif self.option == "A":
            sc = torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        else:
            sc = self.downsample(x)
        return torch.relu(out + sc)


class _RefResNet20(torch.nn.Module):
    def __init__(self, w: tuple[int, int, int], option: str):
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0])
        c_in, layers = w[0], []
        for s, c in enumerate(w):
            blocks = []
            for b in range(3):
                blocks.append(_RefBlock(c_in, c, 2 if (s > 0 and b == 0) else 1, option))
                c_in = c
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(h))).mean(dim=(2, 3))


@pytest.mark.parametrize("mult,widths", [(1.0, (16, 32, 64)), (0.25, (4, 8, 16))])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_equals_an_independent_resnet20_float64(mult, widths, shortcut):
    from mtlrepro.models.pretrained import map_to_units
    torch.manual_seed(0)
    ref = _RefResNet20(widths, shortcut).double()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    enc = CifarResNetEncoder(ConvBN, width_mult=mult, shortcut=shortcut).double()
    map_to_units(ref.state_dict(), enc.units())
    assert count_parameters(enc.parameters()) == count_parameters(ref.parameters())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for train in (False, True):
        ref.train(train), enc.train(train)
        with torch.no_grad():
            torch.testing.assert_close(enc(x), ref(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("train", [False, True])
def test_staged_pass_equals_forward_and_declared_widths(train):
    torch.manual_seed(0)
    enc = CifarResNetEncoder(ConvBN, width_mult=0.5).double().train(train)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        feats = enc.forward_features(x)
        out = enc(x)
    assert enc.widths == (8, 16, 32) and enc.strides == (1, 2, 4) and enc.stem_width == 8
    for f, w, s in zip(feats, enc.widths, enc.strides):
        assert f.shape == (2, w, 32 // s, 32 // s)
    torch.testing.assert_close(enc.readout(feats[-1]), out, rtol=0, atol=0)


def test_mtan_on_resnet20_float64():
    """MTAN's rule on the CIFAR ResNet (the scheme's defaults: hidden C, Conv3x3 -> BN -> ReLU
    blocks): gate the last block's output with att(first block's output [, attended previous]),
    2x2 max pool between stages (every stage halves the size)."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    m = build_model("resnet20", "mtan", [2, 1], width_mult=0.25).double().eval()
    enc = m.encoder
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        h = enc.relu(enc.stem(x))
        first, last = [], []
        for layer in (enc.layer1, enc.layer2, enc.layer3):
            f = layer[0](h)
            h = layer[2](layer[1](f))
            first.append(f), last.append(h)
        ref = []
        for t in range(2):
            a = m.enc_att[t][0](first[0]) * last[0]
            for s in (1, 2):
                a = F.max_pool2d(m.enc_block_att[s - 1](a), 2, 2)
                a = m.enc_att[t][s](torch.cat((first[s], a), dim=1)) * last[s]
            ref.append(m.heads[t](a.mean(dim=(2, 3))))
        out = m(x)
    assert [tuple(o.shape) for o in out] == [(2, 2), (2, 1)]
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)


def test_cross_stitch_on_resnet20_trains():
    torch.manual_seed(0)
    m = build_model("resnet20", "cross_stitch", [1, 1, 1], width_mult=0.25)
    assert len(m.cross_stitch_units()) == 2   # before layer2 and layer3
    outs = m(torch.randn(4, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(4, 1)] * 3
    outs[2].square().mean().backward()
    assert all(p.grad is not None for p in m.heads[2].parameters())
    assert any(p.grad is not None and p.grad.any() for p in m.shared_parameters())
