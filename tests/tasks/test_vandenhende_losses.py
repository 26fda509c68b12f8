"""Vandenhende et al.'s losses: balanced BCE (edge: positive weight 0.95; saliency: the batch's
negative fraction), L1 on normalised normals, and their batch targets."""
from __future__ import annotations

import math

import pytest
import torch

from mtlrepro.metrics.definitions import get_def
from mtlrepro.tasks import TASK_KINDS, Task, batch_target, task_loss
from mtlrepro.tasks.edge import balanced_bce_with_logits
from mtlrepro.tasks.normals_l1 import normals_l1_loss

EDGE, SAL, NRM = Task("edge", "edge", 1), Task("saliency", "saliency", 1), Task("normals", "normals_l1", 3)


def _repo_formula(x: torch.Tensor, label: torch.Tensor, pos_weight: float | None) -> torch.Tensor:
    """The repo's BalancedCrossEntropyLoss.forward written out (size_average=True)."""
    y = (label >= 0.5).double()
    w = (1 - y).sum() / y.numel() if pos_weight is None else pos_weight
    gt0 = (x >= 0).double()
    val = x * (y - gt0) - torch.log(1 + torch.exp(x - 2 * x * gt0))
    return (w * (-(y * val)).sum() + (1 - w) * (-((1 - y) * val)).sum()) / y.numel()


def test_balanced_bce_by_hand():
    x = torch.zeros(1, 1, 1, 4, dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64).view(1, 1, 1, 4)
    # every pixel's BCE is log 2; edge: (0.95 * 1 + 0.05 * 3) log 2 / 4
    assert float(task_loss(EDGE, x, y)) == pytest.approx(1.1 * math.log(2) / 4, rel=1e-12)
    # saliency: w = N_- / N = 3/4 -> (3/4 * 1 + 1/4 * 3) log 2 / 4
    assert float(task_loss(SAL, x, y)) == pytest.approx(1.5 * math.log(2) / 4, rel=1e-12)


@pytest.mark.parametrize("pos_weight", [0.95, None])
def test_balanced_bce_equals_the_repo_formula(pos_weight):
    g = torch.Generator().manual_seed(1)
    x = 4 * torch.randn(3, 1, 6, 5, dtype=torch.float64, generator=g)
    y = torch.rand(3, 1, 6, 5, dtype=torch.float64, generator=g)
    assert float(balanced_bce_with_logits(x, y, pos_weight)) == pytest.approx(
        float(_repo_formula(x, y, pos_weight)), rel=1e-12)


def test_normals_l1_by_hand_and_invalid_pixels_get_no_gradient():
    out = torch.tensor([[3.0, 0.0, 4.0], [float("nan"), 1.0, 1.0]], dtype=torch.float64).T.reshape(1, 3, 1, 2)
    tgt = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64).T.reshape(1, 3, 1, 2)
    out.requires_grad_(True)
    loss = normals_l1_loss(out, tgt)
    # pixel 1: (0.6, 0, 0.8) vs (1, 0, 0): 0.4 + 0 + 0.8 = 1.2 over 3 components; pixel 2 invalid
    assert float(loss.detach()) == pytest.approx(0.4, rel=1e-9)
    loss.backward()
    assert torch.isfinite(out.grad).all() and out.grad[..., 1].abs().sum() == 0


def test_batch_targets():
    maps = torch.tensor([[[0, 1], [1, 0]]], dtype=torch.uint8)
    assert batch_target(EDGE, maps).shape == (1, 1, 2, 2) and batch_target(SAL, maps).dtype == torch.float32
    stored = torch.tensor([[0.6, 0.0, 0.8], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2).to(torch.float16) * 1.001
    unit = batch_target(NRM, stored)
    assert unit.dtype == torch.float32
    assert torch.linalg.vector_norm(unit[..., 0], dim=1).item() == pytest.approx(1.0, abs=1e-6)
    assert not unit[..., 1].any()


def test_new_kinds_declare_defined_metric_keys():
    task_loss(EDGE, torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))   # registers the kinds
    for name in ("edge", "saliency", "normals_l1"):
        kind = TASK_KINDS.get(name)
        assert kind.metric_keys and all(get_def(k) is not None for ks in kind.metric_keys.values() for k in ks)
