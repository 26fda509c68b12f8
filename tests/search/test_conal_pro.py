"""CoNAL-Pro (Sec. 2.4): the stage logic of ``conal_pro_supernet``, each stage's one-hot forward
against the ``branched`` model of its partial tree, Eq. 5 on the module under decision, resume
mid-stage, a tiny search through the harness and the CelebA-9 parameter counts."""
from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import pytest
import torch
import yaml

from mtlrepro.methods import build_weighting
from mtlrepro.models import build_model, count_parameters
from mtlrepro.models.sharing.conal_pro_supernet import OWN, SHARED
from mtlrepro.search.architecture import BranchedArchitecture

from ..harness_utils import tiny_env  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
M = 5   # ResNet branch modules: stem, layer1..layer4


def choose(model, stage: int, shared: set[int]) -> None:
    """One-hot logits for ``stage``: tasks in ``shared`` pick the shared module, the others their own."""
    with torch.no_grad():
        a = model.alpha[stage]
        a.fill_(-1e9)
        for t in range(model.n_tasks):
            a[t, SHARED if t in shared else OWN] = 0.0


def all_of(n: int) -> list[list[int]]:
    return [list(range(n))]


def test_tasks_choosing_shared_leave_and_the_tree_has_their_subgroups():
    sup = build_model("resnet18", "conal_pro_supernet", [1] * 5)
    assert sup.stage_state() == (0, [-1] * 5) and sup.module_under_decision() == M - 1
    choose(sup, 0, {0, 2})
    sup.advance_to(1)
    assert sup.stage_state() == (1, [0, -1, 0, -1, -1]) and sup.searching_tasks() == [1, 3, 4]
    choose(sup, 1, {1, 4})
    sup.advance_to(2)
    sup.advance_to(1)                                   # never goes back
    assert sup.searching_tasks() == [3] and sup.module_under_decision() == 2
    choose(sup, 2, set())                               # task 3 keeps its own layer2..layer4: the search ran out
    d = sup.export_architecture()
    assert d["groups"] == [all_of(5), all_of(5), [[0, 1, 2, 4], [3]], [[0, 1, 2, 4], [3]],
                           [[0, 2], [1, 4], [3]]]
    assert d["subgroups"] == [[0, 2], [1, 4]] and d["separate"] == [3] and d["complete"] is False
    assert [(s["stage"], s["module"], s["searching"], s["shared"]) for s in d["stages"]] == [
        (1, "layer4", [0, 1, 2, 3, 4], [0, 2]), (2, "layer3", [1, 3, 4], [1, 4]), (3, "layer2", [3], [])]
    assert d["sources"][4] == ["encoder", "chains.1", "own.3"]
    choose(sup, 2, {3})                                 # task 3 branches after layer2 instead
    d = sup.export_architecture()
    assert d["groups"][2] == all_of(5) and d["subgroups"] == [[0, 2], [1, 4], [3]] and d["complete"] is True
    choose(sup, 2, set())
    sup.advance_to(3)
    choose(sup, 3, set())                               # (alpha starts tied: a tie picks shared)
    sup.advance_to(99)                                  # capped at the last stage (module 0)
    assert sup.stage_state() == (M - 1, [0, 1, 0, -1, 1])
    assert sup.export_architecture()["groups"][0] == all_of(5)   # tied stage-5 logits: shared
    choose(sup, 4, set())
    d = sup.export_architecture()                       # still own at the stem: a separate network
    assert d["groups"][0] == [[0, 1, 2, 4], [3]] and d["complete"] is True and len(d["stages"]) == M
    BranchedArchitecture.from_dict(d)


def copy_into_branched(sup, arch: dict, dims: list[int]):
    br = build_model("resnet18", "branched", dims, architecture={k: arch[k] for k in ("n_tasks", "groups")}).double()
    for k, names in enumerate(arch["sources"]):
        for i, name in enumerate(names):
            br.blocks[k][i].branch_module(k).load_state_dict(sup.get_submodule(name).branch_module(k).state_dict())
    br.heads.load_state_dict(sup.heads.state_dict())
    return br


# per stage, the tasks (still searching) that choose the shared module
PLAN = [{1}, {0, 3}, set(), set(), set()]


