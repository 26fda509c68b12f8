"""DPT on timm's ViTs (``dpt_vitb`` / ``dpt_vits`` backbones, ``dpt`` head): shapes, sharing, hand
counts, equality with timm's blocks and with a functional transcription of DPT's forward.

Most cases use a test-sized ViT (``timm_kwargs``: width 32, 2 heads, timm's 12 blocks), the
ViT-S/16 itself where the real widths matter; inputs 2x3x64x96 (a 4x6 patch grid).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch
import torch.nn.functional as F

from mtlrepro.data.errors import DataError
from mtlrepro.models import build_model
from mtlrepro.models.backbones.vit import ViTEncoder, resize_pos_embed
from mtlrepro.models.heads.dpt import DPTHead
from mtlrepro.models.units import ConvBN

OUT = [40, 1, 3]
TINY = dict(embed_dim=32, num_heads=2)
X = (2, 3, 64, 96)


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def test_resize_pos_embed_is_bilinear_by_hand():
    # 1x2 grid (a, b) = (1, 3) -> 1x4, align_corners=False: a, (3a+b)/4, (a+3b)/4, b; the cls row stays
    pos = torch.tensor([7.0, 1.0, 3.0]).view(1, 3, 1)
    out = resize_pos_embed(pos, (1, 2), (1, 4))
    assert out.flatten().tolist() == [7.0, 1.0, 1.5, 2.5, 3.0]
    assert resize_pos_embed(pos, (1, 2), (1, 2)) is pos


def test_encoder_equals_timm_hooked_blocks():
    """At timm's native grid the map holds blocks 2/5/8/11's outputs (DPT's forward hooks) as
    [patch tokens; broadcast class token], equal to timm's own forward in float64."""
    kw = dict(TINY, img_size=(64, 96))
    torch.manual_seed(0)
    net = timm.create_model("vit_small_patch16_384", pretrained=False, num_classes=0, **kw).double().eval()
    torch.manual_seed(0)
    enc = ViTEncoder(ConvBN, "vit_small_patch16_384", timm_kwargs=kw).double().eval()
    assert torch.equal(enc.blocks[3].mlp.fc1.weight, net.blocks[3].mlp.fc1.weight)
    assert torch.equal(enc.patch_embed[0].weight, net.patch_embed.proj.weight)
    got: dict[int, torch.Tensor] = {}
    for k in (2, 5, 8, 11):
        net.blocks[k].register_forward_hook(lambda m, i, o, k=k: got.__setitem__(k, o))
    x = torch.randn(*X, dtype=torch.float64)
    with torch.no_grad():
        net.forward_features(x)
        z = enc(x)
    assert z.shape == (2, 8 * 32, 4, 6)
    for l, k in enumerate((2, 5, 8, 11)):
        t = got[k]
        patches = t[:, 1:].transpose(1, 2).reshape(2, 32, 4, 6)
        torch.testing.assert_close(z[:, 64 * l:64 * l + 32], patches)
        torch.testing.assert_close(z[:, 64 * l + 32:64 * (l + 1)], t[:, 0, :, None, None].expand(-1, -1, 4, 6))


def _reference_dpt(head: DPTHead, tokens: list[torch.Tensor], h: int, w: int) -> torch.Tensor:
    """DPT's forward (``forward_vit`` + ``DPT.forward`` + the depth head) written on tokens with
    functional ops: Linear readout on ``cat(patch, cls)``, scale_factor=2 upsampling."""
    def rcu(u, x):
        y = F.conv2d(F.relu(x), u.conv1.weight, u.conv1.bias, padding=1)
        return x + F.conv2d(F.relu(y), u.conv2.weight, u.conv2.bias, padding=1)

    def fuse(b, x, skip=None):
        if skip is not None:
            x = x + rcu(b.res_conf_unit1, skip)
        x = F.interpolate(rcu(b.res_conf_unit2, x), scale_factor=2, mode="bilinear", align_corners=True)
        return F.conv2d(x, b.out_conv.weight, b.out_conv.bias)

    rn = []
    for l, t in enumerate(tokens):
        proj = head.readouts[l].project[0]
        feats = torch.cat([t[:, 1:], t[:, :1].expand_as(t[:, 1:])], dim=-1)
        y = F.gelu(F.linear(feats, proj.weight.flatten(1), proj.bias)).transpose(1, 2).unflatten(2, (h, w))
        c1, rs = head.postprocess[l][0], head.postprocess[l][1]
        y = F.conv2d(y, c1.weight, c1.bias)
        if l in (0, 1):
            y = F.conv_transpose2d(y, rs.weight, rs.bias, stride=4 if l == 0 else 2)
        elif l == 3:
            y = F.conv2d(y, rs.weight, rs.bias, stride=2, padding=1)
        rn.append(F.conv2d(y, head.layer_rn[l].weight, padding=1))
    r = head.refinenets
    path = fuse(r[0], fuse(r[1], fuse(r[2], fuse(r[3], rn[3]), rn[2]), rn[1]), rn[0])
    oc = head.output_conv
    y = F.conv2d(path, oc[0].weight, oc[0].bias, padding=1)
    y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
    y = F.relu(F.conv2d(y, oc[2].weight, oc[2].bias, padding=1))
    return F.conv2d(y, oc[4].weight, oc[4].bias)


def test_dpt_head_equals_functional_dpt():
    torch.manual_seed(0)
    enc = ViTEncoder(ConvBN, "vit_small_patch16_384", timm_kwargs=TINY).double().eval()
    head = DPTHead(enc.out_features, 3, features=16).double().eval()
    x = torch.randn(*X, dtype=torch.float64)
    with torch.no_grad():
        got = head(enc(x))
        want = _reference_dpt(head, enc.forward_tokens(x), 4, 6)
    assert got.shape == (2, 3, 64, 96)
    torch.testing.assert_close(got, want)


def test_vits_output_shapes_and_reassemble_strides():
    torch.manual_seed(0)
    m = build_model("dpt_vits", "hard_sharing", OUT).eval()
    x = torch.randn(*X)
    with torch.no_grad():
        outs = m(x)
        maps = m.heads[0].reassemble(m.encode(x))
    assert [tuple(o.shape) for o in outs] == [(2, d, 64, 96) for d in OUT]
    # strides 4 / 8 / 16 / 32 of 64x96; ViT-S widths C/8 .. C (Depth-Anything's vits convention)
    assert [tuple(t.shape) for t in maps] == [(2, 48, 16, 24), (2, 96, 8, 12), (2, 192, 4, 6), (2, 384, 2, 3)]


def test_sides_multiple_of_16_not_32_and_bad_sides():
    m = build_model("dpt_vits", "hard_sharing", [1], timm_kwargs=TINY, features=16).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 48, 80))[0].shape == (1, 1, 48, 80)   # grid 3x5: odd sides
        with pytest.raises(ValueError, match="multiples of 16"):
            m(torch.randn(1, 3, 50, 64))


