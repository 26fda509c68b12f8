"""ImageNet weights through torchvision's weights API and the torch hub cache, without a
download: a fake ``resnet50-<sha256 prefix>.pth`` (a random torchvision ResNet-50's state dict)
in a temporary ``TORCH_HOME`` exercises the real loading path."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from mtlrepro.data.errors import DataError
from mtlrepro.models import build_model
from mtlrepro.models.backbones.resnet_dilated import ResNet50DilatedEncoder
from mtlrepro.models.pretrained import load_imagenet, map_to_units, weights_path
from mtlrepro.models.units import ConvBN

URL_NAME = os.path.basename(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url)  # resnet50-<hash>.pth


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # torch.hub.get_dir() reads TORCH_HOME
    return tmp_path


@pytest.fixture(scope="module")
def fake_state(tmp_path_factory) -> tuple[dict, Path]:
    """A random torchvision ResNet-50 state dict (non-trivial BN statistics) saved once, and the
    name torchvision would give it: ``resnet50-<first 8 hex of its sha256>.pth``."""
    torch.manual_seed(1)
    tv = torchvision.models.resnet50(weights=None)
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
            m.num_batches_tracked.fill_(7)
    state = tv.state_dict()
    raw = tmp_path_factory.mktemp("w") / "raw.pth"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    named = raw.with_name(f"resnet50-{digest[:8]}.pth")
    raw.rename(named)
    return state, named


def install(fake: Path, home: Path, name: str) -> Path:
    dst = home / "hub" / "checkpoints" / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(fake, dst)
    return dst


def test_path_is_torch_hubs_cache(torch_home):
    assert weights_path("resnet50", "imagenet1k_v1") == torch_home / "hub" / "checkpoints" / URL_NAME


def test_missing_file_names_it_and_the_fetch_command(torch_home):
    enc = ResNet50DilatedEncoder(ConvBN)
    with pytest.raises(DataError) as e:
        load_imagenet(enc)
    msg = str(e.value)
    expected = torch_home / "hub" / "checkpoints" / URL_NAME
    assert str(expected) in msg and e.value.path == expected
    assert "TORCH_HOME" in msg
    assert "torchvision.models.resnet50(weights='IMAGENET1K_V1')" in msg


def test_loads_every_tensor_into_the_units(torch_home, fake_state, monkeypatch):
    state, fake = fake_state
    # the real file name's hash is not our fake's: point the enum's URL at the fake's name
    monkeypatch.setattr("mtlrepro.models.pretrained.weights_path",
                        lambda name="resnet50", weights="IMAGENET1K_V1": torch_home / "hub" / "checkpoints" / fake.name)
    install(fake, torch_home, fake.name)
    torch.manual_seed(0)
    m = build_model("resnet50_dilated", "hard_sharing", [7, 1], pretrained="imagenet1k_v1")
    enc = m.encoder
    # by name, independently of the loader's unit-order mapping
    torch.testing.assert_close(enc.stem[0].weight, state["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(enc.stem[1].running_var, state["bn1.running_var"], rtol=0, atol=0)
    blk = enc.layer3[0]
    torch.testing.assert_close(blk.conv2[0].weight, state["layer3.0.conv2.weight"], rtol=0, atol=0)
    torch.testing.assert_close(blk.conv3[1].bias, state["layer3.0.bn3.bias"], rtol=0, atol=0)
    torch.testing.assert_close(blk.downsample[1].running_mean, state["layer3.0.downsample.1.running_mean"],
                               rtol=0, atol=0)
    torch.testing.assert_close(enc.layer4[2].conv3[0].weight, state["layer4.2.conv3.weight"], rtol=0, atol=0)
    # every non-fc tensor is somewhere in the encoder, and nothing of the encoder is left random
    mine = list(enc.state_dict().values())
    theirs = [v for k, v in state.items() if not k.startswith("fc.")]
    assert len(mine) == len(theirs) == 53 * 6  # per unit: conv weight + 5 BN tensors
    assert sorted(float(v.double().sum()) for v in mine) == sorted(float(v.double().sum()) for v in theirs)


def test_single_task_loads_into_every_network(torch_home, fake_state, monkeypatch):
    state, fake = fake_state
    monkeypatch.setattr("mtlrepro.models.pretrained.weights_path",
                        lambda name="resnet50", weights="IMAGENET1K_V1": torch_home / "hub" / "checkpoints" / fake.name)
    install(fake, torch_home, fake.name)
    m = build_model("resnet50_dilated", "single_task", [7, 1], pretrained="imagenet1k_v1")
    for net in m.nets:
        torch.testing.assert_close(net.layer2[1].conv1[0].weight, state["layer2.1.conv1.weight"], rtol=0, atol=0)


def test_wrong_hash_is_refused(torch_home, fake_state):
    _, fake = fake_state
    install(fake, torch_home, URL_NAME)  # the real name, whose hash the fake's bytes do not match
    with pytest.raises(DataError, match="corrupt or not torchvision's file"):
        load_imagenet(ResNet50DilatedEncoder(ConvBN))


def test_unknown_weights_name():
    with pytest.raises(ValueError, match="ResNet50_Weights has no 'imagenet21k'"):
        load_imagenet(ResNet50DilatedEncoder(ConvBN), weights="imagenet21k")


def test_mapping_refuses_missing_and_misshapen_tensors(fake_state):
    state, _ = fake_state
    units = ResNet50DilatedEncoder(ConvBN).units()
    lacking = {k: v for k, v in state.items() if k != "layer1.0.bn2.running_var"}
    with pytest.raises(ValueError, match="lack layer1.0.bn2.running_var"):
        map_to_units(lacking, units)
    misshapen = dict(state, **{"layer2.0.conv2.weight": torch.zeros(128, 128, 1, 1)})
    with pytest.raises(ValueError, match=r"layer2.0.conv2.weight is \(128, 128, 1, 1\)"):
        map_to_units(misshapen, units)
    extra = dict(state, **{"layer4.0.bn2.extra": torch.zeros(512)})
    with pytest.raises(ValueError, match="not used by the encoder.*layer4.0.bn2.extra"):
        map_to_units(extra, units)
    r18 = torchvision.models.resnet18(weights=None).state_dict()
    with pytest.raises(ValueError, match="hold 20 convs, the encoder 53 units"):
        map_to_units(r18, units)
