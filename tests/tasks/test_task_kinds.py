"""The TASK_KINDS registry: every task of every task set has a kind, every key a definition."""
from __future__ import annotations

import pytest
import torch

from mtlrepro.data.datasets import DATASETS, get_dataset
from mtlrepro.metrics.definitions import get_def
from mtlrepro.problems.dense import dense_tasks, metric_keys
from mtlrepro.registry import UnknownKeyError
from mtlrepro.tasks import TASK_KINDS, Task, batch_target, task_loss


def test_every_kind_declares_defined_metric_keys():
    from mtlrepro.tasks import attributes, depth, edge, normals, normals_l1, saliency, segmentation  # noqa: F401
    assert set(TASK_KINDS.names()) == {"seg", "binary_seg", "depth", "normals", "attributes", "edge",
                                       "normals_l1", "saliency"}
    for name in TASK_KINDS.names():
        kind = TASK_KINDS.get(name)
        assert kind.metric_keys, name
        for rule, keys in kind.metric_keys.items():
            assert rule in ("batch", "pooled", "split"), (name, rule)
            assert all(get_def(k) is not None for k in keys), (name, keys)


@pytest.mark.parametrize("dataset", ["cityscapes", "nyuv2"])
def test_every_dense_task_has_a_kind_and_the_evaluator_returns_its_keys(dataset):
    for task_set in get_dataset(dataset).task_sets:
        tasks = dense_tasks(dataset, task_set)
        assert len(tasks) == get_dataset(dataset).task_set(task_set).n_tasks
        keys = set(metric_keys(dataset, task_set))
        for t in tasks:
            kind = TASK_KINDS.get(t.kind)
            assert all(set(ks) <= keys for ks in kind.metric_keys.values()), (t, kind.metric_keys)


def test_losses_and_targets_dispatch_on_the_kind():
    labels = torch.tensor([[[0, 1], [-1, 1]]], dtype=torch.int8)
    one_vs_rest = Task("seg_1", "binary_seg", 1, 1)
    mask = batch_target(one_vs_rest, labels)
    assert mask.shape == (1, 1, 2, 2) and mask.sum() == 2        # class 1 only; -1 is a negative
    logits = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    assert float(task_loss(one_vs_rest, logits, mask)) == pytest.approx(float(torch.log(torch.tensor(2.0))))
    seg = Task("segmentation", "seg", 2)
    assert batch_target(seg, labels).dtype == torch.int64
    with pytest.raises(UnknownKeyError, match="depth"):
        task_loss(Task("x", "detph", 1), logits, logits)


def test_celeba_task_sets_are_registered():
    assert {"group8", "attr40", "conal9", "gated3"} == set(get_dataset("celeba").task_sets) and "celeba" in DATASETS
