"""The pooled balanced-BCE edge loss (GatedMTL's 'Edge' read as the loss on logits), by hand."""
from __future__ import annotations

import math

import pytest
import torch

from mtlrepro.metrics.edge import EdgeLoss
from mtlrepro.tasks.edge import balanced_bce_with_logits

# Batch 1: logits [0, 2, -1], targets [1, 0, 1]
#   positives: softplus(-0) = log 2, softplus(1) = log(1 + e); negative: softplus(2) = log(1 + e^2)
# Batch 2: logit [3], target [0]: negative softplus(3) = log(1 + e^3)
# pooled over the 4 pixels: (0.95 (log 2 + log(1 + e)) + 0.05 (log(1 + e^2) + log(1 + e^3))) / 4
POS = math.log(2) + math.log(1 + math.e)
B1 = (0.95 * POS + 0.05 * math.log(1 + math.e ** 2)) / 3
POOLED = (0.95 * POS + 0.05 * (math.log(1 + math.e ** 2) + math.log(1 + math.e ** 3))) / 4


def _t(v):
    return torch.tensor(v, dtype=torch.float64).view(1, 1, 1, -1)


def test_pooled_edge_loss_by_hand():
    m = EdgeLoss()
    m.update(_t([0.0, 2.0, -1.0]), _t([1.0, 0.0, 1.0]))
    assert m.compute()["edge_loss"] == pytest.approx(B1, rel=1e-12)
    m.update(_t([3.0]), _t([0.0]))
    # pooled over pixels, not the mean of the two batch losses
    assert m.compute()["edge_loss"] == pytest.approx(POOLED, rel=1e-12)
    assert POOLED != pytest.approx((B1 + 0.05 * math.log(1 + math.e ** 3)) / 2, rel=1e-3)


def test_the_metric_is_the_training_loss_on_one_batch():
    x, y = torch.randn(2, 1, 5, 7, dtype=torch.float64), (torch.rand(2, 1, 5, 7) < 0.2).double()
    m = EdgeLoss()
    m.update(x, y)
    assert m.compute()["edge_loss"] == pytest.approx(float(balanced_bce_with_logits(x, y)), rel=1e-12)