def test_each_stage_with_one_hot_choices_is_the_branched_model_of_its_partial_tree():
    dims = [2, 3, 1, 2]
    torch.manual_seed(0)
    sup = build_model("resnet18", "conal_pro_supernet", dims).double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    for s, shared in enumerate(PLAN):
        sup.advance_to(s)
        choose(sup, s, shared)
        arch = sup.export_architecture()
        br = copy_into_branched(sup, arch, dims)
        for mode in ("eval", "train"):
            getattr(sup, mode)(), getattr(br, mode)()
            for a, b in zip(sup(x), br(x)):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        sup.eval()
        t = sup.searching_tasks()[0]
        with torch.no_grad():
            current = sup(x)[t]
            sup.alpha[s][t] = sup.alpha[s][t].flip(0)    # the other choice
            other = sup(x)[t]
            sup.alpha[s][t] = torch.tensor([0.3, -0.2], dtype=torch.float64)   # a soft choice
            mixed = sup(x)[t]
        a_sh, a_own = (current, other) if t in shared else (other, current)
        p = torch.softmax(sup.alpha[s][t].detach(), -1)      # the convex mix (global pool + linear head)
        torch.testing.assert_close(mixed, p[SHARED] * a_sh + p[OWN] * a_own, rtol=1e-10, atol=1e-10)
        assert not torch.allclose(a_sh, a_own)
        choose(sup, s, shared)
    assert sup.export_architecture()["groups"] == [[[0, 1, 3], [2]]] * 4 + [[[0, 3], [1], [2]]]


def test_eq5_on_the_module_under_decision_and_only_the_searching_tasks_train():
    torch.manual_seed(0)
    sup = build_model("resnet18", "conal_pro_supernet", [1, 1, 1]).double()
    choose(sup, 0, {0})
    sup.advance_to(1)                                   # task 0 left; 1, 2 decide layer3
    w = build_weighting("conal_pro_search", 3, epochs_per_stage=1)
    w.model_parameters_it_steps(sup)
    w.on_epoch_start(1)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    y = torch.randn(4, 1, dtype=torch.float64)

    def run(targets):
        sup.zero_grad(set_to_none=True)
        outs = sup(x)
        return w.backward(torch.stack([((o - t) ** 2).mean() for o, t in zip(outs, targets)]), sup)

    logs = run([y, y, -y])      # tasks 1 and 2 pull apart: their layer3 gradients conflict
    assert logs["frozen"].item() == 1.0 and logs["stage"].item() == 2.0 and logs["searching"].item() == 2.0
    assert all(p.grad is None for p in sup.encoder.layer3.parameters())
    assert all(p.grad is None for p in sup.chains[1].parameters())          # H_1 = layer4 of the group
    assert all(p.grad is not None for p in sup.encoder.layer2.parameters())  # earlier modules: not checked
    assert all(p.grad is None for p in [*sup.heads[0].parameters(), *sup.encoder.layer4.parameters(),
                                        *sup.own[1].layer2.parameters(), *sup.chains[2].parameters()])
    assert all(p.grad is not None for p in [*sup.own[1].layer3.parameters(), *sup.own[2].layer4.parameters()])
    assert logs["task_weights"].tolist() == [0.0, 1.0, 1.0]
    logs = run([y, y, y])
    assert logs["frozen"].item() == 0.0 and all(p.grad is not None for p in sup.encoder.layer3.parameters())
    w2 = build_weighting("conal_pro_search", 3, epochs_per_stage=1, train_allocated=True)
    w2.model_parameters_it_steps(sup)
    w2.on_epoch_start(1)
    sup.zero_grad(set_to_none=True)
    outs = sup(x)
    logs = w2.backward(torch.stack([((o - t) ** 2).mean() for o, t in zip(outs, [y, y, -y])]), sup)
    assert logs["task_weights"].tolist() == [1.0, 1.0, 1.0]
    assert all(p.grad is not None for p in sup.encoder.layer4.parameters())  # task 0's branch trains
    assert all(p.grad is not None for p in sup.encoder.layer3.parameters())  # ... through layer3 too


