"""Broken run records never block a table and are never counted (mtlrepro/store.py)."""
from __future__ import annotations

import json
import os
import shutil
import stat
import warnings

import pytest

from mtlrepro.recipe import apply_profile, get_recipe
from mtlrepro.store import StaleRecordWarning, find_run, iter_runs
from mtlrepro.train.trainer import train_run

from ..harness_utils import tiny_env  # noqa: F401 (fixture)

RECIPE = "etr_nlp/table4/hard_sharing_g8"


@pytest.fixture(scope="module")
def stored(tmp_path_factory, tiny_env):
    root = tmp_path_factory.mktemp("store")
    recipe = apply_profile(get_recipe(RECIPE), "tiny").with_overrides(epochs=1)
    rec = train_run(recipe, 0, "tiny", results_root=root, progress=False, device="cpu")
    return root, recipe, next(root.rglob("seed0.json")), rec


def _copy(stored, tmp_path):
    root, recipe, path, _ = stored
    new = tmp_path / "store"
    shutil.copytree(root, new)
    return new, recipe, new / path.relative_to(root)


def test_records_are_world_readable(stored):
    mode = stat.S_IMODE(os.stat(stored[2]).st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH


@pytest.mark.parametrize("content,why", [
    (lambda t: t[: len(t) // 2], "invalid JSON"),                          # truncated by a crash
    (lambda t: "[1, 2]", "a JSON list"),
    (lambda t: json.dumps({**json.loads(t), "epochs": [{"epoch": 1}]}), "malformed run record"),
])
def test_a_broken_record_is_set_aside_and_the_job_counts_as_not_run(stored, tmp_path, content, why):
    root, recipe, path = _copy(stored, tmp_path)
    path.write_text(content(path.read_text()))
    with pytest.warns(StaleRecordWarning, match=why):
        assert find_run("tiny", recipe.id, recipe.fingerprint, 0, root) is None
    assert not path.exists() and len(list(path.parent.glob("seed0.json.corrupt-*"))) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert list(iter_runs("tiny", root)) == []                 # the table's other records still load


def test_a_copy_under_another_seeds_name_is_not_a_second_seed(stored, tmp_path):
    root, recipe, path = _copy(stored, tmp_path)
    shutil.copy(path, path.with_name("seed1.json"))
    with pytest.warns(StaleRecordWarning, match="expected .* seed 1"):
        assert find_run("tiny", recipe.id, recipe.fingerprint, 1, root) is None
    assert find_run("tiny", recipe.id, recipe.fingerprint, 0, root) is not None
