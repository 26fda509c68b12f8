"""CoNAL Table 1's gradient-conflict instrument (:mod:`mtlrepro.conflicts`) and its CLI verb.

The expected ratios are computed by hand from constructed models whose task gradients have known
signs; one case cross-checks the engine against an independent per-task ``backward`` loop.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mtlrepro.conflicts import (SharedModule, batch_conflicts, conflict_table, measure_conflicts,
                                shared_modules, training_batches)
from mtlrepro.models import build_model
from mtlrepro.problems.base import Problem, Split


def _problem(x: torch.Tensor, n_tasks: int, task_loss=None, names=None) -> Problem:
    """A problem over the training inputs ``x`` (targets unused: the losses are the outputs' means)."""
    split = Split(x, [torch.zeros(len(x)) for _ in range(n_tasks)])
    return Problem(name="toy", task_names=names or [f"t{t}" for t in range(n_tasks)],
                   out_dims=[1] * n_tasks, input_shape=tuple(x.shape[1:]), train=split, eval=split,
                   eval_split="val", synthetic=True, data_info={}, prepare=lambda v: v,
                   task_loss=task_loss or (lambda t, out, y: out.mean()), new_evaluator=lambda: None)


class SignedModel(nn.Module):
    r"""Two shared scalars ``a`` (module A) and ``b`` (module B); task ``t`` outputs
    ``sa[t] * a * f_t(x) + sb[t] * b * x``, so with loss = mean output
    :math:`\partial L_t/\partial a = sa_t\,\overline{f_t(x)}` and
    :math:`\partial L_t/\partial b = sb_t\,\bar x`."""

    def __init__(self, sa, sb, f=None):
        super().__init__()
        self.A = nn.Linear(1, 1, bias=False)
        self.B = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.A.weight.fill_(0.7)
            self.B.weight.fill_(-1.3)
        self.sa, self.sb = list(sa), list(sb)
        self.f = f or [lambda v: v] * len(self.sa)

    def shared_parameters(self):
        return [self.A.weight, self.B.weight]

    def forward_all(self, x):
        a, b = self.A.weight[0, 0], self.B.weight[0, 0]
        return [sa * a * f(x) + sb * b * x for sa, sb, f in zip(self.sa, self.sb, self.f)]


def test_opposed_module_gives_100_and_aligned_module_gives_0():
    """Task gradients exactly opposed on A (signs +1 / -1) and aligned on B (+1 / +1), every batch."""
    x = torch.rand(10, 1) + 0.5   # positive inputs: the batch means are never 0
    model = SignedModel(sa=[1.0, -1.0], sb=[1.0, 1.0])
    res = measure_conflicts(model, _problem(x, 2), batch_size=3, modules=[("A", model.A), ("B", model.B)])
    assert res["batches"] == 3 and res["samples"] == 10   # 3 + 3 + 4: the remainder joins the last batch
    assert res["ratio"] == {"A": 100.0, "B": 0.0}
    assert res["mean_cosine"]["A"] == pytest.approx(-1.0) and res["mean_cosine"]["B"] == pytest.approx(1.0)
    assert res["undefined"] == {"A": 0, "B": 0}


def test_ratio_counts_batches_whose_gradients_disagree():
    """dL_0/da = mean(x), dL_1/da = mean(x^2) > 0: they conflict exactly in the batches with a
    negative mean. Batches of 2 over 9 samples: [0,1] [2,3] [4,5] [6,7,8]; means +, -, -, + -> 50%."""
    x = torch.tensor([1.0, 2.0, -3.0, 1.0, -1.0, -0.5, 2.0, -1.0, 0.5])[:, None]
    model = SignedModel(sa=[1.0, 1.0], sb=[1.0, 1.0], f=[lambda v: v, lambda v: v * v])
    res = measure_conflicts(model, _problem(x, 2), batch_size=2, modules=[("A", model.A), ("B", model.B)])
    assert res["batches"] == 4
    assert res["negative"] == {"A": 2, "B": 0}
    assert res["ratio"]["A"] == 50.0
    assert res["pair_negative"]["A"] == {"t0|t1": 2}


def test_three_tasks_count_every_unordered_pair():
    """Signs on A (+, -, +): pairs (0,1) and (1,2) conflict, (0,2) not -> 2/3; on B (+, +, -): 2/3."""
    x = torch.rand(4, 1) + 0.1
    model = SignedModel(sa=[1.0, -2.0, 0.5], sb=[1.0, 3.0, -1.0])
    res = measure_conflicts(model, _problem(x, 3), batch_size=4, modules=[("A", model.A), ("B", model.B)])
    assert res["pairs"] == ["t0|t1", "t0|t2", "t1|t2"]
    assert res["pair_negative"]["A"] == {"t0|t1": 1, "t0|t2": 0, "t1|t2": 1}
    assert res["pair_negative"]["B"] == {"t0|t1": 0, "t0|t2": 1, "t1|t2": 1}
    assert res["ratio"]["A"] == pytest.approx(200 / 3)


def test_zero_gradient_is_undefined_not_negative():
    x = torch.rand(4, 1) + 0.1
    model = SignedModel(sa=[1.0, 0.0], sb=[1.0, -1.0])     # task 1 does not use A
    res = measure_conflicts(model, _problem(x, 2), batch_size=4, modules=[("A", model.A), ("B", model.B)])
    assert res["negative"] == {"A": 0, "B": 1} and res["undefined"] == {"A": 1, "B": 0}


def test_training_batches_cover_every_sample_once():
    x = torch.arange(11.0)[:, None]
    for bs, sizes in [(4, [4, 7]), (5, [5, 6]), (11, [11]), (20, [11]), (1, [1] * 11)]:
        batches = [b for b, _ in training_batches(_problem(x, 2), bs)]
        assert [len(b) for b in batches] == sizes
        assert torch.equal(torch.cat(batches), x)


@pytest.mark.parametrize("backbone,names", [
    ("resnet18", ["stem", "layer1", "layer2", "layer3", "layer4"]),
    ("segnet", ["enc1", "enc2", "enc3", "enc4", "enc5", "dec1", "dec2", "dec3", "dec4", "dec5"]),
    ("vgg16", ["conv1", "conv2", "conv3", "conv4", "conv5"]),
])
def test_module_mapping_partitions_the_shared_parameters(backbone, names):
    model = build_model(backbone, "hard_sharing", [2, 3], width_mult=0.125)
    mods = shared_modules(model)
    assert [m.name for m in mods] == names
    ids = [id(p) for m in mods for p in m.params]
    assert len(ids) == len(set(ids))                                    # disjoint
    assert set(ids) == {id(p) for p in model.shared_parameters()}       # and complete
    heads = {id(p) for t in range(2) for p in model.task_parameters(t)}
    assert not heads & set(ids)


def test_resnet_stem_is_the_7x7_conv_unit():
    model = build_model("resnet18", "hard_sharing", [1, 1], width_mult=0.125)
    stem = shared_modules(model)[0]
    assert {id(p) for p in stem.params} == {id(p) for p in model.encoder.stem.parameters()}


def test_matches_a_per_task_backward_loop_and_leaves_the_model_untouched():
    """ResNet18 HPS, 3 tasks, float64: the ratios equal those from LibMTL-style per-task
    ``backward`` + ``p.grad`` cosines; buffers, RNG state, ``.grad`` and the mode are unchanged."""
    torch.manual_seed(3)
    model = build_model("resnet18", "hard_sharing", [2, 2, 2], width_mult=0.125).double().eval()
    x = torch.randn(12, 3, 16, 16, dtype=torch.float64)
    ys = [torch.randint(0, 2, (12,)) for _ in range(3)]
    loss = nn.CrossEntropyLoss()
    problem = _problem(x, 3, task_loss=lambda t, o, y: loss(o, y))
    problem.train = Split(x, ys)
    mods = shared_modules(model)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    rng = torch.get_rng_state()
    res = measure_conflicts(model, problem, batch_size=4)
    assert not model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert all(p.grad is None for p in model.parameters())

    expected = {m.name: 0 for m in mods}
    model.train()
    for a in range(0, 12, 4):
        out = model(x[a:a + 4])
        grads = []
        for t in range(3):
            model.zero_grad(set_to_none=True)
            loss(out[t], ys[t][a:a + 4]).backward(retain_graph=True)
            grads.append([torch.cat([p.grad.flatten() for p in m.params]) for m in mods])
        for k, m in enumerate(mods):
            for i, j in [(0, 1), (0, 2), (1, 2)]:
                expected[m.name] += int(torch.dot(grads[i][k], grads[j][k]) < 0)
    assert res["negative"] == expected
    assert res["batches"] == 3


def test_batch_conflicts_batched_equals_loop():
    model = SignedModel(sa=[1.0, -1.0, 2.0], sb=[1.0, 1.0, -1.0])
    x = torch.rand(5, 1)
    mods = [SharedModule("A", (model.A.weight,)), SharedModule("B", (model.B.weight,))]
    losses = torch.stack([o.mean() for o in model.forward_all(x)])
    a = batch_conflicts(losses, mods, batched=True)
    b = batch_conflicts(losses, mods, batched=False)
    assert all(torch.equal(u, v) for u, v in zip(a[:2], b[:2])) and torch.allclose(a[2], b[2])


def test_conflict_table_has_the_shape_of_conal_table1():
    res = {"modules": ["stem", "layer1"], "ratio": {"stem": 59.256, "layer1": 0.0}}
    text = conflict_table([("HPS", res)])
    lines = text.splitlines()
    assert lines[0].split("|")[1:4] == [" Module   ", " f_S^1 (stem)   ", " f_S^2 (layer1)   "]
    assert "| HPS      | 59.26          | 0.00             |" == lines[2]


def test_cli_on_tiny_nyuv2_hps(capsys, tmp_path):
    """The verb on the tiny NYUv2 HPS run (std3): per-module ratios; a checkpoint is loaded (the
    seed-1 initialisation read from a checkpoint equals measuring seed 1 directly)."""
    from mtlrepro.cli.main import main

    base = ["conflicts", "etr_nlp/table5/hard_sharing", "--profile", "tiny", "--set", "task_set=std3",
            "--max-batches", "1", "--json"]
    assert main(base + ["--seed", "1"]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert direct["task_names"] == ["segmentation", "depth", "normals"]
    assert direct["modules"] == ["enc1", "enc2", "enc3", "enc4", "enc5", "dec1", "dec2", "dec3", "dec4", "dec5"]
    assert all(v in (0.0, pytest.approx(100 / 3), pytest.approx(200 / 3), 100.0) for v in direct["ratio"].values())
    assert "initialisation" in direct["model_state"]

    torch.manual_seed(1)
    from mtlrepro.profiles import apply_profile
    from mtlrepro.recipe import get_recipe
    r = apply_profile(get_recipe("etr_nlp/table5/hard_sharing").with_overrides(task_set="std3"), "tiny")
    model = build_model(r.backbone, r.sharing, [13, 1, 3], **r.model_kwargs())
    torch.save({"model": model.state_dict(), "epochs": [{}]}, tmp_path / "ckpt.pt")
    assert main(base + ["--seed", "0", "--checkpoint", str(tmp_path / "ckpt.pt")]) == 0
    loaded = json.loads(capsys.readouterr().out)
    assert loaded["negative"] == direct["negative"]
    assert loaded["mean_cosine"] == pytest.approx(direct["mean_cosine"], rel=1e-5)
    assert "checkpoint" in loaded["model_state"]

    assert main(base[:-1]) == 0   # the table
    text = capsys.readouterr().out
    assert "| HPS " in text and "f_S^10 (dec5)" in text
