"""DPT on timm's ViTs (backbones/vit.py, heads/dpt.py): shapes, sharing, hand counts, weights."""
from __future__ import annotations

import pytest
import torch

from mtlrepro.data.errors import DataError
from mtlrepro.models import build_model, count_parameters
from mtlrepro.models.heads.dpt import DPTHead, dpt_head_params

NYUD = [40, 1, 3]


@pytest.fixture(scope="module")
def hps():
    torch.manual_seed(0)
    return build_model("dpt_vits", "hard_sharing", NYUD)


def test_every_task_gets_a_full_resolution_map(hps):
    outs = hps(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 40, 64, 96), (2, 1, 64, 96), (2, 3, 64, 96)]


def test_reassembled_maps_are_at_strides_4_to_32(hps):
    feats = hps.encoder(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(48, 16, 24), (96, 8, 12), (192, 4, 6), (384, 2, 3)]
    with pytest.raises(ValueError, match="multiples of 32"):
        hps.encoder(torch.randn(1, 3, 48, 64))


def test_decoder_parameters_equal_the_hand_count():
    widths = (96, 192, 384, 768)
    assert count_parameters(DPTHead(widths, 40, features=64).parameters()) == dpt_head_params(40, widths, 64)
    # the hand count itself, written out for f = 64, one output: rn 9*64*1440, 4 fusions, the head
    assert dpt_head_params(1, widths, 64) == 9 * 64 * 1440 + 4 * (4 * (9 * 64 * 64 + 64) + 64 * 64 + 64) \
        + 9 * 64 * 32 + 32 + 9 * 32 * 32 + 32 + 32 + 1


def test_one_shared_vit_in_hard_sharing_three_in_stl(hps):
    stl = build_model("dpt_vits", "single_task", NYUD)
    enc = count_parameters(hps.encoder.parameters())
    heads = sum(dpt_head_params(d, (48, 96, 192, 384)) for d in NYUD)
    assert count_parameters(hps.parameters()) == enc + heads
    assert count_parameters(stl.parameters()) == 3 * enc + heads
    # the ViT-S/16 without its classifier and final norm, + 4 readouts + reassemble
    d, tokens = 384, 24 * 24 + 1
    block = 2 * (2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    vit = (3 * d * 256 + d) + d + tokens * d + 12 * block      # patch embed, cls, pos embed, 12 blocks (no final norm)
    readout = 4 * (2 * 384 * 384 + 384)
    post = (384 * 48 + 48 + 48 * 48 * 16 + 48) + (384 * 96 + 96 + 96 * 96 * 4 + 96) + (384 * 192 + 192) \
        + (384 * 384 + 384 + 384 * 384 * 9 + 384)
    assert enc == vit + readout + post


def test_patch_embedding_is_a_conv_unit_holding_timms_weights():
    import timm
    torch.manual_seed(1)
    ref = timm.create_model("vit_small_patch16_384", pretrained=False, dynamic_img_size=True, num_classes=0)
    torch.manual_seed(1)
    m = build_model("dpt_vits", "hard_sharing", [1])
    (unit,) = m.encoder.units()
    conv = [c for c in unit.modules() if isinstance(c, torch.nn.Conv2d)][0]
    assert torch.equal(conv.weight, ref.patch_embed.proj.weight) and torch.equal(conv.bias, ref.patch_embed.proj.bias)


def test_missing_weights_name_what_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(DataError, match="vit_small_patch16_384.augreg_in21k_ft_in1k.*not in the local cache"):
        build_model("dpt_vits", "hard_sharing", [1], pretrained="in21k_ft_in1k")
