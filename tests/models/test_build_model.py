"""``build_model``'s four fields: backbone, sharing, head (HEADS) and conv unit, and the defaults.

A model named by fields must be the SAME model (same seeded weights, outputs and state_dict) as
the scheme it resolves to; the defaults (``head=None``, ``conv_unit=None``) must be today's models.
"""
from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from mtlrepro.models import HEADS, SHARING, build_model, conv_units_for, count_parameters, resolve_sharing
from mtlrepro.models.backbones.resnet import RESNET18_ENCODER_PARAMS
from mtlrepro.models.backbones.segnet import SEGNET_PARAMS
from mtlrepro.registry import UnknownKeyError

SMALL = {"width_mult": 0.25}


def seeded(*args, **kw):
    torch.manual_seed(0)
    return build_model(*args, **kw)


def same_model(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    if list(sa) != list(sb) or not all(torch.equal(sa[k], sb[k]) for k in sa):
        return False
    a.eval(), b.eval()
    with torch.no_grad():
        return all(torch.equal(p, q) for p, q in zip(a.forward_all(x), b.forward_all(x)))


# ------------------------------------------------------------------------------ conv units ----

@pytest.mark.parametrize("sharing, unit, scheme, kwargs", [
    ("hard_sharing", "nlp", "nlp", {}),
    ("hard_sharing", "lbconv", "conv_alt", {"conv": "lbconv"}),
    ("hard_sharing", "ghost", "conv_alt", {"conv": "ghost"}),
    ("conv_alt", "shift", "conv_alt", {"conv": "shift"}),
    ("etr", "nlp", "etr_nlp", {}),
    ("task_routing", "conv", "task_routing", {}),
    ("hard_sharing", None, "hard_sharing", {}),
])
def test_conv_unit_is_the_scheme_it_names(sharing, unit, scheme, kwargs):
    assert resolve_sharing(sharing, unit) == (scheme, kwargs)
    a = seeded("resnet18", sharing, [2, 3], conv_unit=unit, **SMALL)
    b = seeded("resnet18", scheme, [2, 3], **kwargs, **SMALL)
    assert type(a) is type(b) and same_model(a, b, torch.randn(2, 3, 32, 32))


def test_conv_units_each_scheme_accepts():
    assert conv_units_for("hard_sharing") == ["conv", "depthwise", "ghost", "lbconv", "nlp", "shift"]
    assert conv_units_for("etr") == ["conv", "nlp"]
    assert conv_units_for("mtan") == ["conv"]


def test_unknown_or_clashing_conv_unit_raises():
    with pytest.raises(ValueError, match="accepts conv"):
        build_model("resnet18", "task_routing", [1], conv_unit="nlp")
    with pytest.raises(TypeError, match="conv_unit"):
        build_model("resnet18", "hard_sharing", [1], conv_unit="lbconv", conv="ghost")
    with pytest.raises(UnknownKeyError):
        resolve_sharing("hard_shring", "nlp")


# ----------------------------------------------------------------------------------- heads ----

@pytest.mark.parametrize("backbone, head", [("resnet18", "linear"), ("segnet", "segnet")])
def test_default_head_is_the_named_one(backbone, head):
    kw = SMALL if backbone == "resnet18" else {"width_mult": 0.125}
    x = torch.randn(1, 3, 32, 32)
    assert same_model(seeded(backbone, "hard_sharing", [2, 1], **kw),
                      seeded(backbone, "hard_sharing", [2, 1], head=head, **kw), x)


def test_default_heads_by_hand():
    hs = build_model("resnet18", "hard_sharing", [9, 5])
    assert all(type(h) is nn.Linear for h in hs.heads) and hs.heads[0].weight.shape == (9, 512)
    seg = build_model("segnet", "hard_sharing", [7, 1])
    assert count_parameters(seg.parameters()) - SEGNET_PARAMS == (9 * 64 * 64 + 64) * 2 + 64 * 8 + 8


def _mlp_head(in_features: int, out_dim: int, hidden: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


@pytest.fixture
def mlp_head():
    HEADS.register("mlp_test", _mlp_head)
    yield "mlp_test"
    HEADS._entries.pop("mlp_test", None)


@pytest.mark.parametrize("scheme", ["hard_sharing", "max_roaming", "etr", "mtan", "cross_stitch", "single_task"])
def test_a_registered_head_replaces_the_default(mlp_head, scheme):
    m = build_model("resnet18", scheme, [2, 3], head=mlp_head, head_kwargs={"hidden": 8})
    per_head = [512 * 8 + 8 + 8 * d + d for d in (2, 3)]
    assert [count_parameters(h.parameters()) for h in m.heads] == per_head
    outs = m.forward_all(torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(2, 2), (2, 3)]


def test_head_errors():
    with pytest.raises(UnknownKeyError):
        build_model("resnet18", "hard_sharing", [1], head="linaer")
    with pytest.raises(ValueError, match="without a head"):
        build_model("resnet18", "hard_sharing", [1], head_kwargs={"bias": False})


def test_head_kwargs_reach_the_head():
    m = build_model("resnet18", "hard_sharing", [3], head="linear", head_kwargs={"bias": False})
    assert m.heads[0].bias is None
    assert count_parameters(m.parameters()) == RESNET18_ENCODER_PARAMS + 512 * 3


# ------------------------------------------------------------------------- compatibility ----

def test_positional_call_of_today():
    m = build_model("resnet18", "hard_sharing", [1, 2])
    assert m.out_dims == [1, 2]


@pytest.mark.parametrize("scheme", SHARING.names())
def test_scheme_signatures_do_not_grow_head_or_conv_unit(scheme):
    """Recipe fingerprints resolve each scheme's ``__init__`` defaults: a ``head`` /
    ``conv_unit`` parameter there would change every fingerprint."""
    params = inspect.signature(SHARING.get(scheme).__init__).parameters
    assert not {"head", "head_kwargs", "conv_unit"} & set(params)
