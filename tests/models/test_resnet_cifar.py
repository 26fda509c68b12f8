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
