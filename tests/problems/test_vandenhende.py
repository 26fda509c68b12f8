"""NYUD_MT / PASCAL_MT problems: task sets, shapes, batches, the evaluator's keys, and a tiny
end-to-end training run of each through the trainer."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mtlrepro.data import DataError
from mtlrepro.data.datasets import get_dataset
from mtlrepro.metrics.definitions import get_def
from mtlrepro.problems import build_problem, problem_shape
from mtlrepro.problems.vandenhende import (IMAGENET_MEAN, IMAGENET_STD, metric_keys,
                                           primary_metric_keys, vandenhende_tasks)
from mtlrepro.problems.vandenhende_eval import VandenhendeEvaluator
from mtlrepro.profiles import apply_profile
from mtlrepro.recipe import get_recipe
from mtlrepro.registry import UnknownKeyError

from ..harness_utils import tiny_env  # noqa: F401 (fixture)

SETS = [("nyud_mt", "gated3"), ("nyud_mt", "gated3_edge"), ("pascal_mt", "pascal5")]
CPU = torch.device("cpu")


def recipe(dataset: str, task_set: str, profile: str = "tiny", **kw):
    native = {"nyud_mt": 480, "pascal_mt": 512}[dataset]
    r = dataclasses.replace(get_recipe("conal/table3/hps"), dataset=dataset, task_set=task_set,
                            image_size=native, id=f"test/{dataset}_{task_set}")
    return (apply_profile(r, "tiny") if profile == "tiny" else r).with_overrides(**kw)


@pytest.fixture(scope="module")
def problems(tiny_env) -> dict:
    return {s: build_problem(recipe(*s), "tiny", None, CPU) for s in SETS}


@pytest.mark.parametrize("dataset,task_set,names,dims,full", [
    ("nyud_mt", "gated3", ["semseg", "depth", "normals"], [40, 1, 3], (3, 480, 640)),
    ("nyud_mt", "gated3_edge", ["semseg", "depth", "normals", "edge"], [40, 1, 3, 1], (3, 480, 640)),
    ("pascal_mt", "pascal5", ["semseg", "human_parts", "saliency", "normals", "edge"], [21, 7, 1, 3, 1],
     (3, 512, 512)),
])
def test_task_sets_and_shapes(dataset, task_set, names, dims, full):
    tasks = vandenhende_tasks(dataset, task_set)
    assert [t.name for t in tasks] == names and [t.out_dim for t in tasks] == dims
    assert get_dataset(dataset).task_set(task_set).n_tasks == len(tasks)
    assert problem_shape(recipe(dataset, task_set, profile="full")) == (dims, full)
    assert problem_shape(recipe(dataset, task_set))[1] == (3, 32, 32)
    with pytest.raises(UnknownKeyError):
        vandenhende_tasks(dataset, "std3")


@pytest.mark.parametrize("key", SETS, ids=lambda s: "/".join(s))
def test_every_key_is_defined_and_the_papers_columns_come_first(key):
    keys = metric_keys(*key)
    assert len(keys) == len(set(keys)) and [k for k in keys if get_def(k) is None] == []
    want = {"gated3": ["miou", "rmse", "mean_angle_pooled"],
            "gated3_edge": ["miou", "rmse", "mean_angle_pooled", "edge_loss"],
            "pascal5": ["semseg/miou", "human_parts/miou", "miou_best_threshold", "mean_angle_pooled",
                        "edge_loss"]}[key[1]]
    assert primary_metric_keys(*key) == want == keys[:len(want)]


@pytest.mark.parametrize("key", SETS, ids=lambda s: "/".join(s))
def test_tiny_problem_batches_losses_and_evaluation(problems, key):
    p = problems[key]
    assert p.input_shape == (3, 32, 32) and p.synthetic and p.eval_split == "val"
    x, ys = next(p.train_batches(4, epoch=0, seed=0))
    assert x.dtype == torch.float32 and p.train.inputs.dtype == torch.uint8
    # ImageNet normalisation: undo it and get back the stored uint8 image of some sample
    back = (x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) * 255
    assert (back.round() - back).abs().max() < 1e-3 and back.min() > -0.5 and back.max() < 255.5
    tasks = vandenhende_tasks(*key)
    for t, y in zip(tasks, ys):
        want = {"seg": (torch.int64, 3), "depth": (torch.float32, 4), "normals_l1": (torch.float32, 4),
                "saliency": (torch.float32, 4), "edge": (torch.float32, 4)}[t.kind]
        assert (y.dtype, y.dim()) == want, t
    outs = [torch.randn(x.shape[0], t.out_dim, 32, 32) for t in tasks]
    losses = [float(p.task_loss(i, o, y)) for i, (o, y) in enumerate(zip(outs, ys))]
    assert all(math.isfinite(v) and v >= 0 for v in losses)
    ev = p.new_evaluator()
    for xb, yb in p.eval_batches(3):
        ev.update([torch.randn(xb.shape[0], t.out_dim, 32, 32) for t in tasks], yb)
    res = ev.compute()
    assert sorted(res) == sorted(metric_keys(*key))


def test_pascal_human_parts_of_images_without_persons_are_ignored(problems):
    p = problems[("pascal_mt", "pascal5")]
    parts = p.eval.targets[1]
    labelled = parts.flatten(1).ge(0).any(1)
    assert p.data_info["n_eval_with_human_parts"] == int(labelled.sum()) >= 1
    assert (parts[~labelled] == -1).all() and (~labelled).any()


def test_evaluator_on_perfect_predictions():
    tasks = vandenhende_tasks("pascal_mt", "pascal5")
    seg = torch.tensor([[[0, 1], [2, -1]]])
    parts = torch.full((1, 2, 2), -1)
    sal = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    nrm = torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64).view(1, 3, 1, 1).repeat(1, 1, 2, 2)
    outs = [torch.nn.functional.one_hot(seg.clamp(min=0), 21).permute(0, 3, 1, 2).float(),
            torch.zeros(1, 7, 2, 2), 20 * (sal - 0.5), 3 * nrm, 20 * (sal - 0.5)]
    ev = VandenhendeEvaluator(tasks)
    ev.update(outs, [seg, parts, sal, nrm, sal])
    with pytest.warns(RuntimeWarning):       # human parts: every pixel ignored
        r = ev.compute()
    assert r["semseg/miou"] == 100.0 and math.isnan(r["human_parts/miou"])
    assert r["miou_best_threshold"] == 100.0 and r["maxf"] == pytest.approx(100.0)
    assert r["mean_angle_pooled"] == pytest.approx(0.0, abs=0.05)
    # every pixel at logit +-10 on the right side: (0.95 * 2 + 0.05 * 2) softplus(-10) / 4
    assert r["edge_loss"] == pytest.approx(math.log1p(math.exp(-10)) / 2, rel=1e-6)


def test_full_profile_checks(tmp_path, monkeypatch):
    monkeypatch.delenv("MTLREPRO_DATA", raising=False)
    with pytest.raises(ValueError, match="image_size: 480"):
        build_problem(recipe("nyud_mt", "gated3", profile="full", image_size=288), "full", str(tmp_path), CPU)
    with pytest.raises(ValueError, match="use 'val'"):
        build_problem(recipe("pascal_mt", "pascal5", profile="full", eval_split="test"), "full", None, CPU)
    with pytest.raises(DataError, match="NYUD_MT"):
        build_problem(recipe("nyud_mt", "gated3", profile="full"), "full", None, CPU)
    with pytest.raises(DataError, match="PASCAL_MT not found"):
        build_problem(recipe("pascal_mt", "pascal5", profile="full"), "full", str(tmp_path), CPU)


@pytest.mark.parametrize("key", [SETS[0], SETS[2]], ids=lambda s: "/".join(s))
def test_one_tiny_training_run(tiny_env, tmp_path, key):
    from mtlrepro.train.trainer import train_run
    rec = train_run(recipe(*key, epochs=1), 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    assert rec.status == "finished" and len(rec.epochs) == 1
    assert math.isfinite(rec.epochs[0].train_loss)
    m = rec.final["metrics"]
    assert set(m) >= set(primary_metric_keys(*key)) and all(math.isfinite(m[k]) for k in primary_metric_keys(*key))
    assert rec.data["input_hw"] == [32, 32] and rec.data["augmentation"].startswith("none")
