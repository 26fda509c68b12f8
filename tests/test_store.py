"""The content-addressed store: one record per (fingerprint, device kind, seed), checked on read."""
from __future__ import annotations

import json

import pytest

from mtlrepro.profiles import apply_profile

from mtlrepro.recipe import get_recipe, recipes_for_table
from mtlrepro.store import (SCHEMA_VERSION, RunRecord, StaleRecordWarning, device_kind_slug, find_run, run_path,
                            save_run)

from .harness_utils import tiny_env  # noqa: F401 (fixture)


def _record(recipe, seed=0, status="finished", kind="cpu") -> RunRecord:
    return RunRecord(recipe_id=recipe.id, fingerprint=recipe.fingerprint, seed=seed, profile="tiny",
                     status=status, recipe=recipe.to_dict(), data={}, environment={"device_kind": kind})


def test_the_same_configuration_in_four_tables_is_one_fingerprint():
    ids = ["etr_nlp/table1/standard_conv", "etr_nlp/table3a/hard_sharing", "etr_nlp/table4/hard_sharing_g8",
           "etr_nlp/table_s1/standard_conv"]
    assert len({get_recipe(i).fingerprint for i in ids}) == 1
    assert len({apply_profile(get_recipe(i), "tiny").fingerprint for i in ids}) == 1


def test_fingerprint_covers_in_code_defaults_and_implementation_versions(monkeypatch):
    from mtlrepro.methods import WEIGHTINGS
    r = get_recipe("etr_nlp/table4/gradnorm_g8")
    resolved = r.resolved()
    assert resolved["weighting_kwargs"]["weight_lr"] == 0.025      # an in-code default, written out
    # writing the default explicitly is the same configuration
    explicit = r.with_overrides(weighting_kwargs=dict(r.weighting_kwargs, weight_lr=0.025))
    assert explicit.fingerprint == r.fingerprint
    assert r.with_overrides(weighting_kwargs=dict(r.weighting_kwargs, weight_lr=0.01)).fingerprint != r.fingerprint
    # a bumped implementation version is a new fingerprint
    cls = WEIGHTINGS.get("gradnorm")
    before = r.implementation()
    monkeypatch.setattr(cls, "version", getattr(cls, "version", 1) + 1, raising=False)
    assert r.implementation() != before
    mr = get_recipe("etr_nlp/table4/max_roaming_g8").resolved()["sharing_kwargs"]
    assert {"sharing_ratio", "update_ratio", "update_every"} <= set(mr)


def test_fingerprint_covers_precision_and_ignores_ids_notes_fitted():
    r = get_recipe("etr_nlp/table4/hard_sharing_g8")
    assert r.with_overrides(tf32=True).fingerprint != r.fingerprint
    assert r.with_overrides(amp=True).fingerprint != r.fingerprint
    assert r.with_overrides(id="x/y/z", table="x/y", row="z", notes="n", fitted={"params": "why"}).fingerprint \
        == r.fingerprint


def test_layout_is_content_addressed_and_device_kinds_are_apart(tmp_path):
    r = apply_profile(get_recipe("etr_nlp/table4/hard_sharing_g8"), "tiny")
    path = save_run(_record(r), tmp_path)
    assert path == tmp_path / "runs" / "tiny" / r.fingerprint[:16] / "cpu" / "seed0.json"
    other = apply_profile(get_recipe("etr_nlp/table3a/hard_sharing"), "tiny")   # same configuration
    assert find_run("tiny", other.id, other.fingerprint, 0, tmp_path).recipe_id == r.id
    assert find_run("tiny", r.id, r.fingerprint, 0, tmp_path, device_kind="cuda:NVIDIA H100") is None
    gpu = save_run(_record(r, kind="cuda:NVIDIA H100 80GB HBM3"), tmp_path)
    assert gpu.parent.name == device_kind_slug("cuda:NVIDIA H100 80GB HBM3") == "cuda-nvidia-h100-80gb-hbm3"
    assert find_run("tiny", r.id, r.fingerprint, 0, tmp_path, device_kind="cpu").environment["device_kind"] == "cpu"


