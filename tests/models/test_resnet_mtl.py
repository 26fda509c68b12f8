"""ResNet18 multi-task backbone and the hard-sharing model."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from mtlrepro.models import BACKBONES, SHARING, ConvBN, build_model, count_parameters
from mtlrepro.models.backbones.resnet import RESNET18_ENCODER_PARAMS
from mtlrepro.registry import UnknownKeyError

GROUPS8 = [9, 5, 9, 4, 2, 5, 2, 4]
ATTR40 = [1] * 40


@pytest.mark.parametrize("out_dims", [GROUPS8, ATTR40], ids=["8groups", "40attrs"])
def test_hard_sharing_exact_parameter_count(out_dims):
    m = build_model("resnet18", "hard_sharing", out_dims)
    assert sum(out_dims) == 40
    assert count_parameters(m.parameters()) == 11_197_032
    assert m.active_parameter_count() == 11_197_032
    assert count_parameters(m.encoder.parameters()) == RESNET18_ENCODER_PARAMS
    tv = torchvision.models.resnet18(weights=None)
    assert RESNET18_ENCODER_PARAMS == sum(p.numel() for n, p in tv.named_parameters() if not n.startswith("fc."))


def test_encoder_is_torchvision_resnet18():
    """Same parameter order and shapes as torchvision; copying its weights gives its features."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    tv.fc = nn.Identity()
    m = build_model("resnet18", "hard_sharing", [3, 2])
    ours = list(m.encoder.state_dict().items())
    theirs = [(k, v) for k, v in tv.state_dict().items()]
    assert [v.shape for _, v in ours] == [v.shape for _, v in theirs]
    m.encoder.load_state_dict({k: v for (k, _), (_, v) in zip(ours, theirs)})
    tv.double().eval(), m.double().eval()  # float64: equal up to rounding, on any CPU
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(m.encode(x), tv(x), rtol=1e-9, atol=1e-10)


def test_twenty_conv_units_in_forward_order():
    m = build_model("resnet18", "hard_sharing", GROUPS8)
    units = m.units()
    assert len(units) == 20 and all(isinstance(u, ConvBN) for u in units)
    roles = [u.spec.role for u in units]
    assert roles[0] == "stem" and roles.count("downsample") == 3 and roles.count("conv1") == 8
    assert [u.spec.index for u in units] == list(range(20))
    assert units[0].spec.kernel_size == 7 and units[0].spec.stride == 2


def test_hard_sharing_interface():
    m = build_model("resnet18", "hard_sharing", GROUPS8)
    assert not m.task_conditional and m.n_tasks == 8
    x = torch.randn(2, 3, 32, 32)
    outs = m(x)
    assert [o.shape for o in outs] == [(2, d) for d in GROUPS8]
    z = m.encode(x)
    assert z.shape == (2, 512)
    assert m.decode(z, 2).shape == (2, 9)
    assert len(m.forward_all(x)) == 8
    with pytest.raises(ValueError):
        m(x, task=0)
    shared = {id(p) for p in m.shared_parameters()}
    assert count_parameters(m.shared_parameters()) == RESNET18_ENCODER_PARAMS
    assert count_parameters(m.task_parameters(0)) == 512 * 9 + 9
    assert all(id(p) in shared for p in m.last_shared_layer().parameters())
    assert m.last_shared_layer() is m.encoder.layer4[-1].conv2 and len(m.units()) == 20
    assert m.extra_state_for_checkpoint() == {}


def test_backbone_kwargs():
    m = build_model("resnet18", "hard_sharing", [1] * 40, width_mult=2)
    assert m.encode(torch.randn(2, 3, 32, 32)).shape == (2, 1024)
    m = build_model("resnet18", "hard_sharing", [1], track_running_stats=False, downsample_norm=False)
    assert count_parameters(m.encoder.parameters()) == RESNET18_ENCODER_PARAMS - 2 * (128 + 256 + 512)
    assert all(not b.track_running_stats for b in m.modules() if isinstance(b, nn.BatchNorm2d))


def test_registries_suggest_close_names():
    assert {"hard_sharing", "attentive", "task_routing", "max_roaming", "etr", "etr_nlp", "nlp"} <= set(SHARING)
    assert "resnet18" in BACKBONES
    with pytest.raises(UnknownKeyError, match="max_roaming"):
        build_model("resnet18", "max_roam", GROUPS8)
    with pytest.raises(UnknownKeyError, match="resnet18"):
        build_model("resnet19", "hard_sharing", GROUPS8)
    with pytest.raises(TypeError, match="gama"):
        build_model("resnet18", "etr", GROUPS8, gama=0.5)


def test_deepcopy_and_pickle_keep_structure():
    import copy
    import io
    m = build_model("resnet18", "max_roaming", [2, 3])
    c = copy.deepcopy(m)
    assert c.last_shared_layer() is c.encoder.layer4[-1].conv2 and c.last_shared_layer() is not m.last_shared_layer()
    assert all(a is not b for a, b in zip(c.units(), m.units()))
    assert all(u.ctx is c.ctx for u in c.units()) and c.ctx is not m.ctx
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    m2 = torch.load(buf, weights_only=False)
    assert m2(torch.randn(2, 3, 32, 32), task=1).shape == (2, 3)
