"""What a run record holds: resumed segments, true time, device, precision, complexity, data checksum."""
from __future__ import annotations

import pytest
import torch

from mtlrepro.profiles import apply_profile

from mtlrepro.recipe import get_recipe
from mtlrepro.store import EpochRecord
from mtlrepro.train.selection import select_final
from mtlrepro.train.trainer import load_checkpoint, restore_rng, train_run

from ..harness_utils import tiny_env  # noqa: F401 (fixture)


def _tiny(recipe_id: str, **kw):
    return apply_profile(get_recipe(recipe_id), "tiny").with_overrides(**kw)


def test_checkpoint_rng_state_is_loaded_on_the_cpu_whatever_the_device(tmp_path):
    """Resume on a GPU failed: map_location=<gpu> moved the CPU RNG state to the GPU and
    set_rng_state raised. The meta device stands in for a GPU here."""
    path = tmp_path / "c.pt"
    torch.save({"rng_cpu": torch.get_rng_state(), "rng_cuda": None}, path)
    old_way = torch.load(path, map_location="meta", weights_only=False)   # what the trainer did on a GPU
    with pytest.raises((RuntimeError, TypeError, NotImplementedError)):
        torch.set_rng_state(old_way["rng_cpu"])
    state = load_checkpoint(path)
    assert state["rng_cpu"].device.type == "cpu"
    expected = torch.rand(3)
    restore_rng(state, torch.device("meta"))     # a non-CPU device without a CUDA RNG state
    assert torch.equal(torch.rand(3), expected)