def test_find_run_refuses_records_of_another_fingerprint_or_schema(tmp_path):
    r = apply_profile(get_recipe("etr_nlp/table4/hard_sharing_g8"), "tiny")
    path = save_run(_record(r), tmp_path)
    raw = json.loads(path.read_text())
    path.write_text(json.dumps(dict(raw, fingerprint="0" * 64)))
    with pytest.warns(StaleRecordWarning, match="fingerprint"):
        assert find_run("tiny", r.id, r.fingerprint, 0, tmp_path) is None
    path.write_text(json.dumps(dict(raw, schema_version=SCHEMA_VERSION - 1)))
    with pytest.warns(StaleRecordWarning, match="schema"):
        assert find_run("tiny", r.id, r.fingerprint, 0, tmp_path) is None
    path.write_text("{not json")
    with pytest.warns(StaleRecordWarning, match="not a run record .invalid JSON.*set aside"):
        assert find_run("tiny", r.id, r.fingerprint, 0, tmp_path) is None


def test_a_configuration_shared_by_tables_is_planned_and_trained_once(tmp_path, tiny_env):
    from mtlrepro.launch import InProcessLauncher, plan_jobs
    recipes = [r for t in ("etr_nlp/table3a", "etr_nlp/table4") for r in recipes_for_table(t)
               if r.row in ("hard_sharing", "hard_sharing_g8")]
    assert len(recipes) == 2
    todo, done, _ = plan_jobs(recipes, "tiny", [0], tmp_path, device="cpu")
    assert len(todo) == 1 and not done
    fingerprint = todo[0].recipe.fingerprint
    InProcessLauncher("cpu", progress=False).run([todo[0]], None, tmp_path)
    todo, done, _ = plan_jobs(recipes_for_table("etr_nlp/table1"), "tiny", [0], tmp_path, device="cpu")
    assert [j.recipe.row for j, _ in done] == ["standard_conv"]     # trained for table 3a/4, found by table 1
    from mtlrepro.compare import collect_runs
    from mtlrepro.tables import get_table
    rows = {"etr_nlp/table1": "standard_conv", "etr_nlp/table3a": "hard_sharing", "etr_nlp/table4": "hard_sharing_g8"}
    for table, row in rows.items():
        runs = collect_runs(get_table(table), "tiny", [0], tmp_path)[row].runs
        assert [r.fingerprint for r in runs] == [fingerprint]
    assert len(list((tmp_path / "runs").rglob("seed0.json"))) == 1


def test_model_fields_head_and_conv_unit_are_fingerprinted_only_when_set():
    r = get_recipe("etr_nlp/table4/hard_sharing_g8")
    assert "head" not in r.result_dict() and "conv_unit" not in r.result_dict()
    assert r.with_overrides(head="linear").fingerprint != r.fingerprint
    # hard_sharing + conv unit nlp is the nlp scheme: the resolved configuration says so
    nlp = r.with_overrides(conv_unit="nlp")
    assert nlp.fingerprint != r.fingerprint and "sharing:nlp" in nlp.implementation()
    assert nlp.resolved()["sharing"] == "nlp" and "conv_unit" not in nlp.resolved()


def test_aliases_and_equivalent_spellings_are_one_configuration():
    r = get_recipe("etr_nlp/table4/hard_sharing_g8")
    assert r.with_overrides(weighting="hard_sharing").fingerprint == r.with_overrides(weighting="equal").fingerprint
    assert r.with_overrides(weighting="uncertainty").fingerprint == r.with_overrides(weighting="uw").fingerprint
    assert r.with_overrides(conv_unit="nlp").fingerprint == r.with_overrides(sharing="nlp").fingerprint
    assert r.with_overrides(weighting="rlw").fingerprint != r.with_overrides(weighting="uw").fingerprint


def test_tiny_profile_trains_from_random_initialisation():
    r = get_recipe("etr_nlp/table4/hard_sharing_g8").with_overrides(backbone="resnet50_dilated",
                                                                    pretrained="imagenet1k_v1")
    assert r.result_dict()["pretrained"] == "imagenet1k_v1" and r.model_kwargs()["pretrained"] == "imagenet1k_v1"
    tiny = apply_profile(r, "tiny")
    assert tiny.pretrained is None and "pretrained" not in tiny.model_kwargs()
    from mtlrepro.profiles import PROFILES
    assert "random initialisation" in PROFILES["tiny"].description
