"""GatedMTL: the hard gate and its straight-through gradient, Eq. 2-3 on hand-made streams, the
sparsity losses (Eq. 4 and the L1 form), STL initialisation, and pruning that preserves outputs."""
from __future__ import annotations

import pytest
import torch

from mtlrepro.complexity import count
from mtlrepro.models import build_model
from mtlrepro.models.gated.gates import GateMix, hard_gate, sparsity_loss
from mtlrepro.models.gated.patterns import apply_gating, export_gating, gating_patterns
from mtlrepro.models.gated.prune import live_channels, prune

D = torch.float64


def test_the_hard_gate_is_binary_forward_and_identity_backward():
    alpha = torch.tensor([-2.0, -0.1, 0.0, 1e-6, 0.3, 5.0], dtype=D, requires_grad=True)
    g = hard_gate(alpha)
    assert g.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]          # sigmoid(0) = 0.5 is not > 0.5
    w = torch.arange(1.0, 7.0, dtype=D)
    (w * g).sum().backward()
    s = torch.sigmoid(alpha.detach())
    torch.testing.assert_close(alpha.grad, w * s * (1 - s), rtol=1e-12, atol=0)   # dG/dsigmoid = 1


def test_gate_mix_is_eq2_and_eq3_on_hand_made_streams():
    mix = GateMix(n_tasks=2, channels=3).to(D)
    with torch.no_grad():
        mix.alpha.copy_(torch.tensor([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]]))
        mix.beta.copy_(torch.tensor([[0.0, 0.0], [0.0, torch.log(torch.tensor(3.0))], [2.0, 0.0]]))
    mix.eval()
    psi = torch.tensor([10.0, 20.0, 30.0], dtype=D)
    phi1, phi2 = torch.tensor([1.0, 2.0, 3.0], dtype=D), torch.tensor([4.0, 5.0, 6.0], dtype=D)
    out = mix(torch.stack([psi, phi1, phi2]).view(3, 1, 3, 1, 1)).view(3, 3)
    sel1 = torch.tensor([1.0, 20.0, 3.0], dtype=D)     # gates (1, 0, 1): own, shared, own
    sel2 = torch.tensor([10.0, 20.0, 6.0], dtype=D)    # gates (0, 0, 1)
    e2 = torch.exp(torch.tensor(2.0, dtype=D))
    w1 = torch.tensor([0.5, 0.25, e2 / (e2 + 1)], dtype=D)   # softmax over tasks per channel
    torch.testing.assert_close(out[1], sel1)
    torch.testing.assert_close(out[2], sel2)
    torch.testing.assert_close(out[0], w1 * sel1 + (1 - w1) * sel2)


def _mixes(shares: list[list[float]]) -> list[GateMix]:
    """One layer per entry; task t's gates all at sigmoid = shares[l][t]."""
    out = []
    for row in shares:
        m = GateMix(len(row), 4).to(D)
        with torch.no_grad():
            m.alpha.copy_(torch.logit(torch.tensor(row, dtype=D))[:, None].expand(-1, 4))
        out.append(m)
    return out


def test_the_hinge_is_zero_below_the_target_and_linear_above():
    mixes = _mixes([[0.2, 0.9], [0.4, 0.7]])            # m = (0.3, 0.8)
    assert sparsity_loss(mixes, "hinge", [0.5, 0.9]).item() == 0.0
    loss = sparsity_loss(mixes, "hinge", [0.5, 0.5])
    assert loss.item() == pytest.approx((0.8 - 0.5) / 2, abs=1e-12)
    loss.backward()
    assert mixes[0].alpha.grad[0].abs().sum().item() == 0.0          # task 0 is below its target
    s = 0.9   # d/dalpha of 1/T * (1/L sum_l mean_c sigmoid) = sigmoid' / (T L C)
    assert mixes[0].alpha.grad[1, 0].item() == pytest.approx(s * (1 - s) / (2 * 2 * 4), abs=1e-12)
    shifted = sparsity_loss(mixes, "hinge", [0.5, 0.4])               # slope 1/T in the target
    assert shifted.item() - loss.item() == pytest.approx(0.1 / 2, abs=1e-12)


