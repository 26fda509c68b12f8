"""NDDR-CNN on the staged backbones: construction, forward / backward, the NDDR layers' parameter
count by hand, the identity-like initialisation against a hand-written fused forward (float64),
and the count on resnet50_dilated + aspp against CoNAL's printed one (read from the registry)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from mtlrepro.models import build_model, count_parameters
from mtlrepro.models.sharing.nddr_cnn import NDDRCNN, NDDRLayer

ROOT = Path(__file__).resolve().parents[2]


def nddr_params_by_hand(n_tasks: int, widths: list[int]) -> int:
    """Per fusion point of width C, per task: a bias-free 1x1 conv (T C -> C) and a BN (2 C)."""
    return sum(n_tasks * (n_tasks * c * c + 2 * c) for c in widths)


def printed_params(table: str, row: str) -> float:
    d = yaml.safe_load((ROOT / "reproduce" / "conal" / f"{table}.yaml").read_text())
    (r,) = [r for r in d["rows"] if r["key"] == row]
    return float(r["cells"]["params"])


@pytest.mark.parametrize("backbone, size", [("resnet18", 32), ("resnet50_dilated", 32)])
def test_builds_runs_and_every_parameter_gets_a_gradient(backbone, size):
    torch.manual_seed(0)
    m = build_model(backbone, "nddr_cnn", [3, 1])
    assert isinstance(m, NDDRCNN) and not m.task_conditional and m.at_stem
    x = torch.randn(2, 3, size, size)
    outs = m(x)
    assert len(outs) == 2 and outs[0].shape[:2] == (2, 3) and outs[1].shape[:2] == (2, 1)
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing
    with pytest.raises(ValueError, match="not task-conditional"):
        m(x, task=0)


def test_nddr_layer_parameter_count_by_hand():
    # resnet18, 3 tasks: stem 64 then layers 64, 128, 256, 512
    m = build_model("resnet18", "nddr_cnn", [2, 3, 4])
    fusion = count_parameters(p for layer in m.nddr_layers() for p in layer.parameters())
    by_hand = 3 * (3 * 64 * 64 + 128) * 2 + 3 * (3 * 128 * 128 + 256) + 3 * (3 * 256 * 256 + 512) \
        + 3 * (3 * 512 * 512 + 1024)
    assert fusion == by_hand == nddr_params_by_hand(3, [64, 64, 128, 256, 512])
    stl = build_model("resnet18", "single_task", [2, 3, 4])
    assert count_parameters(m.parameters()) == count_parameters(stl.parameters()) + by_hand
    # without the stem layer: one fewer fusion point; segnet's identity stem has none
    m4 = build_model("resnet18", "nddr_cnn", [2, 3, 4], at_stem=False)
    assert count_parameters(m.parameters()) - count_parameters(m4.parameters()) == 3 * (3 * 64 * 64 + 128)
    assert len(m4.nddr_layers()) == 4
    with pytest.raises(ValueError, match="declares no stem_width"):
        build_model("vgg16", "nddr_cnn", [2, 3], at_stem=True)


def test_identity_like_init_weights():
    layer = NDDRLayer(3, 4, init_weights=(0.9, 0.1))
    w = layer.convs[1].weight[:, :, 0, 0]  # task 1 reads blocks [task0 | task1 | task2]
    eye = torch.eye(4)
    torch.testing.assert_close(w, torch.cat([0.05 * eye, 0.9 * eye, 0.05 * eye], dim=1))
    assert all(c.bias is None for c in layer.convs)
    assert all(bn.momentum == 0.05 for bn in layer.bns)
    two = NDDRLayer(2, 3)
    torch.testing.assert_close(two.convs[0].weight[:, :, 0, 0], torch.cat([0.9 * torch.eye(3), 0.1 * torch.eye(3)], 1))


def test_first_forward_is_the_per_task_networks_with_the_init_mixture_float64():
    """In eval mode a fresh BN is x / sqrt(1 + eps): the model must equal the T resnet18s run
    module by module, with y_t = ReLU((0.9 x_t + 0.05 sum_{k != t} x_k) / sqrt(1 + eps)) after
    the stem and after every layer."""
    torch.manual_seed(0)
    m = build_model("resnet18", "nddr_cnn", [2, 3, 1]).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    eps = 1e-5
    scale = 1.0 / math.sqrt(1.0 + eps)

    own, other = (float(torch.tensor(v, dtype=torch.float32)) for v in (0.9, 0.05))  # built in float32

    def mix(hs):
        total = sum(hs)
        return [torch.relu((own * h + other * (total - h)) * scale) for h in hs]

    with torch.no_grad():
        hs = mix([net.maxpool(net.relu(net.stem(x))) for net in m.nets])
        for layer in ("layer1", "layer2", "layer3", "layer4"):
            hs = mix([getattr(net, layer)(h) for net, h in zip(m.nets, hs)])
        ref = [head(torch.flatten(net.avgpool(h), 1)) for net, head, h in zip(m.nets, m.heads, hs)]
        out = m(x)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)


def test_runs_on_segnet_with_a_fusion_after_every_stage():
    torch.manual_seed(0)
    m = build_model("segnet", "nddr_cnn", [2, 1], width_mult=0.125)
    assert not m.at_stem and len(m.nddr_layers()) == m.nets[0].n_stages == 10
    outs = m(torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(2, 2, 32, 32), (2, 1, 32, 32)]


@pytest.mark.parametrize("out_dims, table, expected", [
    ([7, 1], "table2", 101_583_240), ([13, 1, 3], "table3", 169_100_113)], ids=["city", "nyu"])
def test_params_on_resnet50_dilated_aspp_against_conal(out_dims, table, expected):
    """STL (LibMTL-measured, REFERENCE.md) + the fusion points (stem 64, then 256 .. 2048) by
    hand; rounded to 0.01M it is CoNAL's printed count."""
    stl = {2: 79_269_000, 3: 118_904_785}[len(out_dims)]
    by_hand = stl + nddr_params_by_hand(len(out_dims), [64, 256, 512, 1024, 2048])
    assert by_hand == expected
    m = build_model("resnet50_dilated", "nddr_cnn", out_dims)
    n = count_parameters(m.parameters())
    assert n == by_hand
    assert round(n / 1e6, 2) == printed_params(table, "nddr_cnn")
