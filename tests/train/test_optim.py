"""The optimizer's parameter groups and the per-epoch lr schedules (mtlrepro/train/optim.py)."""
from __future__ import annotations

import pickle

import pytest
import torch

from mtlrepro.methods import build_weighting
from mtlrepro.models import build_model
from mtlrepro.recipe import Recipe
from mtlrepro.train.optim import build_lr_schedule, build_optimizer, model_param_groups


def _recipe(**kw) -> Recipe:
    base = dict(id="t/r", table="t", row="r", dataset="celeba", task_set="gated3", backbone="resnet18",
                sharing="hard_sharing", lr=1e-3, epochs=10)
    return Recipe(**{**base, **kw})


def _lrs(recipe: Recipe, epochs: int) -> list[float]:
    opt = build_optimizer(recipe, [torch.nn.Parameter(torch.zeros(1))])
    sched = build_lr_schedule(recipe, opt)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_poly_schedule_is_vandenhendes_formula():
    got = _lrs(_recipe(lr_schedule="poly:0.9", epochs=10), 10)
    want = [1e-3 * (1 - e / 10) ** 0.9 for e in range(10)]   # adjust_learning_rate, epoch e of 10
    assert got == pytest.approx(want, rel=1e-12)
    assert got[0] == 1e-3 and got[-1] < 0.15e-3


def test_step_schedule_one_third_every_20_epochs():
    got = _lrs(_recipe(lr_schedule="step:20:0.3333333333333333", epochs=45), 45)
    assert got[19] == pytest.approx(1e-3) and got[20] == pytest.approx(1e-3 / 3) and got[40] == pytest.approx(1e-3 / 9)


def test_poly_schedule_state_round_trips_through_a_checkpoint():
    r = _recipe(lr_schedule="poly:0.9")
    opt = build_optimizer(r, [torch.nn.Parameter(torch.zeros(1))])
    sched = build_lr_schedule(r, opt)
    sched.step()
    state = pickle.loads(pickle.dumps(sched.state_dict()))
    opt2 = build_optimizer(r, [torch.nn.Parameter(torch.zeros(1))])
    sched2 = build_lr_schedule(r, opt2)
    sched2.load_state_dict(state)
    sched.step(), sched2.step()
    assert sched.get_last_lr() == sched2.get_last_lr()


@pytest.mark.parametrize("spec", ["poly", "poly:x", "cosine:1", "step:1"])
def test_bad_schedules_are_named(spec):
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        build_lr_schedule(_recipe(lr_schedule=spec), build_optimizer(_recipe(), [torch.nn.Parameter(torch.zeros(1))]))


def test_encoder_lr_splits_heads_from_the_rest():
    model = build_model("resnet18", "hard_sharing", [1, 1, 1])
    w = build_weighting("equal", 3)
    plain = model_param_groups(_recipe(), model, w)
    assert len(plain) == 1 and len(plain[0]["params"]) == len(list(model.parameters()))
    groups = model_param_groups(_recipe(encoder_lr=1e-5), model, w)
    opt = build_optimizer(_recipe(encoder_lr=1e-5), groups)
    enc, dec = opt.param_groups
    assert enc["lr"] == 1e-5 and dec["lr"] == 1e-3
    assert {id(p) for p in dec["params"]} == {id(p) for p in model.heads.parameters()}
    assert {id(p) for p in enc["params"]} == {id(p) for p in model.encoder.parameters()}
