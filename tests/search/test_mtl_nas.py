"""MTL-NAS (Gao et al., CVPR 2020): the supernet ``mtl_nas_supernet`` against the ``mtl_nas``
networks it discretises to, its connectivity phases and entropy, the search method's schedules and
two steps (``mtl_nas_search``), a tiny search through the harness, and the full-size parameter
counts against CoNAL's printed MTL-NAS ones."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml

from mtlrepro.methods import build_weighting
from mtlrepro.models import build_model, count_parameters
from mtlrepro.models.sharing.mtl_nas import candidate_edges, fusion_params
from mtlrepro.search.mtl_nas import poly

from ..harness_utils import tiny_env  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
R50 = (64, 256, 512, 1024, 2048)   # dilated ResNet-50's fusion points: stem, layer1..layer4


def set_edges(sup, edges) -> None:
    """alpha = +3 on ``edges``, -3 elsewhere (so sigma is 0.95 / 0.05 and the hard choice is ``edges``)."""
    on = {tuple(e) for e in edges}
    with torch.no_grad():
        sup.alpha.copy_(torch.tensor([3.0 if e in on else -3.0 for e in sup.edges], dtype=sup.alpha.dtype))


def test_the_search_space_is_every_same_or_earlier_point_of_the_other_tasks():
    assert len(candidate_edges(2, 5)) == 2 * (1 + 2 + 3 + 4 + 5)
    assert len(candidate_edges(3, 5)) == 3 * 2 * 15
    assert candidate_edges(2, 2) == [(0, 0, 1, 0), (0, 1, 1, 0), (0, 1, 1, 1), (1, 0, 0, 0), (1, 1, 0, 0), (1, 1, 0, 1)]
    # the authors' depth limit (i - j < 3): at most three source points per source task
    assert {(t, p, u, q) for t, p, u, q in candidate_edges(2, 5, depth_limit=3) if (t, p) == (0, 4)} == \
        {(0, 4, 1, 2), (0, 4, 1, 3), (0, 4, 1, 4)}
    assert all(q == p for _, p, _, q in candidate_edges(3, 5, depth_limit=1))


SPARSE = [(0, 4, 1, 2), (0, 2, 2, 0), (1, 1, 0, 1), (1, 3, 2, 3), (1, 3, 0, 0), (2, 4, 0, 4), (2, 4, 1, 1)]


def cover_all_targets(T: int, P: int) -> list[tuple[int, int, int, int]]:
    """One edge into every target (t, p): from task t+1's point p // 2."""
    return [(t, p, (t + 1) % T, p // 2) for t in range(T) for p in range(P)]


@pytest.mark.parametrize("edges, keep_empty", [(SPARSE, True), (cover_all_targets(3, 5), False)])
@pytest.mark.parametrize("train_mode", [False, True])
def test_supernet_with_hard_edges_is_the_retrained_network_on_the_same_weights(edges, keep_empty, train_mode):
    torch.manual_seed(0)
    dims = [2, 3, 1]
    sup = build_model("resnet18", "mtl_nas_supernet", dims, init_weights=(0.7, 0.6)).double()
    with torch.no_grad():   # make every source block matter (the default (1, 0) start silences them)
        for layer in sup.fusions.values():
            layer.conv.weight.add_(0.05 * torch.randn_like(layer.conv.weight))
    set_edges(sup, edges)
    arch = sup.export_architecture()
    assert arch["kind"] == "mtl_nas" and arch["n_tasks"] == 3 and arch["n_points"] == 5
    assert sorted(map(tuple, arch["edges"])) == sorted(edges)
    net = build_model("resnet18", "mtl_nas", dims, keep_empty_fusion=keep_empty,
                      architecture={k: arch[k] for k in ("kind", "n_tasks", "n_points", "edges")}).double()
    net.inherit_from(sup)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    if train_mode:   # batch statistics; the supernet's training phase set to the hard choice
        sup.train(), net.train()
        sup.set_search_phase("hard")
    else:
        sup.eval(), net.eval()
    for a, b in zip(sup(x), net(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    if not keep_empty:   # only the targets that keep an edge have a layer
        assert set(net.fusions) == {f"t{t}_p{p}" for t, p, _, _ in edges}


def test_the_retrained_network_counts_only_its_edges_and_none_is_every_candidate():
    dims = [2, 3]
    single = count_parameters(build_model("resnet18", "single_task", dims).parameters())
    widths = (64, 64, 128, 256, 512)   # resnet18: stem, layer1..layer4
    edges = [[0, 4, 1, 2], [0, 4, 1, 0], [1, 1, 0, 0]]
    net = build_model("resnet18", "mtl_nas", dims, architecture={"kind": "mtl_nas", "n_tasks": 2,
                                                                   "n_points": 5, "edges": edges})
    assert count_parameters(net.parameters()) == single + fusion_params(512, [128, 64]) + fusion_params(64, [64])
    full = build_model("resnet18", "mtl_nas", dims)
    sup = build_model("resnet18", "mtl_nas_supernet", dims)
    assert count_parameters(full.parameters()) == count_parameters(sup.parameters()) - len(sup.edges)
    assert count_parameters(full.parameters()) == single + sum(
        fusion_params(widths[p], [widths[q] for q in range(p + 1)]) for _ in range(2) for p in range(5))
    with pytest.raises(ValueError, match="search space"):
        build_model("resnet18", "mtl_nas", dims, architecture={"n_tasks": 2, "n_points": 5, "edges": [[0, 1, 1, 2]]})
    with pytest.raises(ValueError, match="fusion points"):
        build_model("resnet18", "mtl_nas", dims, at_stem=False, architecture={"n_tasks": 2, "n_points": 5, "edges": []})


@pytest.mark.parametrize("backbone", ["vgg16", "segnet"])
def test_any_staged_backbone_works_including_upsampling_decoders(backbone):
    torch.manual_seed(0)
    sup = build_model(backbone, "mtl_nas_supernet", [2, 1], depth_limit=4)
    assert sup.n_points == (5 if backbone == "vgg16" else 10)   # no learned stem: stages only
    x = torch.randn(2, 3, 32, 32)
    sup.set_search_phase("gumbel", 0.5)
    outs = sup(x)
    sum(o.sum() for o in outs).backward()
    assert sup.alpha.grad is not None and torch.isfinite(sup.alpha.grad).all()


def test_connectivity_phases_and_the_entropy():
    torch.manual_seed(0)
    sup = build_model("resnet18", "mtl_nas_supernet", [2, 2, 2], alpha_init=0.0)
    with torch.no_grad():
        sup.alpha.copy_(torch.linspace(-2, 2, len(sup.edges)))
    a = sup.alpha.detach()
    sup.train()
    sup.set_search_phase("sigmoid")
    assert torch.equal(sup.edge_weights(), torch.sigmoid(sup.alpha))
    sup.set_search_phase("gumbel", 1e-4)   # near-zero temperature: (almost) hard Bernoulli samples
    w = torch.stack([sup.edge_weights().detach() for _ in range(200)])
    assert ((w < 1e-3) | (w > 1 - 1e-3)).float().mean() > 0.99
    torch.testing.assert_close(w.mean(0), torch.sigmoid(a), atol=0.12, rtol=0)
    sup.set_search_phase("gumbel", 1.0)
    assert torch.autograd.grad(sup.edge_weights().sum(), sup.alpha)[0].abs().sum() > 0
    sup.eval()   # evaluation: the discretised choice, whatever the training phase
    assert torch.equal(sup.edge_weights(), (a > 0).float())
    p = torch.sigmoid(a)
    h = -(p * p.log() + (1 - p) * (1 - p).log())
    task = torch.tensor([e[0] for e in sup.edges])
    torch.testing.assert_close(sup.entropy(), torch.stack([h[task == t].mean() for t in range(3)]).mean())
    with torch.no_grad():
        sup.alpha.zero_()
    torch.testing.assert_close(sup.entropy(), torch.tensor(math.log(2.0)))


def test_the_released_schedules():
    N = 1000
    assert poly(1.0, 0.0, 0, N, (0.0, 1.0), 2.0) == 1.0
    assert poly(1.0, 0.0, 500, N, (0.0, 1.0), 2.0) == pytest.approx(0.25)      # (1 - s/N)^2
    assert poly(0.0, 10.0, 0, N, (0.0, 0.0), 1.0) == 0.0                       # entropy weight: 0 at step 0
    assert poly(0.0, 10.0, 1, N, (0.0, 0.0), 1.0) == 10.0                      # ... then 10
    assert poly(0.0, 10.0, 300, N, (0.2, 0.6), 1.0) == pytest.approx(2.5)      # linear ramp inside the period
    m = build_weighting("mtl_nas_search", 2)
    m.bind_schedule(10, 100)
    assert m.total_steps(None) == 1000
    fixed = build_weighting("mtl_nas_search", 2, schedule_epochs=4)
    assert fixed.total_steps(type("M", (), {"steps_per_epoch": 5})) == 20


def _loss(t, o, y):
    return ((o - y) ** 2).mean()


def test_architecture_step_minimises_the_entropy_and_moves_alpha_only():
    torch.manual_seed(0)
    sup = build_model("resnet18", "mtl_nas_supernet", [2, 2])   # init (1, 0): the outputs ignore the sources
    with torch.no_grad():
        sup.alpha.copy_(0.1 * torch.sign(torch.randn_like(sup.alpha)))
    method = build_weighting("mtl_nas_search", 2, arch_lr=0.01)
    assert method.model_parameters_it_steps(sup) == [sup.alpha]
    method.bind_training(_loss)
    method.bind_schedule(1, 10)
    x, ys = torch.randn(4, 3, 32, 32), [torch.randn(4, 2), torch.randn(4, 2)]
    method.bind_validation(lambda: (x, ys))
    sup.on_train_step(5, 10)
    before = {n: p.detach().clone() for n, p in sup.named_parameters()}
    method.before_step(sup)
    moved = {n for n, p in sup.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"alpha"} and all(p.grad is None for p in sup.parameters())
    # the task losses do not depend on alpha here, so the step is the entropy's: every |alpha| grows
    assert (sup.alpha.abs() > before["alpha"].abs()).all()
    assert sup.phase == "gumbel" and sup.tau == pytest.approx((1 - 5 / 10) ** 2)
    losses = torch.stack([_loss(t, o, y) for t, (o, y) in enumerate(zip(sup(x), ys))])
    logs = method.backward(losses, sup)
    assert sup.alpha.grad is None and sup.nets[0].stem[0].weight.grad is not None
    assert logs["entropy_weight"].item() == 10.0 and logs["edge_probabilities"].shape == (len(sup.edges),)


def test_a_tiny_search_runs_through_the_harness_and_its_edges_retrain(tmp_path, tiny_env):
    from mtlrepro.profiles import apply_profile
    from mtlrepro.recipe import get_recipe
    from mtlrepro.train.trainer import train_run
    base = apply_profile(get_recipe("conal/table3/conal_search"), "tiny")
    recipe = dataclasses.replace(base, id="conal/table3/mtl_nas_search_test", row="mtl_nas_search_test",
                                 sharing="mtl_nas_supernet", weighting="mtl_nas_search", search_val_fraction=0.5,
                                 sharing_kwargs={"depth_limit": 1}, weighting_kwargs={}, max_steps_per_epoch=1)
    record = train_run(recipe, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    assert record.status == "finished" and all(math.isfinite(e.train_loss) for e in record.epochs)
    logs = [e.weighting_logs for e in record.epochs]   # N = 2 epochs x 1 step
    assert [lg["tau"] for lg in logs] == [1.0, pytest.approx(0.25)]
    assert [lg["entropy_weight"] for lg in logs] == [0.0, 10.0]
    arch = record.artifacts["architecture"]
    assert arch["kind"] == "mtl_nas" and arch["n_tasks"] == 3 and arch["n_points"] == 5
    assert len(arch["probabilities"]) == 3 * 2 * 5
    retrain = build_model("resnet50_dilated", "mtl_nas", [13, 1, 3], head="aspp",
                          architecture={k: arch[k] for k in ("kind", "n_tasks", "n_points", "edges")})
    assert len(retrain.edges) == len(arch["edges"])
    retrain.eval()
    with torch.no_grad():
        outs = retrain(torch.randn(1, 3, 32, 32))
    assert [tuple(o.shape[:2]) for o in outs] == [(1, 13), (1, 1), (1, 3)]


def printed_params(table: str) -> float:
    d = yaml.safe_load((ROOT / "reproduce" / "conal" / f"{table}.yaml").read_text())
    (r,) = [r for r in d["rows"] if r["key"] == "mtl_nas"]
    return float(r["cells"]["params"])


# edge sets (t, p, u, q) whose retrained counts round to the printed ones (found by enumeration)
CITY_EDGES = [(1, 1, 0, 0), (1, 2, 0, 0), (1, 3, 0, 1), (1, 4, 0, 3)]
NYU_EDGES = [(0, 3, 1, 3), (0, 4, 1, 2), (0, 4, 1, 3), (0, 4, 1, 4), (0, 4, 2, 3), (0, 4, 2, 4),
             (1, 2, 0, 0), (1, 3, 0, 3), (1, 3, 2, 3), (1, 4, 0, 2), (1, 4, 0, 3), (1, 4, 0, 4),
             (1, 4, 2, 2), (1, 4, 2, 3), (1, 4, 2, 4), (2, 1, 0, 0), (2, 3, 0, 3), (2, 3, 1, 3),
             (2, 4, 0, 0), (2, 4, 0, 2), (2, 4, 0, 3), (2, 4, 0, 4), (2, 4, 1, 2), (2, 4, 1, 3), (2, 4, 1, 4)]


@pytest.mark.parametrize("table, dims, edges", [("table2", [7, 1], CITY_EDGES), ("table3", [13, 1, 3], NYU_EDGES)])
def test_full_size_counts_and_edge_sets_that_reproduce_the_printed_ones(table, dims, edges):
    T = len(dims)
    with torch.device("meta"):   # counts only
        stl = count_parameters(build_model("resnet50_dilated", "single_task", dims, head="aspp").parameters())
        sup = build_model("resnet50_dilated", "mtl_nas_supernet", dims, head="aspp")
        net = build_model("resnet50_dilated", "mtl_nas", dims, head="aspp",
                          architecture={"n_tasks": T, "n_points": 5, "edges": edges})
    full = [fusion_params(R50[p], [R50[q] for q in range(p + 1)] * (T - 1)) for p in range(5)]
    assert count_parameters(sup.parameters()) == stl + T * sum(full) + len(sup.edges)
    by_target: dict = {}
    for t, p, u, q in edges:
        by_target.setdefault((t, p), []).append(R50[q])
    n = count_parameters(net.parameters())
    assert n == stl + sum(fusion_params(R50[p], src) for (t, p), src in by_target.items())
    assert round(n / 1e6, 2) == printed_params(table)
    # which layer4 fusion points an edge set rounding to the printed count must feed (bounds, not a fit):
    target = printed_params(table) * 1e6
    lo, hi = target - 5e3 - stl, target + 5e3 - stl
    cheapest_l4 = fusion_params(R50[4], [R50[0]])
    fed = sum(1 for t in range(T) if (t, 4) in by_target)
    if table == "table2":   # both layer4 points fed cost more than the budget; none fed, the rest is too small
        assert 2 * cheapest_l4 >= hi and T * sum(full) - 2 * full[4] < lo and fed == 1
    else:                   # one layer4 point left out, everything else on, is still too small
        assert T * sum(full) - full[4] < lo and fed == 3
