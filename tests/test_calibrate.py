"""`mtlrepro calibrate`: one timed step per recipe, and `mtlrepro plan` reading what it wrote."""
import dataclasses

import torch
import yaml

from mtlrepro import cost
from mtlrepro.calibrate import calibrate, calibration_key, random_targets, write_calibration
from mtlrepro.problems.dense import dense_tasks
from mtlrepro.profiles import apply_profile
from mtlrepro.recipe import get_recipe


def test_random_targets_follow_each_task_kinds_format():
    g = torch.Generator().manual_seed(0)
    seg, depth, normals = random_targets(dense_tasks("nyuv2", "std3"), 2, (8, 12), "cpu", g)
    assert seg.dtype == torch.int64 and seg.shape == (2, 8, 12) and seg.min() >= -1 and seg.max() < 13
    assert depth.shape == (2, 1, 8, 12) and (depth >= 0).all()
    norms = normals.norm(dim=1)
    assert torch.allclose(norms[norms > 0], torch.ones(()), atol=1e-5)


def test_calibration_times_each_key_once_and_plan_reads_it(tmp_path, monkeypatch):
    recipes = [apply_profile(get_recipe(f"conal/table2/{row}"), "tiny") for row in ("hps", "gradnorm")]
    content = calibrate(recipes + recipes[:1], torch.device("cpu"), batch=2, warmup=0, repeats=1, log=lambda s: None)
    assert set(content["s_per_batch"]) == {calibration_key(r) for r in recipes}
    assert all(v > 0 for v in content["s_per_batch"].values())
    assert content["reference_batch"] == "recipe" and content["measured_batch"] == 2
    write_calibration(content, tmp_path / "cpu-test.yaml")
    assert yaml.safe_load((tmp_path / "cpu-test.yaml").read_text())["s_per_batch"] == content["s_per_batch"]
    monkeypatch.setattr(cost, "CALIBRATION_DIR", tmp_path)
    cost.calibration.cache_clear()
    try:
        est = cost.seconds_per_batch(recipes[0], "cpu-test")
        assert est.basis == "measured" and est.seconds == content["s_per_batch"][calibration_key(recipes[0])]
    finally:
        cost.calibration.cache_clear()


def test_a_recipe_that_cannot_step_is_reported_not_estimated():
    bad = dataclasses.replace(apply_profile(get_recipe("conal/table2/hps"), "tiny"), weighting="gradnorm", update="synchronized")
    content = calibrate([bad], torch.device("cpu"), batch=2, warmup=0, repeats=1, log=lambda s: None)
    assert content["s_per_batch"] == {} and calibration_key(bad) in content["failed"]


def test_methods_that_need_the_runs_length_and_retraining_rows_are_handled():
    """mtl_nas_search reads its temperature schedule from the run's length (bind_schedule); a
    retraining row is timed on its search's tree, and reported when that search is not stored."""
    search = apply_profile(get_recipe("conal/table3/mtl_nas_search"), "tiny")
    retrain = get_recipe("conal/table3/conal")
    content = calibrate([search, retrain], torch.device("cpu"), batch=2, warmup=0, repeats=1, log=lambda s: None)
    assert calibration_key(search) in content["s_per_batch"]
    assert "waits for conal/table3/conal_search" in content["failed"][calibration_key(retrain)]
