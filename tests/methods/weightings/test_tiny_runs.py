"""Every loss weighting of issue 11 (part 1) trains in a recipe (tiny profile), and the run record's
per-epoch ``task_weights`` behave as the method says."""
from __future__ import annotations

import math

import pytest
from mtlrepro.profiles import apply_profile
from mtlrepro.recipe import get_recipe

from ...harness_utils import tiny_env  # noqa: F401 (fixture)

BASE = "etr_nlp/table4/hard_sharing_g8"   # CelebA, 8 attribute groups, hard sharing, joint update
T = 8


def _recipe(weighting: str, epochs: int = 2, **kwargs):
    return apply_profile(get_recipe(BASE), "tiny").with_overrides(weighting=weighting, weighting_kwargs=kwargs,
                                                                   epochs=epochs)


def _run(recipe, seed, root, monkeypatch=None):
    from mtlrepro.train import train_run
    return train_run(recipe, seed, "tiny", results_root=root, progress=False, device="cpu")


@pytest.mark.parametrize("name", ["uw", "dwa", "rlw", "scalar", "auto_lambda"])
def test_each_weighting_runs_in_a_tiny_recipe_and_logs_its_weights(name, tmp_path, tiny_env, monkeypatch):
    if name == "uw":
        rec = _run(_recipe("uw"), 0, tmp_path, monkeypatch)
        w0, w1 = rec.epochs[0].task_weights, rec.epochs[1].task_weights
        assert w0 == pytest.approx([0.5 * math.exp(0.5)] * T, abs=1e-3)   # s = -0.5 at the start
        assert w0 != w1                                 # the log-variances are trained (model optimizer)
        assert len(rec.epochs[1].weighting_logs["log_variances"]) == T
    elif name == "dwa":
        rec = _run(_recipe("dwa", epochs=3), 0, tmp_path, monkeypatch)
        assert rec.epochs[0].task_weights == [1.0] * T and rec.epochs[1].task_weights == [1.0] * T
        w2 = rec.epochs[2].task_weights
        assert w2 != [1.0] * T and sum(w2) == pytest.approx(T, rel=1e-6)
    elif name == "rlw":
        a, a2, b = (_run(_recipe("rlw"), s, tmp_path / f"r{i}", monkeypatch) for i, s in enumerate((0, 0, 1)))
        for rec in (a, b):
            assert all(sum(e.task_weights) == pytest.approx(1.0, rel=1e-6) for e in rec.epochs)
        assert [e.task_weights for e in a.epochs] == [e.task_weights for e in a2.epochs]   # per seed
        assert a.epochs[0].task_weights != b.epochs[0].task_weights                        # between seeds
    elif name == "scalar":
        weights = [1.0, 2.0, 5.0, 10.0, 50.0, 1.0, 1.0, 0.5]
        rec = _run(_recipe("scalar", weights=weights), 0, tmp_path, monkeypatch)
        assert all(e.task_weights == weights for e in rec.epochs)
    else:
        recipe = _recipe("auto_lambda", virtual_lr=1e-4)   # the recipe's Adam lr
        rec = _run(recipe, 0, tmp_path, monkeypatch)
        w0, w1 = rec.epochs[0].task_weights, rec.epochs[1].task_weights
        assert w0 == pytest.approx([0.1] * T, abs=1e-3) and w0 != w1 and w1 != [0.1] * T
        assert len(rec.epochs[0].weighting_logs["hypergradient"]) == T
    assert rec.status == "finished" and all(len(e.task_weights) == T for e in rec.epochs)
