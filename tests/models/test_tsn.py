"""TSN (Sun et al., ICCV 2021): one task-conditioned encoder-decoder, switched by a task embedding.

Parameter counts on the dilated ResNet-50 (``d = 512``, ``n_fc = 8``): the ``unet`` decoder (the
authors' ``ResNetUNet2_2`` with ResNet-50 widths) gives 54,579,719 ([7, 1]) / 54,580,109
([13, 1, 3]) = 54.58M, the ``aspp`` decoder 43,571,527 / 43,573,069 = 43.57M; CoNAL prints 50.58M
for both tables, which neither rounds to (see ``mtlrepro/models/sharing/tsn.py``). Small models
(ResNet18 at width 0.25, narrow decoder) keep the other tests fast; equality checks in float64.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlrepro.methods import build_weighting
from mtlrepro.models import build_model, count_parameters
from mtlrepro.models.backbones.resnet_dilated import RESNET50_ENCODER_PARAMS
from mtlrepro.models.sharing.tsn import TSN, CondConv, TaskEmbedding, pool_channels, tsn_params
from mtlrepro.train.steps import STEPS

SMALL = {"width_mult": 0.25, "up_widths": (16, 8, 8, 8), "final_width": 8, "latent_dim": 16, "n_fc": 2}
R50_WIDTHS = (256, 512, 1024, 2048)


def small(dims=(2, 2), decoder="unet", **kw) -> TSN:
    torch.manual_seed(0)
    return build_model("resnet18", "tsn", list(dims), decoder=decoder, **{**SMALL, **kw}).double()


# ------------------------------------------------------------------------------- counts ----

@pytest.mark.parametrize("dims, unet, aspp", [([7, 1], 54_579_719, 43_571_527),
                                              ([13, 1, 3], 54_580_109, 43_573_069)])
def test_full_size_counts_formula_equals_built(dims, unet, aspp):
    for decoder, want in (("unet", unet), ("aspp", aspp)):
        m = build_model("resnet50_dilated", "tsn", dims, decoder=decoder)
        n = count_parameters(m.parameters())
        assert n == tsn_params(dims, decoder, RESNET50_ENCODER_PARAMS, R50_WIDTHS) == want
        assert m.active_parameter_count(0) == n   # everything is shared: one task's pass uses it all
        assert round(n / 1e6, 2) != 50.58         # CoNAL's printed #P is not reproduced (docstring)


def test_count_depends_on_the_tasks_only_through_the_output_width():
    n = {tuple(d): count_parameters(build_model("resnet50_dilated", "tsn", d).parameters())
         for d in ([7, 1], [13, 1, 3], [13, 13, 13, 13])}
    assert n[(13, 1, 3)] - n[(7, 1)] == 65 * 6   # Conv1x1(64, W) with bias
    assert n[(13, 13, 13, 13)] == n[(13, 1, 3)]  # khot codes are buffers: T tasks cost nothing


def test_auto_decoder_and_parameter_partition():
    m = build_model("resnet50_dilated", "tsn", [7, 1])
    assert m.decoder_kind == "unet" and m.task_conditional
    assert build_model("resnet50_dilated", "tsn", [7, 1], head="aspp").decoder_kind == "aspp"
    assert build_model("resnet18", "tsn", [3]).decoder_kind == "head"
    assert m.task_parameters(0) == [] and len(m.shared_parameters()) == len(list(m.parameters()))


# ------------------------------------------------------------------------------- shapes ----

def test_per_task_shapes_dilated_resnet50_32x32():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for decoder in ("unet", "aspp"):
        m = build_model("resnet50_dilated", "tsn", [7, 1, 3], decoder=decoder)
        with torch.no_grad():
            assert [tuple(m(x, task=t).shape) for t in range(3)] == [(2, 7, 32, 32), (2, 1, 32, 32),
                                                                     (2, 3, 32, 32)]


def test_shapes_small_decoders_and_classification():
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    for decoder in ("unet", "aspp"):
        m = small((5, 1, 3), decoder)
        assert [tuple(o.shape) for o in m.forward_all(x)] == [(2, 5, 64, 64), (2, 1, 64, 64), (2, 3, 64, 64)]
    m = small((4, 2), "head")  # resnet18's linear head, one of width 4, pooled to 2 for task 1
    assert [tuple(o.shape) for o in m.forward_all(x)] == [(2, 4), (2, 2)]
    with pytest.raises(ValueError, match="task-conditional"):
        m(x)


def test_errors():
    with pytest.raises(ValueError, match="needs a ResNet encoder"):
        build_model("vgg16", "tsn", [2], decoder="unet")
    with pytest.raises(ValueError, match="do not apply"):
        build_model("resnet18", "tsn", [2], decoder="unet", head="linear")
    with pytest.raises(ValueError, match="do not apply"):
        build_model("resnet50_dilated", "tsn", [2], head="aspp", head_kwargs={"ch": 8})
    with pytest.raises(ValueError, match="decoder must be one of"):
        build_model("resnet18", "tsn", [2], decoder="fpn")


# ------------------------------------------------------------------------------- switching ----

@pytest.mark.parametrize("decoder", ["unet", "aspp", "head"])
def test_tasks_switch_the_same_network(decoder):
    m = small((3, 3), decoder).eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        a, b, a2 = m(x, task=0), m(x, task=1), m(x, task=0)
    torch.testing.assert_close(a2, a, rtol=0, atol=0)
    assert (a - b).abs().max() > 1e-3 * a.abs().max()


def test_gradients_reach_the_task_embedding_and_encoder():
    m = small((2, 1)).train()
    m.zero_grad(set_to_none=True)
    m(torch.randn(2, 3, 64, 64, dtype=torch.float64), task=1).square().mean().backward()
    mapping = list(m.embedding.mapping.parameters())
    styles = [c.style.weight for c in m.decoder.modules() if isinstance(c, CondConv)]
    assert mapping and styles
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mapping + styles)
    assert all(p.grad is not None for p in m.encoder.parameters())


def test_task_codes():
    e = TaskEmbedding(3, latent_dim=10, n_fc=1, code="khot")
    gram = e.codes @ e.codes.T
    assert torch.equal(gram, 3.0 * torch.eye(3))             # orthogonal, d // T = 3 ones each
    g1, g2 = (TaskEmbedding(2, 8, 0, "gaussian", code_seed=s).codes for s in (0, 0))
    assert torch.equal(g1, g2) and not torch.equal(g1, TaskEmbedding(2, 8, 0, "gaussian", code_seed=1).codes)


def test_cond_conv_equals_the_authors_convrelu():
    """conv -> nn.InstanceNorm2d (affine-free) -> factor * . + bias from an SLinear -> LeakyReLU()."""
    torch.manual_seed(0)
    c = CondConv(4, 6, 3, latent_dim=5).double()
    x, w = torch.randn(2, 4, 7, 7, dtype=torch.float64), torch.randn(1, 5, dtype=torch.float64)
    style = F.linear(w, c.style.weight * (2 / 5) ** 0.5, c.style.bias)[..., None, None]
    factor, bias = style[:, :6], style[:, 6:]
    want = nn.LeakyReLU()(nn.InstanceNorm2d(6)(c.conv(x)) * factor + bias)
    torch.testing.assert_close(c(x, w), want, rtol=1e-12, atol=1e-12)
    assert torch.equal(c.style.bias, torch.cat([torch.ones(6), torch.zeros(6)]).double())


def test_pool_channels_is_the_authors_adaptive_average():
    y = torch.randn(2, 13, 3, 4, dtype=torch.float64)
    got = pool_channels(y, 3)
    want = torch.stack([y[:, 0:5].mean(1), y[:, 4:9].mean(1), y[:, 8:13].mean(1)], dim=1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pool_channels(y, 1), y.mean(1, keepdim=True), rtol=1e-12, atol=1e-12)
    v = torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(pool_channels(v, 2), (v[:, 0::2] + v[:, 1::2]) / 2, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------- training ----

class _Problem:
    def __init__(self, dims):
        self.out_dims, self.n_tasks = list(dims), len(dims)

    @staticmethod
    def task_loss(t, out, y):
        return F.mse_loss(out, y)


def test_synchronized_step_sums_the_task_gradients():
    m = small((3, 1))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64)
    ys = [torch.randn(4, d, 32, 32, generator=g, dtype=torch.float64) for d in m.out_dims]
    got, ref = copy.deepcopy(m).train(), copy.deepcopy(m).train()
    opt = torch.optim.SGD(got.parameters(), lr=0.1)
    loss = STEPS.get("synchronized")(got, build_weighting("equal", 2), opt, _Problem(m.out_dims), x, ys)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    ref_opt.zero_grad()
    ref_loss = sum(F.mse_loss(ref(x, task=t), ys[t]) for t in range(2))
    ref_loss.backward()
    ref_opt.step()
    assert float(loss) == pytest.approx(float(ref_loss.detach()), rel=1e-12)
    for (name, p), q in zip(ref.named_parameters(), got.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12, msg=name)
    moved = [n for (n, p), q in zip(m.named_parameters(), got.parameters()) if not torch.equal(p, q)]
    assert any(n.startswith("embedding.") for n in moved) and any(n.startswith("encoder.") for n in moved)
