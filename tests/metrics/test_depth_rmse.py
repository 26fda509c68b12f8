"""Depth RMSE / log-RMSE pooled over valid pixels, predictions clamped at 1e-9 (Vandenhende)."""
from __future__ import annotations

import math

import pytest
import torch

from mtlrepro.metrics.depth_rmse import DepthRMSE

# Batch 1: target [[2, 0], [4, 0]], pred [[3, 7], [-1, 1]] -> valid g = 2 (p 3), g = 4 (p -1 -> 1e-9)
#   squared errors 1 and (4 - 1e-9)^2; log errors (log 2 - log 3)^2, (log 4 - log 1e-9)^2
# Batch 2: target [[1, 1, 1]], pred [[1, 2, 1]] -> squared errors 0, 1, 0; log: 0, log(2)^2, 0
SE = 1 + (4 - 1e-9) ** 2 + 1
LSE = math.log(2 / 3) ** 2 + (math.log(4) - math.log(1e-9)) ** 2 + math.log(2) ** 2


def test_pooled_rmse_and_log_rmse_by_hand():
    m = DepthRMSE()
    m.update(torch.tensor([[[[3.0, 7.0], [-1.0, 1.0]]]], dtype=torch.float64),
             torch.tensor([[[[2.0, 0.0], [4.0, 0.0]]]], dtype=torch.float64))
    m.update(torch.tensor([[[[1.0, 2.0, 1.0]]]], dtype=torch.float64),
             torch.tensor([[[[1.0, 1.0, 1.0]]]], dtype=torch.float64))
    out = m.compute()
    assert out["rmse"] == pytest.approx(math.sqrt(SE / 5), rel=1e-12)          # 5 valid pixels
    assert out["log_rmse"] == pytest.approx(math.sqrt(LSE / 5), rel=1e-12)
    # not the mean of per-batch RMSEs, and not unclamped (p = -1 would give (4 + 1)^2)
    assert out["rmse"] != pytest.approx((math.sqrt((SE - 1) / 2) + math.sqrt(1 / 3)) / 2, rel=1e-3)
    assert out["rmse"] != pytest.approx(math.sqrt((1 + 25 + 1) / 5), rel=1e-3)