def test_hard_sharing_one_vit_single_task_three():
    hs = build_model("dpt_vits", "hard_sharing", OUT, timm_kwargs=TINY, features=16)
    st = build_model("dpt_vits", "single_task", OUT, timm_kwargs=TINY, features=16)
    assert sum(isinstance(m, ViTEncoder) for m in hs.modules()) == 1
    assert sum(isinstance(m, ViTEncoder) for m in st.modules()) == 3
    enc, heads = n_params(hs.encoder), [n_params(h) for h in hs.heads]
    assert n_params(hs) == enc + sum(heads)
    assert n_params(st) == 3 * enc + sum(heads)
    assert [st.active_parameter_count(t) for t in range(3)] == [enc + h for h in heads]
    with torch.no_grad():
        outs = st.eval().forward_all(torch.randn(*X))
    assert [tuple(o.shape) for o in outs] == [(2, d, 64, 96) for d in OUT]
    assert len(hs.units()) == 1 and hs.units()[0] is hs.encoder.patch_embed
    assert hs.last_shared_layer() is hs.encoder.blocks[11].mlp.fc2


def test_encoder_params_hand_and_timm():
    """Hand count 144 C^2 + 1503 C; equals timm's model less its final norm (2C) and head (1000C + 1000)."""
    for name, c in (("vit_base_patch16_384", 768), ("vit_small_patch16_384", 384)):
        with torch.device("meta"):
            enc = ViTEncoder(ConvBN, name)
            net = timm.create_model(name, pretrained=False)
        hand = 3 * 16 * 16 * c + c + c + 577 * c + 12 * (2 * c + 3 * c * c + 3 * c + c * c + c + 2 * c
                                                      + 4 * c * c + 4 * c + 4 * c * c + c)
        assert n_params(enc) == hand == 144 * c * c + 1503 * c
        assert n_params(enc) == n_params(net) - 2 * c - (1000 * c + 1000)
    assert hand == 21_810_816


