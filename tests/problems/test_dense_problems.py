"""Cityscapes / NYUv2 problems: task sets, batches, losses on invalid pixels, evaluator keys."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtlrepro.data import DataError
from mtlrepro.metrics import BinaryIoUPerImage
from mtlrepro.problems import build_problem, problem_shape
from mtlrepro.problems.dense import DenseEvaluator, dense_tasks, metric_keys, primary_metric_keys
from mtlrepro.tasks import Task as DenseTask
from mtlrepro.tasks.depth import depth_loss
from mtlrepro.tasks.normals import normals_loss
from mtlrepro.tasks.segmentation import binary_seg_loss, seg_loss
from mtlrepro.problems.paths import expected_layout
from mtlrepro.recipe import Recipe
from mtlrepro.registry import UnknownKeyError

SETS = [("cityscapes", "mr8"), ("cityscapes", "std2"), ("nyuv2", "mr15"), ("nyuv2", "std3")]
CPU = torch.device("cpu")


def recipe(dataset: str, task_set: str, image_size: int = 32, **kw) -> Recipe:
    return Recipe(id=f"test/{dataset}_{task_set}", table="test", row="r", dataset=dataset,
                  task_set=task_set, backbone="segnet", sharing="hard_sharing",
                  image_size=image_size, batch_size=8, **kw)


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """MTLREPRO_CACHE in a temp folder: the tiny data are generated there once per module."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("cache")
        mp.setenv("MTLREPRO_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def problems(cache_env) -> dict:
    return {s: build_problem(recipe(*s), "tiny", None, CPU) for s in SETS}


# ----------------------------------------------------------------------------- task sets


@pytest.mark.parametrize("dataset,task_set,out_dims,first,last", [
    ("cityscapes", "mr8", [1] * 8, "seg_flat", "depth"),
    ("cityscapes", "std2", [7, 1], "segmentation", "depth"),
    ("nyuv2", "mr15", [1] * 14 + [3], "seg_bed", "normals"),
    ("nyuv2", "std3", [13, 1, 3], "segmentation", "normals"),
])
def test_task_sets(dataset, task_set, out_dims, first, last):
    tasks = dense_tasks(dataset, task_set)
    assert [t.out_dim for t in tasks] == out_dims
    assert tasks[0].name == first and tasks[-1].name == last
    if task_set.startswith("mr"):
        n_classes = 7 if dataset == "cityscapes" else 13
        assert [t.cls for t in tasks if t.kind == "binary_seg"] == list(range(n_classes))
    full = {"cityscapes": (3, 128, 256), "nyuv2": (3, 288, 384)}[dataset]
    assert problem_shape(recipe(dataset, task_set, full[1])) == (out_dims, full)


def test_tiny_shapes_and_unknown_sets():
    assert problem_shape(recipe("cityscapes", "mr8", 32))[1] == (3, 32, 64)
    assert problem_shape(recipe("nyuv2", "std3", 32))[1] == (3, 32, 32)
    with pytest.raises(UnknownKeyError, match="mr8"):
        dense_tasks("cityscapes", "mr9")
    with pytest.raises(UnknownKeyError, match="std3"):
        dense_tasks("nyuv2", "std2")


# ----------------------------------------------------------------------------- tiny problems


@pytest.mark.parametrize("key", SETS, ids=lambda s: "/".join(s))
def test_tiny_problem_batches_losses_and_metric_keys(problems, key):
    dataset, task_set = key
    p = problems[key]
    tasks = dense_tasks(dataset, task_set)
    assert p.name == f"{dataset}/{task_set}" and p.synthetic and p.eval_split == "val"
    assert p.out_dims == [t.out_dim for t in tasks] and p.task_names == [t.name for t in tasks]
    hw = (32, 64) if dataset == "cityscapes" else (32, 32)
    assert p.input_shape == (3, *hw)
    info = p.data_info
    assert info["synthetic"] is True and info["n_train"] == 16 and info["n_eval"] == 8
    assert info["eval_split"] == "val" and info["root"].endswith(f"tiny/{dataset}")
    assert info["input_hw"] == list(hw)
    assert p.train.inputs.dtype == torch.float16  # compact on the device; prepare casts
    x, targets = next(p.train_batches(8, epoch=0, seed=0))
    assert x.dtype == torch.float32 and x.shape == (8, 3, *hw) and 0 <= x.min() and x.max() <= 1
    outs = [torch.randn(8, d, *hw, requires_grad=True) for d in p.out_dims]
    for t, (task, o, y) in enumerate(zip(tasks, outs, targets)):
        want = {"binary_seg": ((8, 1, *hw), torch.float32), "seg": ((8, *hw), torch.int64),
                "depth": ((8, 1, *hw), torch.float32), "normals": ((8, 3, *hw), torch.float32)}[task.kind]
        assert (tuple(y.shape), y.dtype) == want
        loss = p.task_loss(t, o, y)
        assert loss.dim() == 0 and math.isfinite(float(loss.detach()))
        loss.backward()
        assert torch.isfinite(o.grad).all()
    ev = p.new_evaluator()
    for xb, tb in p.eval_batches(3):  # batches that do not align with the metric batches
        ev.update([torch.randn(xb.shape[0], d, *hw) for d in p.out_dims], tb)
    res = ev.compute()
    assert sorted(res) == sorted(metric_keys(dataset, task_set))
    assert all(math.isfinite(v) for v in res.values())
    primary = primary_metric_keys(dataset, task_set)
    assert p.primary_metrics == primary == metric_keys(dataset, task_set)[:len(primary)]
    assert primary[0] == ("miou_binary" if task_set.startswith("mr") else "miou")


def test_mr_targets_share_one_label_map_and_ignore_is_negative(problems):
    p = problems[("cityscapes", "mr8")]
    stored = p.train.targets
    assert all(stored[i] is stored[0] for i in range(7)) and stored[0].dtype == torch.int8
    _, targets = next(p.eval_batches(8))
    labels = p.eval.targets[0][:8].long()
    masks = torch.cat(targets[:7], 1)
    assert torch.equal(masks.argmax(1)[labels >= 0], labels[labels >= 0])
    assert (masks.sum(1) == (labels >= 0).float()).all()  # -1 pixels: negative for every class
    assert (labels == -1).any()


def test_tiny_data_generated_once(problems, cache_env):
    marker = cache_env / "tiny" / "cityscapes" / ".generated"
    before = marker.stat().st_mtime_ns
    build_problem(recipe("cityscapes", "std2"), "tiny", None, CPU)
    assert marker.stat().st_mtime_ns == before


def test_full_profile_errors(monkeypatch, tmp_path):
    monkeypatch.delenv("MTLREPRO_DATA", raising=False)
    with pytest.raises(DataError) as e:
        build_problem(recipe("nyuv2", "mr15", 288), "full", None, CPU)
    assert expected_layout("nyuv2") in str(e.value) and "--profile tiny" in str(e.value)
    with pytest.raises(DataError, match="Expected MTAN's preprocessed Cityscapes"):
        build_problem(recipe("cityscapes", "mr8", 128), "full", str(tmp_path), CPU)
    with pytest.raises(ValueError, match="set image_size: 128"):
        build_problem(recipe("cityscapes", "mr8", 64), "full", str(tmp_path), CPU)
    with pytest.raises(ValueError, match="val is the test split"):
        build_problem(recipe("cityscapes", "mr8", 128, eval_split="test"), "full", str(tmp_path), CPU)


# ----------------------------------------------------------------------------- losses by hand


def test_depth_loss_ignores_invalid_pixels_and_their_garbage():
    target = torch.tensor([[[[0.2, 0.0], [0.4, 0.0]]]])
    garbage = torch.tensor([[[[0.2, float("nan")], [0.4, float("inf")]]]], requires_grad=True)
    loss = depth_loss(garbage, target)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(garbage.grad, torch.zeros_like(target))
    pred = torch.tensor([[[[0.3, 5.0], [0.1, -7.0]]]])
    assert float(depth_loss(pred, target)) == pytest.approx((0.1 + 0.3) / 2)
    assert float(depth_loss(pred, torch.zeros_like(target))) == 0.0  # no valid pixel: 0, not NaN


def test_normals_loss_is_one_minus_mean_cosine_on_valid_pixels():
    g = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    garbage = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.5, 0.0], [float("nan")] * 3]).T.reshape(1, 3, 1, 3)
    garbage.requires_grad_(True)
    loss = normals_loss(garbage, g)  # unnormalised but aligned predictions: cosine 1
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert torch.isfinite(garbage.grad).all() and (garbage.grad[..., 2] == 0).all()
    p = torch.tensor([[-1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [9.0, 9.0, 9.0]]).T.reshape(1, 3, 1, 3)
    # cosines -1 and 1/sqrt(2): loss = 1 - (-1 + 0.7071) / 2
    assert float(normals_loss(p, g)) == pytest.approx(1 - (-1 + 2 ** -0.5) / 2, abs=1e-6)


def test_seg_loss_ignores_minus_one():
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 4, 5)
    target = torch.randint(0, 7, (2, 4, 5))
    target[0, :2] = -1
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[target >= 0], target[target >= 0])
    assert float(seg_loss(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    other = logits.clone()
    other[0, :, :2] = 100 * torch.randn(7, 2, 5)  # anything at ignored pixels
    assert float(seg_loss(other, target)) == pytest.approx(float(expected), rel=1e-6)
    perfect = F.one_hot(target.clamp(min=0), 7).permute(0, 3, 1, 2) * 50.0
    assert float(seg_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(seg_loss(logits, torch.full_like(target, -1))) == 0.0


def test_binary_seg_loss_makes_ignore_pixels_negatives():
    labels = torch.tensor([[[2, -1], [0, 2]]])
    logits = torch.tensor([[[[1.0, 2.0], [-3.0, 0.5]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    want = F.binary_cross_entropy(torch.sigmoid(logits), mask)
    assert float(binary_seg_loss(logits, mask, 2)) == pytest.approx(float(want), rel=1e-6)
    assert float(binary_seg_loss(logits, labels, 2)) == pytest.approx(float(want), rel=1e-6)


# ----------------------------------------------------------------------------- evaluator


def _tasks(n_classes, mr, normals):
    tasks = ([DenseTask(f"seg_{c}", "binary_seg", 1, c) for c in range(n_classes)] if mr
             else [DenseTask("segmentation", "seg", n_classes)])
    tasks.append(DenseTask("depth", "depth", 1))
    if normals:
        tasks.append(DenseTask("normals", "normals", 3))
    return tasks


def _random_targets(n, c, hw=(6, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, c, (n, *hw), generator=g)
    depth = torch.rand(n, 1, *hw, generator=g) * (torch.rand(n, 1, *hw, generator=g) > 0.2)
    normals = F.normalize(torch.randn(n, 3, *hw, generator=g), dim=1)
    normals = normals * (torch.rand(n, 1, *hw, generator=g) > 0.2)
    return labels, depth, normals


@pytest.mark.parametrize("mr", [True, False])
def test_perfect_predictions_score_perfectly(mr):
    c = 4
    labels, depth, normals = _random_targets(10, c)
    tasks = _tasks(c, mr, True)
    onehot = F.one_hot(labels.clamp(min=0), c).permute(0, 3, 1, 2).float() * (labels >= 0).unsqueeze(1)
    if mr:
        outs = [(onehot[:, k:k + 1] * 2 - 1) * 20 for k in range(c)]
        tgts = [onehot[:, k:k + 1] for k in range(c)]
    else:
        outs, tgts = [onehot * 20], [labels]
    outs += [depth + 7 * (depth == 0), normals * 3]  # garbage where depth is invalid
    tgts += [depth, normals]
    ev = DenseEvaluator(tasks, c, metric_batch=4)
    ev.update(outs, tgts)
    res = ev.compute()
    for key in ("miou", "pixel_acc") + (("miou_binary", "pixel_acc_binary") if mr else ()):
        assert res[key] == pytest.approx(100), key
    if not mr:  # a multi-class argmax names a class at the ignore pixels: binary false positives
        assert 50 < res["miou_binary"] < 100 and 50 < res["pixel_acc_binary"] < 100
    for key in ("abs_err", "rel_err", "abs_err_pooled", "rel_err_pooled"):
        assert res[key] == 0, key
    for key in ("mean_angle", "mean_angle_pooled", "median_angle_pooled"):
        assert res[key] == pytest.approx(0, abs=0.05), key
    assert res["within_11_25"] == res["within_11_25_pooled"] == 100


@pytest.mark.parametrize("mr", [True, False])
def test_metric_batches_do_not_depend_on_the_callers_batches(mr):
    c, n = 3, 11
    labels, depth, normals = _random_targets(n, c, seed=1)
    tasks = _tasks(c, mr, True)
    g = torch.Generator().manual_seed(5)
    outs = [torch.randn(n, t.out_dim, 6, 7, generator=g) for t in tasks]
    masks = [(labels == k).unsqueeze(1).float() for k in range(c)]
    tgts = (masks if mr else [labels]) + [depth, normals]
    results = []
    for step in (n, 1, 3, 4):
        ev = DenseEvaluator(tasks, c, metric_batch=4)
        for lo in range(0, n, step):
            ev.update([o[lo:lo + step] for o in outs], [t[lo:lo + step] for t in tgts])
        results.append(ev.compute())
    for r in results[1:]:
        assert r == pytest.approx(results[0], rel=1e-9)
    if mr:  # = Max Roaming's loop over test batches of 4 (the last one holds 3)
        ref = BinaryIoUPerImage(c, from_logits=True, averaging="batch")
        for lo in range(0, n, 4):
            ref.update(torch.cat(outs[:c], 1)[lo:lo + 4], labels[lo:lo + 4])
        assert results[0]["miou_binary"] == pytest.approx(ref.compute()["miou"])
        assert results[0]["pixel_acc_binary"] == pytest.approx(ref.compute()["pixel_acc"])


def _one_hot_outputs(scores: torch.Tensor) -> list[torch.Tensor]:
    """One-vs-rest logits that decide exactly what the argmax of ``scores`` decides."""
    hot = F.one_hot(scores.argmax(1), scores.shape[1]).permute(0, 3, 1, 2).float()
    return [(hot[:, k:k + 1] * 2 - 1) * 20 for k in range(scores.shape[1])]


@pytest.mark.parametrize("c,empty,normals", [(3, "zero", False), (4, "exclude", True)])
def test_a_key_means_the_same_on_multi_class_and_one_vs_rest_sets(c, empty, normals):
    """The same per-pixel decisions through a multi-class (MTAN) task set and a one-vs-rest
    (Max Roaming) one give the same value under every key: no key changes its definition with
    the task set (before: ``miou`` was the binary IoU on one and the confusion matrix on the other)."""
    n = 9
    labels, depth, normals_t = _random_targets(n, c, seed=3)
    g = torch.Generator().manual_seed(7)
    scores = torch.randn(n, c, 6, 7, generator=g)
    rest = [torch.rand(n, 1, 6, 7, generator=g)] + ([torch.randn(n, 3, 6, 7, generator=g)] if normals else [])
    rest_t = [depth] + ([normals_t] if normals else [])
    masks = [(labels == k).unsqueeze(1).float() for k in range(c)]
    std = DenseEvaluator(_tasks(c, False, normals), c, metric_batch=4, mr_empty_batches=empty)
    std.update([scores] + rest, [labels] + rest_t)
    mr = DenseEvaluator(_tasks(c, True, normals), c, metric_batch=4, mr_empty_batches=empty)
    mr.update(_one_hot_outputs(scores) + rest, masks + rest_t)
    a, b = std.compute(), mr.compute()
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12), key
    assert a["miou"] != pytest.approx(a["miou_binary"])  # two definitions, two numbers


def test_multi_class_binary_iou_by_hand():
    """One image, classes 0/1, labels [0, 0, 1, -1], argmax [0, 1, 1, 0].
    Binary (ignore = negative for every class): class 0 predicted {0, 3} vs true {0, 1} -> 1/3;
    class 1 predicted {1, 2} vs true {2} -> 1/2; correct decisions 2/4 and 3/4.
    Confusion matrix over the 3 labelled pixels: IoU 1/2 and 1/2, accuracy 2/3."""
    labels = torch.tensor([[[0, 0, 1, -1]]])
    scores = torch.tensor([[[[2.0, 0.0, 0.0, 1.0]], [[1.0, 1.0, 3.0, 0.0]]]])
    ev = DenseEvaluator(_tasks(2, False, False), 2, metric_batch=8)
    ev.update([scores, torch.ones(1, 1, 1, 4)], [labels, torch.ones(1, 1, 1, 4)])
    res = ev.compute()
    assert res["miou_binary"] == pytest.approx(100 * (1 / 3 + 1 / 2) / 2)
    assert res["pixel_acc_binary"] == pytest.approx(100 * (2 / 4 + 3 / 4) / 2)
    assert res["miou"] == pytest.approx(50.0)
    assert res["pixel_acc"] == pytest.approx(100 * 2 / 3)


def test_nyuv2_leaves_out_batches_where_a_class_never_appears():
    """Class 1 is absent (and not predicted) in the first metric batch: Cityscapes' Max Roaming
    loop counts that batch as IoU 0, NYUv2's leaves it out."""
    labels = torch.zeros(4, 2, 2, dtype=torch.long)
    labels[2:, 0, 0] = 1
    onehot = F.one_hot(labels, 2).permute(0, 3, 1, 2).float()
    outs = [(onehot[:, k:k + 1] * 2 - 1) * 20 for k in range(2)] + [torch.ones(4, 1, 2, 2)]
    tgts = [onehot[:, k:k + 1] for k in range(2)] + [torch.ones(4, 1, 2, 2)]
    per_class = {}
    for empty in ("zero", "exclude"):
        ev = DenseEvaluator(_tasks(2, True, False), 2, metric_batch=2, mr_empty_batches=empty)
        ev.update(outs, tgts)
        per_class[empty] = ev.binary.compute_per_class().tolist()
    assert per_class["zero"] == [100.0, 50.0]
    assert per_class["exclude"] == [100.0, 100.0]


# ----------------------------------------------------------------------------- learnability


def test_tiny_cityscapes_is_learnable(problems):
    """A per-pixel network (1x1 convolutions) learns the generated targets within seconds."""
    p = problems[("cityscapes", "std2")]
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 1),
                               torch.nn.ReLU())
    heads = torch.nn.ModuleList([torch.nn.Conv2d(32, d, 1) for d in p.out_dims])
    params = list(body.parameters()) + list(heads.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)

    def evaluate():
        ev = p.new_evaluator()
        with torch.no_grad():
            for x, t in p.eval_batches(8):
                z = body(x)
                ev.update([h(z) for h in heads], t)
        return ev.compute()

    before = evaluate()
    for epoch in range(60):
        for x, t in p.train_batches(8, epoch, seed=0):
            z = body(x)
            loss = sum(p.task_loss(i, h(z), y) for i, (h, y) in enumerate(zip(heads, t)))
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = evaluate()
    assert after["miou"] > 80 > before["miou"]
    assert after["abs_err"] < 0.5 * before["abs_err"]
