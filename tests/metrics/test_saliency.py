"""Saliency mIoU (best threshold of the per-image mean Jaccard) and maxF, by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlrepro.metrics import EmptyMetricWarning
from mtlrepro.metrics.saliency import SALIENCY_THRESHOLDS, SaliencyMeter

# Image A: probabilities [0.2, 0.5, 0.7, 0.9], target [0, 1, 1, 0]
#   t = 0.3: predicted [0, 1, 1, 1]: TP 2, FP 1, FN 0 -> J 2/3, P 2/3, R 1
#   t = 0.6: predicted [0, 0, 1, 1]: TP 1, FP 1, FN 1 -> J 1/3, P 1/2, R 1/2
# Image B: probabilities 0.1 everywhere, target empty: nothing predicted at either threshold
#   -> J = 1 (both empty), P = R = 0 (0 / (0 + 1e-12))
# mean J: t = 0.3: (2/3 + 1)/2 = 5/6; t = 0.6: (1/3 + 1)/2 = 2/3 -> best 5/6
# F of the mean P and R: t = 0.3: P 1/3, R 1/2 -> F = 2/5; t = 0.6: P 1/4, R 1/4 -> F = 1/4
PA, GA = [0.2, 0.5, 0.7, 0.9], [0, 1, 1, 0]
PB, GB = [0.1] * 4, [0] * 4


def _t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype).view(len(rows), 1, 1, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_best_threshold_jaccard_and_max_f_by_hand(dtype):
    m = SaliencyMeter(thresholds=(0.3, 0.6), from_logits=False)
    m.update(_t([PA, PB], dtype), _t([GA, GB]))
    per = m.compute_per_threshold()
    np.testing.assert_allclose(per["miou"], [5 / 6, 2 / 3], rtol=1e-12)
    np.testing.assert_allclose(per["precision"], [1 / 3, 1 / 4], rtol=1e-9)
    np.testing.assert_allclose(per["f"], [2 / 5, 1 / 4], rtol=1e-9)
    out = m.compute()
    assert out["miou_best_threshold"] == pytest.approx(100 * 5 / 6, rel=1e-12)
    assert out["maxf"] == pytest.approx(40.0, rel=1e-9)


def test_logits_batches_and_the_strict_threshold():
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    m = SaliencyMeter(thresholds=(0.3, 0.6))
    m.update(_t([[logit(p) for p in PA]]), _t([GA]))     # two batches = one
    m.update(_t([[logit(p) for p in PB]]), _t([GB]))
    assert m.compute()["miou_best_threshold"] == pytest.approx(100 * 5 / 6, rel=1e-9)
    strict = SaliencyMeter(thresholds=(0.5,), from_logits=False)
    strict.update(_t([[0.5, 0.5, 0.5, 0.5]]), _t([[1, 1, 0, 0]]))   # 0.5 is not > 0.5: nothing predicted
    assert strict.compute()["miou_best_threshold"] == 0.0


def test_default_thresholds_are_vandenhendes():
    assert len(SALIENCY_THRESHOLDS) == 15 and SALIENCY_THRESHOLDS[0] == 0.2 and SALIENCY_THRESHOLDS[-1] == 0.9
    assert SALIENCY_THRESHOLDS[1] == pytest.approx(0.25)


def test_empty_meter_warns():
    with pytest.warns(EmptyMetricWarning):
        assert math.isnan(SaliencyMeter().compute()["maxf"])