def test_dpt_decoder_params_by_hand():
    """ViT-S (C = 384), features 64, 40 outputs, layer by layer."""
    C, f, (c1, c2, c3, c4) = 384, 64, (48, 96, 192, 384)
    readout = 4 * (2 * C * C + C)
    conv1x1 = (C * c1 + c1) + (C * c2 + c2) + (C * c3 + c3) + (C * c4 + c4)
    resize = (c1 * c1 * 16 + c1) + (c2 * c2 * 4 + c2) + 0 + (c4 * c4 * 9 + c4)
    rn = 9 * f * c1 + 9 * f * c2 + 9 * f * c3 + 9 * f * c4
    rcu = 2 * (9 * f * f + f)
    fusion = 3 * (2 * rcu + f * f + f) + (rcu + f * f + f)      # refinenet4: no skip unit
    head = (9 * f * 32 + 32) + (9 * 32 * 32 + 32) + (32 * 40 + 40)
    m = build_model("dpt_vits", "hard_sharing", OUT)
    assert n_params(m.heads[0]) == readout + conv1x1 + resize + rn + fusion + head == 3_837_128
    assert n_params(m.heads[0].refinenets[3]) == n_params(m.heads[0].refinenets[2]) - rcu  # DPT's 73,856 less


def test_missing_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(DataError, match=r"vit_small_patch16_384\.augreg_in21k_ft_in1k") as e:
        build_model("dpt_vits", "hard_sharing", [1], pretrained="in21k_ft_in1k")
    assert str(tmp_path) in str(e.value)
    with pytest.raises(ValueError, match="no pretrained weights 'imagenet1k_v1'"):
        build_model("dpt_vitb", "hard_sharing", [1], pretrained="imagenet1k_v1")


def test_encoder_lr_groups_split_vit_from_decoders():
    from mtlrepro.train.optim import model_param_groups

    m = build_model("dpt_vits", "hard_sharing", OUT, timm_kwargs=TINY, features=16)
    weighting = SimpleNamespace(model_parameters_it_steps=lambda model: [], parameters_for_model_optimizer=lambda: [])
    enc, dec = model_param_groups(SimpleNamespace(id="t", encoder_lr=1e-5), m, weighting)
    assert enc["lr"] == 1e-5 and "lr" not in dec
    assert {id(p) for p in enc["params"]} == {id(p) for p in m.encoder.parameters()}
    assert {id(p) for p in dec["params"]} == {id(p) for p in m.heads.parameters()}


def test_fvcore_counts_attention_and_linears_by_hand():
    """fvcore sees the blocks' matmuls (no SDPA): per block 2 N^2 C (q k^T, attn v) and 12 C^2 N linears."""
    from fvcore.nn import FlopCountAnalysis

    enc = ViTEncoder(ConvBN, "vit_small_patch16_384", timm_kwargs=TINY).eval()
    a = FlopCountAnalysis(enc, (torch.zeros(1, 3, 64, 96),)).unsupported_ops_warnings(False)
    with torch.no_grad():
        ops = a.by_operator()
    N, C = 1 + 4 * 6, 32
    assert ops["matmul"] == 12 * 2 * N * N * C
    assert ops["linear"] == 12 * 12 * C * C * N
    assert ops["conv"] == 3 * 16 * 16 * C * 4 * 6
    assert not any("attention" in k for k in a.unsupported_ops())