def test_the_schedule_and_the_architecture_step_move_only_the_current_stage():
    torch.manual_seed(0)
    sup = build_model("resnet18", "conal_pro_supernet", [1, 1])
    w = build_weighting("conal_pro_search", 2, arch_lr=0.1)     # 2 epochs per stage (default)
    assert w.model_parameters_it_steps(sup) == list(sup.alpha)
    x, ys = torch.randn(4, 3, 32, 32), [torch.randn(4, 1), torch.randn(4, 1)]
    w.bind_training(lambda t, o, y: ((o - y) ** 2).mean())
    w.bind_validation(lambda: (x, ys))
    choose(sup, 0, set())
    choose(sup, 1, set())                               # (tied logits would send both to shared)
    stages = []
    for epoch in range(5):
        w.on_epoch_start(epoch)
        stages.append(sup.stage_state()[0])
    assert stages == [0, 0, 1, 1, 2]
    before = {n: p.detach().clone() for n, p in sup.named_parameters()}
    w.before_step(sup)
    moved = {n for n, p in sup.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"alpha.2"} and all(p.grad is None for p in sup.parameters())
    with pytest.raises(ValueError, match="conal_pro_supernet"):
        w.model_parameters_it_steps(build_model("resnet18", "conal_supernet", [1, 1]))


def test_the_stage_state_survives_a_state_dict_round_trip():
    torch.manual_seed(0)
    sup = build_model("resnet18", "conal_pro_supernet", [1, 1, 1])
    choose(sup, 0, {1})
    sup.advance_to(1)
    choose(sup, 1, {0})
    fresh = build_model("resnet18", "conal_pro_supernet", [1, 1, 1])
    assert fresh.stage_state() == (0, [-1, -1, -1])      # cached before the load: the load must refresh it
    fresh.load_state_dict(sup.state_dict())
    assert fresh.stage_state() == (1, [-1, 0, -1]) and fresh.searching_tasks() == [0, 2]
    assert fresh.export_architecture() == sup.export_architecture()


def _tiny(**kw):
    from mtlrepro.profiles import apply_profile
    from mtlrepro.recipe import get_recipe
    base = apply_profile(get_recipe("methods/celeba_group8/conal_search"), "tiny")
    return dataclasses.replace(base, id="methods/celeba_group8/conal_pro_test", row="conal_pro_test",
                               sharing="conal_pro_supernet", weighting="conal_pro_search",
                               max_steps_per_epoch=1, **kw)