def test_l1_none_and_the_summed_form():
    mixes = _mixes([[0.2, 0.9], [0.4, 0.7]])
    assert sparsity_loss(mixes, "l1").item() == pytest.approx((0.3 + 0.8) / 2, abs=1e-12)
    assert sparsity_loss(mixes, "none").item() == 0.0
    assert sparsity_loss(mixes, "hinge", 0.5, reduce="sum").item() == pytest.approx(4 * 0.3 / 2, abs=1e-12)
    with pytest.raises(ValueError, match="sparsity must be one of"):
        sparsity_loss(mixes, "l2")


def _random_gates(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.gate_mixes():
            m.alpha.copy_(torch.randn(m.alpha.shape, generator=g, dtype=m.alpha.dtype))
            m.beta.copy_(torch.randn(m.beta.shape, generator=g, dtype=m.beta.dtype))


@pytest.mark.parametrize("backbone,out_dims,shape,kw", [
    ("resnet20", [1, 1, 1], (3, 32, 32), {"width_mult": 0.5}),
    ("resnet18_dilated", [5, 1, 3], (3, 32, 32), {"head": "aspp", "width_mult": 0.25}),
])
def test_pruning_preserves_the_outputs_and_removes_parameters(backbone, out_dims, shape, kw):
    torch.manual_seed(0)
    model = build_model(backbone, "gatedmtl", out_dims, **kw).to(D)
    model.train()
    model(torch.rand(4, *shape, dtype=D))          # BN running statistics away from 0 / 1
    _random_gates(model)
    model.eval()
    static = prune(model, shape)
    x = torch.rand(3, *shape, dtype=D)
    with torch.no_grad():
        for a, b in zip(model(x), static(x)):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
    n_gated = sum(p.numel() for p in model.parameters())
    n_static = sum(p.numel() for p in static.parameters())
    assert n_static < n_gated


def test_all_shared_gates_prune_every_task_conv_that_only_feeds_a_gate():
    """Gates all 0: a task's conv whose output is read by the next gate only (a block's conv1) is
    gone; the shared branch's last conv feeds nothing and is gone."""
    torch.manual_seed(0)
    model = build_model("resnet20", "gatedmtl", [1, 1], width_mult=0.25).to(D)
    with torch.no_grad():
        for m in model.gate_mixes():
            m.alpha.fill_(-3.0)
    live = live_channels(model, (3, 32, 32))
    units = model.gated_units()
    for u, lv in zip(units, live):
        if u.spec.role == "conv1":
            assert not lv[1:].any(), u.spec
    assert not live[-1][0].any()                     # the shared stream's last conv
    assert live[-1][1:].all()                        # the tasks' last convs reach the heads


def test_stored_gates_rebuild_the_same_pruned_network():
    torch.manual_seed(0)
    a = build_model("resnet20", "gatedmtl", [1, 1, 1], width_mult=0.25)
    _random_gates(a, seed=3)
    gating = export_gating(a)
    torch.manual_seed(1)
    b = build_model("resnet20", "gatedmtl", [1, 1, 1], width_mult=0.25)
    apply_gating(b, gating)
    ca, cb = count(prune(a, (3, 32, 32)), (3, 32, 32)), count(prune(b, (3, 32, 32)), (3, 32, 32))
    assert (ca.flops, ca.params_total) == (cb.flops, cb.params_total)
    assert ca.flops < count(a, (3, 32, 32)).flops
    rows = gating_patterns(gating, ["gender", "age", "clothes"])
    first = gating["units"][0]
    assert rows[0]["selected"]["age"] == first["gates"][1].count("1") / first["channels"]


def test_task_branches_start_from_the_stl_networks():
    torch.manual_seed(0)
    stl = build_model("resnet20", "single_task", [1, 1], width_mult=0.25)
    gated = build_model("resnet20", "gatedmtl", [1, 1], width_mult=0.25)
    gated.load_task_branches(stl)
    for t in range(2):
        for g, u in zip(gated.encoder.units(), stl.units(t)):
            assert torch.equal(g.tasks[t][0].weight, u[0].weight)
        assert torch.equal(gated.heads[t].weight if hasattr(gated.heads[t], "weight") else
                           next(gated.heads[t].parameters()), next(stl.heads[t].parameters()))
    with torch.no_grad():   # every gate task-specific: the gated model computes the STL networks
        for m in gated.gate_mixes():
            m.alpha.fill_(3.0)
    x = torch.rand(2, 3, 32, 32)
    gated.eval(), stl.eval()
    with torch.no_grad():
        for t, out in enumerate(gated(x)):
            torch.testing.assert_close(out, stl(x, task=t), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="single_task"):
        gated.load_task_branches(build_model("resnet20", "hard_sharing", [1, 1], width_mult=0.25))


def test_the_gates_have_their_own_sgd_and_the_sparsity_term_reaches_them():
    from mtlrepro.train.optim import CompositeOptimizer, with_gate_optimizer
    torch.manual_seed(0)
    model = build_model("resnet20", "gatedmtl", [1, 1], width_mult=0.25, lambda_s=0.1, tau=0.0)
    main = torch.optim.Adam([p for p in model.parameters() if all(p is not q for q in model.gate_parameters())])
    opt = with_gate_optimizer(main, model)
    assert isinstance(opt, CompositeOptimizer) and opt.optimizers[1].param_groups[0]["lr"] == 0.1
    before = [p.detach().clone() for p in model.gate_parameters()]
    opt.zero_grad()
    model.regularization_loss().backward()
    opt.step()
    alpha0 = model.gate_mixes()[0].alpha
    assert (alpha0 < before[0]).all()                # toward sharing
    assert build_model("resnet20", "gatedmtl", [1, 1], width_mult=0.25).regularization_loss() is None


def test_all_task_specific_gates_prune_to_exactly_the_stl_networks():
    """Every gate 1: nothing reads the shared branch, so the pruned network is the T single-task
    networks (parameters and MACs of ``single_task`` for every task)."""
    torch.manual_seed(0)
    gated = build_model("resnet20", "gatedmtl", [1, 1, 1], width_mult=0.5)
    with torch.no_grad():
        for m in gated.gate_mixes():
            m.alpha.fill_(3.0)
    pruned = count(prune(gated, (3, 32, 32)), (3, 32, 32))
    stl = count(build_model("resnet20", "single_task", [1, 1, 1], width_mult=0.5), (3, 32, 32))
    assert pruned.params_total == stl.params_total
    assert pruned.flops_conv == stl.flops_conv_all_tasks


VIT = {"timm_kwargs": {"embed_dim": 32, "depth": 12, "num_heads": 2}}


def test_a_gated_vit_prunes_to_the_same_outputs():
    """Appendix E: output gates on the patch embedding and every block's q/k/v, projection and FFN
    linears; the pruned ViT (task rows whose gate is 1, shared rows some task reads) computes the same."""
    torch.manual_seed(0)
    model = build_model("dpt_vits", "gatedmtl", [5, 1, 3], **VIT).to(D)
    assert len(model.gate_mixes()) == 1 + 4 * 12
    _random_gates(model, seed=2)
    model.eval()
    static = prune(model, (3, 32, 32))
    x = torch.rand(2, 3, 32, 32, dtype=D)
    with torch.no_grad():
        for a, b in zip(model(x), static(x)):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
    qkv = model.gate_mixes()[1]
    g = qkv.gates().bool()
    kept = dict(static.encoder.blocks[0].attn.qkv.named_buffers())
    assert len(kept["rows0"]) == int((~g.all(0)).sum())            # shared rows: some task reads them
    assert [len(kept[f"rows{k + 1}"]) for k in range(3)] == g.sum(1).tolist()


def test_a_gated_vit_with_every_gate_task_specific_is_the_stl_networks():
    torch.manual_seed(0)
    stl = build_model("dpt_vits", "single_task", [5, 1, 3], **VIT).to(D)
    with torch.no_grad():   # GatedMTL keeps one class token and position embedding (shared): make the STL's equal
        for net in stl.nets[1:]:
            net.cls_token.copy_(stl.nets[0].cls_token)
            net.pos_embed.copy_(stl.nets[0].pos_embed)
    gated = build_model("dpt_vits", "gatedmtl", [5, 1, 3], **VIT).to(D)
    gated.load_task_branches(stl)
    with torch.no_grad():
        gated.encoder.cls_token.copy_(stl.nets[0].cls_token)
        gated.encoder.pos_embed.copy_(stl.nets[0].pos_embed)
        for m in gated.gate_mixes():
            m.alpha.fill_(3.0)
    gated.eval(), stl.eval()
    x = torch.rand(2, 3, 32, 32, dtype=D)
    with torch.no_grad():
        for t, out in enumerate(gated(x)):
            torch.testing.assert_close(out, stl(x, task=t), rtol=0, atol=1e-10)
