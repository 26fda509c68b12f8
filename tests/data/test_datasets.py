"""The DATASETS registry: one entry holds everything the project knows about a dataset."""
from __future__ import annotations

import pytest

from mtlrepro.data.datasets import DATASETS, get_dataset
from mtlrepro.recipe import recipe_sets
from mtlrepro.registry import UnknownKeyError, load_target


def test_every_recipe_dataset_and_task_set_is_registered():
    for rs in recipe_sets().values():
        for r in rs.recipes:
            spec = get_dataset(r.dataset)
            assert spec.task_set(r.task_set).n_tasks >= 1, r.id


@pytest.mark.parametrize("name", DATASETS.names())
def test_entry_targets_resolve_and_sizes_are_the_published_ones(name):
    spec = get_dataset(name)
    for target in (spec.problem, spec.shape, spec.tiny_generator):
        assert callable(load_target(target)), target
    assert spec.split_sizes["train"] in (162_770, 2_975, 795, 4_998)
    assert "DATA_ROOT" in spec.expected_layout


def test_unknown_dataset_and_task_set_suggest_the_closest():
    with pytest.raises(UnknownKeyError, match="cityscapes"):
        get_dataset("cityscape")
    with pytest.raises(UnknownKeyError, match="std3"):
        get_dataset("nyuv2").task_set("std4")


def test_task_set_sizes_match_the_problem_shapes():
    from mtlrepro.problems import problem_shape
    for rs in recipe_sets().values():
        for r in rs.recipes:
            out_dims, _ = problem_shape(r)
            assert len(out_dims) == get_dataset(r.dataset).task_set(r.task_set).n_tasks, r.id
