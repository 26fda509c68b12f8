"""CoNAL Table 4's partially-specific ablation: CoNAL's bilevel updates on LTB's supergraph."""
import dataclasses

import torch

from mtlrepro.models import build_model
from mtlrepro.profiles import apply_profile
from mtlrepro.recipe import get_recipe
from mtlrepro.search.conal_ablations import CoNALPartialSearch
from mtlrepro.train.trainer import train_run

from ..harness_utils import tiny_env  # noqa: F401 (fixture)


def _bound(model):
    method = CoNALPartialSearch(2, arch_lr=0.1, warmup_epochs=0, tau0=1.0)
    assert method.model_parameters_it_steps(model) == list(model.arch_parameters())
    x, ys = torch.randn(4, 3, 32, 32), [torch.randn(4, 2), torch.randn(4, 2)]
    method.bind_training(lambda t, o, y: ((o - y) ** 2).mean())
    method.bind_validation(lambda: (x, ys))
    method.on_epoch_start(0)
    return method, x, ys


def test_the_architecture_step_moves_only_the_logits_and_the_weight_step_never_does():
    torch.manual_seed(0)
    sup = build_model("resnet18", "ltb_supernet", [2, 2])
    method, x, ys = _bound(sup)
    before = {n: p.detach().clone() for n, p in sup.named_parameters()}
    method.before_step(sup)
    assert {n for n, p in sup.named_parameters() if not torch.equal(p, before[n])} == {"alpha"}
    losses = torch.stack([((o - y) ** 2).mean() for o, y in zip(sup(x), ys)])
    method.backward(losses, sup)
    assert sup.alpha.grad is None
    assert all(p.grad is not None for n, p in sup.named_parameters() if n.startswith("heads"))


def test_the_ablation_search_runs_through_the_harness_and_exports_a_tree(tmp_path, tiny_env):
    r = dataclasses.replace(apply_profile(get_recipe("conal/table4/search_wo_conflict_notice_and_pure"), "tiny"),
                            backbone="resnet18", head=None, dataset="celeba", task_set="conal9", image_size=32,
                            max_steps_per_epoch=1, epochs=1)
    rec = train_run(r, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    arch = rec.artifacts["architecture"]
    assert rec.status == "finished" and arch["n_tasks"] == 9 and len(arch["groups"]) == 5
