"""Every shared-parameter aggregator trains in the tiny profile (ResNet18 hard sharing, 8 tasks)
and logs its per-epoch task weights into the run record."""
from __future__ import annotations

import math

import pytest

from mtlrepro.profiles import apply_profile

from mtlrepro.recipe import get_recipe

from ...harness_utils import tiny_env  # noqa: F401 (fixture)

AGGREGATORS = {  # name -> a key of its own in the epoch's weighting_logs
    "mgda": "alpha", "pcgrad": "conflict_fraction", "cagrad": "w", "gradvac": "phi_hat_mean",
    "nash_mtl": "clip_factor", "pareto_mtl": "active_constraints", "imtl": "loss_scale",
}


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_aggregator_trains_in_the_tiny_profile(name, tmp_path, tiny_env):
    from mtlrepro.train import train_run
    recipe = apply_profile(get_recipe("etr_nlp/table4/hard_sharing_g8"), "tiny").with_overrides(
        weighting=name, epochs=1)
    record = train_run(recipe, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    assert record.status == "finished"
    weights = record.epochs[0].task_weights
    assert len(weights) == 8 and all(math.isfinite(w) for w in weights)
    assert AGGREGATORS[name] in record.epochs[0].weighting_logs
    assert math.isfinite(record.epochs[0].train_loss)