@pytest.mark.slow
def test_a_tiny_search_on_celeba9_runs_every_stage_and_exports_a_tree(tmp_path, tiny_env):
    from mtlrepro.train.trainer import train_run
    recipe = _tiny(task_set="conal9", epochs=M, weighting_kwargs={"epochs_per_stage": 1})
    record = train_run(recipe, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    assert record.status == "finished" and all(math.isfinite(e.train_loss) for e in record.epochs)
    assert [e.weighting_logs["stage"] for e in record.epochs] == [1.0, 2.0, 3.0, 4.0, 5.0]
    searching = [e.weighting_logs["searching"] for e in record.epochs]
    assert searching[0] == 9.0 and searching == sorted(searching, reverse=True)
    arch = record.artifacts["architecture"]
    tree = BranchedArchitecture.from_dict(arch)
    assert tree.n_tasks == 9 and arch["method"] == "conal_pro" and arch["complete"] is True
    assert sorted([*(t for g in arch["subgroups"] for t in g), *arch["separate"]]) == list(range(9))
    for st in arch["stages"]:                          # a subgroup is the tasks that chose shared at its stage
        assert set(st["shared"]) <= set(st["searching"])
    retrain = build_model("resnet18", "branched", [1] * 9, architecture={k: arch[k] for k in ("n_tasks", "groups")})
    assert [tuple(o.shape) for o in retrain(torch.randn(2, 3, 32, 32))] == [(2, 1)] * 9


@pytest.mark.slow
def test_a_search_resumed_mid_stage_equals_the_uninterrupted_one(tmp_path, tiny_env):
    from mtlrepro.train.trainer import checkpoint_path, load_checkpoint, train_run
    recipe = _tiny(task_set="gated3", epochs=4, weighting_kwargs={"epochs_per_stage": 2})
    whole = train_run(recipe, 0, "tiny", results_root=tmp_path / "a", progress=False, device="cpu")
    assert train_run(recipe, 0, "tiny", results_root=tmp_path / "b", progress=False, device="cpu",
                     stop_after_epochs=3) is None      # stopped in stage 2 (epochs 3-4)
    ckpt = load_checkpoint(checkpoint_path("tiny", recipe.fingerprint, 0, "cpu", tmp_path / "b"))
    assert int(ckpt["model"]["stage"]) == 1
    resumed = train_run(recipe, 0, "tiny", results_root=tmp_path / "b", progress=False, device="cpu")
    assert [e.weighting_logs["stage"] for e in resumed.epochs] == [1.0, 1.0, 2.0, 2.0]
    assert resumed.artifacts["architecture"] == whole.artifacts["architecture"]
    assert resumed.final == whole.final


def test_resnet50_dilated_stages_forward_and_export():
    torch.manual_seed(0)
    sup = build_model("resnet50_dilated", "conal_pro_supernet", [13, 1]).eval()
    choose(sup, 0, set())
    sup.advance_to(1)
    choose(sup, 1, {1})                                 # task 1 branches after layer3, task 0 owns layer3, layer4
    arch = sup.export_architecture()
    assert arch["groups"] == [[[0, 1]]] * 3 + [[[0], [1]]] * 2 and arch["complete"] is False
    assert arch["sources"][3:] == [["own.0", "encoder"], ["own.0", "chains.1"]]
    br = build_model("resnet50_dilated", "branched", [13, 1], architecture={k: arch[k] for k in ("n_tasks", "groups")})
    for k, names in enumerate(arch["sources"]):
        for i, name in enumerate(names):
            br.blocks[k][i].branch_module(k).load_state_dict(sup.get_submodule(name).branch_module(k).state_dict())
    br.heads.load_state_dict(sup.heads.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        outs, ref = sup(x), br.eval()(x)
    assert [tuple(o.shape) for o in outs] == [(1, 13, 32, 32), (1, 1, 32, 32)]
    for a, b in zip(outs, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- CelebA-9 parameter counts
def printed_params(key: str) -> float:
    d = yaml.safe_load((ROOT / "reproduce" / "conal" / "table6.yaml").read_text())
    (r,) = [r for r in d["rows"] if r["key"] == key]
    return float(r["cells"]["params"])


def tree_count(module_sizes: list[int], heads: int, nonempty: tuple[int, ...], n_separate: int) -> int:
    """A CoNAL-Pro tree's parameters from its shape: subgroup ``r`` (``nonempty[r]``) shares the
    trunk up to module ``M-1-r`` and one copy of each later module; separate tasks own everything."""
    copies = [int(any(nonempty[r] and M - r > k for r in range(M)))
              + sum(1 for r in range(M) if nonempty[r] and M - r <= k) + n_separate for k in range(M)]
    return heads + sum(c * n for c, n in zip(copies, module_sizes))


def test_celeba9_tree_closest_to_the_printed_count():
    """Of every CoNAL-Pro tree shape for 9 tasks on this repo's ResNet-18 (+ 9 Linear(512, 1)
    heads), the closest to the printed 30.58M has subgroups branching after layer4 (fully shared),
    after layer3 and after layer1: copies (1, 1, 2, 2, 3) = 30,593,865 (30.59M)."""
    hps = build_model("resnet18", "hard_sharing", [1] * 9)
    sizes = [count_parameters(hps.encoder.branch_module(k).parameters()) for k in range(M)]
    heads = count_parameters(hps.parameters()) - sum(sizes)
    shapes = [(pat, n) for pat in itertools.product([0, 1], repeat=M) for n in range(10)
              if 0 < sum(pat) + n <= 9 and (sum(pat) or n == 9)]
    best = min(shapes, key=lambda s: abs(tree_count(sizes, heads, *s) - printed_params("conal_pro") * 1e6))
    assert best == ((1, 1, 0, 1, 0), 0)
    # that tree through the search space: 4 tasks stay shared, 2 leave at layer3, 3 at layer1
    sup = build_model("resnet18", "conal_pro_supernet", [1] * 9)
    for s, shared in enumerate([{0, 1, 2, 3}, {4, 5}, set(), {6, 7, 8}]):
        sup.advance_to(s)
        choose(sup, s, shared)
    arch = sup.export_architecture()
    assert arch["subgroups"] == [[0, 1, 2, 3], [4, 5], [6, 7, 8]] and arch["complete"] is True
    del sup
    n = count_parameters(build_model("resnet18", "branched", [1] * 9, architecture=arch).parameters())
    assert n == tree_count(sizes, heads, *best) == 30_593_865
    assert abs(n / 1e6 - printed_params("conal_pro")) / printed_params("conal_pro") < 0.001
