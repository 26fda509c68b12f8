"""Dynamic Weight Average (Liu et al. 2019): weights from given loss histories, by hand."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from mtlrepro.methods.weightings.dwa import DynamicWeightAverage


def _dwa_by_hand(prev: list[float], last: list[float], tau: float) -> list[float]:
    """Liu et al. Eq. 7: T exp(r_t / tau) / sum_i exp(r_i / tau), r_t = last_t / prev_t."""
    e = [math.exp(b / a / tau) for a, b in zip(prev, last)]
    return [len(e) * v / sum(e) for v in e]


def _epoch(w: DynamicWeightAverage, epoch: int, steps: list[list[float]], joint: bool = True) -> list[torch.Tensor]:
    """One epoch of steps with the given raw losses; returns each step's logged task weights."""
    w.on_epoch_start(epoch)
    seen = []
    for values in steps:
        p = torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))
        if joint:
            seen.append(w.backward(p * 1.0)["task_weights"])
        else:  # one task per forward: task t's backward on f_t(L_t)
            losses = p * 1.0
            for t in range(len(values)):
                w.task_objective(t, losses[t]).backward(retain_graph=True)
            seen.append(w.current_task_weights(losses))
        assert torch.equal(p.grad, seen[-1])  # d/dL_t sum_t lambda_t L_t = lambda_t
    w.on_epoch_end(epoch)
    return seen


HISTORY = [
    [[4.0, 1.0, 2.0], [2.0, 1.0, 4.0]],    # epoch 0: means (3, 1, 3)
    [[1.0, 1.2, 3.0], [2.0, 0.8, 3.0]],    # epoch 1: means (1.5, 1, 3)
    [[0.5, 0.5, 1.0], [1.0, 0.5, 2.0]],    # epoch 2: means (0.75, 0.5, 1.5)
    [[1.0, 1.0, 1.0]],
]


@pytest.mark.parametrize("joint", [True, False])
def test_weights_from_a_given_loss_history(joint):
    w = DynamicWeightAverage(3).double()             # tau = 2
    seen = [_epoch(w, k, steps, joint) for k, steps in enumerate(HISTORY)]
    ones = torch.ones(3, dtype=torch.float64)
    for k in (0, 1):                                 # w = 1 in the first two epochs
        assert all(torch.equal(s, ones) for s in seen[k])
    want2 = _dwa_by_hand([3, 1, 3], [1.5, 1, 3], 2.0)
    want3 = _dwa_by_hand([1.5, 1, 3], [0.75, 0.5, 1.5], 2.0)   # raw losses, not weighted ones
    for s in seen[2]:
        torch.testing.assert_close(s, torch.tensor(want2, dtype=torch.float64), rtol=1e-14, atol=0)
    torch.testing.assert_close(seen[3][0], torch.tensor(want3, dtype=torch.float64), rtol=1e-14, atol=0)
    assert sum(want2) == pytest.approx(3.0)
    assert w.epochs_recorded == 4


def test_temperature_and_the_mtan_formula():
    """MTAN's utils.py: lambda_i = 3 exp(w_i / T) / sum_j exp(w_j / T), for another T."""
    w = DynamicWeightAverage(3, temperature=0.5).double()
    for k, steps in enumerate(HISTORY[:2]):
        _epoch(w, k, steps)
    w.on_epoch_start(2)
    r = [1.5 / 3, 1 / 1, 3 / 3]
    den = sum(math.exp(v / 0.5) for v in r)
    want = [3 * math.exp(v / 0.5) / den for v in r]
    torch.testing.assert_close(w.weights, torch.tensor(want, dtype=torch.float64), rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="temperature"):
        DynamicWeightAverage(3, temperature=0.0)


def test_resumed_at_an_epoch_boundary_gives_the_same_weights():
    w = DynamicWeightAverage(3).double()
    for k, steps in enumerate(HISTORY[:2]):
        _epoch(w, k, steps)
    state = copy.deepcopy(w.state_dict())
    resumed = DynamicWeightAverage(3).double()
    resumed.load_state_dict(state)
    assert resumed.epochs_recorded == 2
    w.on_epoch_start(2)
    resumed.on_epoch_start(2)
    assert torch.equal(w.weights, resumed.weights) and not torch.equal(w.weights, torch.ones(3, dtype=torch.float64))


def test_an_epoch_without_steps_records_nothing():
    w = DynamicWeightAverage(2)
    w.on_epoch_start(0)
    w.on_epoch_end(0)
    assert w.epochs_recorded == 0 and w.epoch_mean_losses() is None


def test_docstring_example_runs():
    import doctest
    import importlib
    module = importlib.import_module("mtlrepro.methods.weightings.dwa")
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