def test_resumed_run_keeps_every_segment_and_the_summed_time(tmp_path, tiny_env):
    recipe = _tiny("etr_nlp/table4/hard_sharing_g8", epochs=3)
    assert train_run(recipe, 0, "tiny", results_root=tmp_path, progress=False, device="cpu",
                     stop_after_epochs=1) is None
    ckpt_seconds = load_checkpoint(next((tmp_path / "checkpoints").rglob("*.pt")))["seconds"]
    rec = train_run(recipe, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    segs = rec.environment["segments"]
    assert [s["start_epoch"] for s in segs] == [0, 1]
    assert all(s["device"] == "cpu" and s["torch"] == torch.__version__ for s in segs)
    assert rec.seconds > ckpt_seconds > 0
    assert rec.environment["device"] == "cpu" and rec.environment["device_kind"] == "cpu"
    assert rec.environment["precision"] == {"dtype": "float32", "amp": None, "tf32": False, "channels_last": False}


def test_record_holds_complexity_at_the_run_size_resolved_config_and_data_checksum(tmp_path, tiny_env):
    recipe = _tiny("etr_nlp/table4/gradnorm_g8", epochs=1)
    rec = train_run(recipe, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    c = rec.complexity
    assert c["input_shape"] == [3, 32, 32] and c["flops_unit"] == "MAC" and c["flops"] > 0
    assert c["params_active_task0"] == c["params_total"] > 11_000_000
    assert rec.recipe["resolved"]["weighting_kwargs"]["weight_lr"] == 0.025
    assert rec.recipe["implementation"]["weighting:gradnorm"] >= 1
    assert len(rec.data["checksum"]) == 64
    again = train_run(recipe, 1, "tiny", results_root=tmp_path, progress=False, device="cpu")
    assert again.data["checksum"] == rec.data["checksum"]


def _epochs(*metrics):
    return [EpochRecord(epoch=i + 1, train_loss=1.0, metrics=m, seconds=0.0) for i, m in enumerate(metrics)]


def test_select_final_rejects_an_unknown_metric_instead_of_returning_nothing():
    eps = _epochs({"fscore": 1.0}, {"fscore": 2.0})
    assert select_final(eps, "best:fscore")["epoch"] == 2
    assert select_final(eps, "best:-fscore")["epoch"] == 1
    with pytest.raises(ValueError, match="fscore"):
        select_final(eps, "best:fscroe")
    with pytest.raises(ValueError):
        select_final(eps, "mean_last:0")
    with pytest.raises(ValueError, match="unknown selection rule"):
        select_final(eps, "first")


def test_an_unknown_selection_metric_fails_the_run_after_its_first_epoch(tmp_path, tiny_env):
    recipe = _tiny("etr_nlp/table4/hard_sharing_g8", epochs=3, selection="best:fscroe")
    with pytest.raises(ValueError, match="fscroe"):
        train_run(recipe, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")


def test_every_epoch_records_the_task_weights_of_its_weighting(tmp_path, tiny_env):
    equal = train_run(_tiny("etr_nlp/table4/hard_sharing_g8", epochs=2), 0, "tiny", results_root=tmp_path,
                      progress=False, device="cpu")
    assert [e.task_weights for e in equal.epochs] == [[1.0] * 8, [1.0] * 8]
    gn = train_run(_tiny("etr_nlp/table4/gradnorm_g8", epochs=2), 0, "tiny", results_root=tmp_path,
                   progress=False, device="cpu")
    w = [e.task_weights for e in gn.epochs]
    assert len(w[0]) == 8 and w[0] != w[1] and w[1] != [1.0] * 8   # GradNorm's weights move
    assert sum(w[1]) == pytest.approx(8.0, rel=1e-5)                   # renormalised to sum T
    tr = train_run(_tiny("etr_nlp/table4/task_routing_g8", epochs=1), 0, "tiny", results_root=tmp_path,
                   progress=False, device="cpu")
    assert tr.epochs[0].task_weights == [1.0] * 8                      # steady state: each task on L_t


def test_an_unsupported_update_weighting_pair_fails_before_any_data_is_built(tmp_path, monkeypatch):
    from mtlrepro.data import datasets
    monkeypatch.setattr(datasets.DatasetSpec, "build_problem",
                        lambda *a, **k: pytest.fail("built data for a rejected pair"))
    recipe = _tiny("etr_nlp/table4/task_routing_g8", weighting="gradnorm")
    with pytest.raises(ValueError, match="gradnorm"):
        train_run(recipe, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")


def test_per_epoch_conflict_measurement_is_recorded_and_changes_no_training(tmp_path, tiny_env):
    base = _tiny("etr_nlp/table4/hard_sharing_g8", epochs=2)
    plain = train_run(base, 0, "tiny", results_root=tmp_path / "a", progress=False, device="cpu")
    measured = train_run(base.with_overrides(measure_conflicts=2), 0, "tiny", results_root=tmp_path / "b",
                         progress=False, device="cpu")
    assert measured.fingerprint != plain.fingerprint
    assert measured.epochs[0].conflicts is None and plain.epochs[1].conflicts is None
    ratios = measured.epochs[1].conflicts
    assert ratios and all(0.0 <= v <= 100.0 for v in ratios["ratio"].values())
    # the measurement adds its ratios as metric keys (CoNAL Table 1's cells) and changes nothing else
    assert {k: v for k, v in measured.epochs[1].metrics.items() if k.startswith("conflict_ratio_")} == \
        {f"conflict_ratio_{m}": v for m, v in ratios["ratio"].items()}
    for a, b in zip(plain.epochs, measured.epochs):
        own = {k: v for k, v in b.metrics.items() if not k.startswith("conflict_ratio_")}
        assert a.train_loss == b.train_loss and a.metrics == own


def test_step_lr_schedule_is_applied_per_epoch_and_survives_a_resume(tmp_path, tiny_env):
    recipe = _tiny("etr_nlp/table4/hard_sharing_g8", epochs=3, lr_schedule="step:1:0.5")
    assert recipe.fingerprint != _tiny("etr_nlp/table4/hard_sharing_g8", epochs=3).fingerprint
    assert "lr_schedule" not in _tiny("etr_nlp/table4/hard_sharing_g8").result_dict()   # unset: not fingerprinted
    full = train_run(recipe, 0, "tiny", results_root=tmp_path / "a", progress=False, device="cpu")
    assert [e.lr for e in full.epochs] == pytest.approx([1e-4, 5e-5, 2.5e-5])
    assert train_run(recipe, 0, "tiny", results_root=tmp_path / "b", progress=False, device="cpu",
                     stop_after_epochs=1) is None
    resumed = train_run(recipe, 0, "tiny", results_root=tmp_path / "b", progress=False, device="cpu")
    assert [e.lr for e in resumed.epochs] == [e.lr for e in full.epochs]
    with pytest.raises(ValueError, match="lr_schedule"):
        train_run(recipe.with_overrides(lr_schedule="cosine"), 0, "tiny", results_root=tmp_path / "c",
                  progress=False, device="cpu")
