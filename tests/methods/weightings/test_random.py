"""Random loss weighting (Lin et al. 2022; CoNAL Eq. 3): draws, seeding, distributions."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from mtlrepro.methods.weightings.random import SEED_OFFSET, RandomLossWeighting

from ..toy import DEVICES, assert_task_by_task_equals_joint


def _steps(w: RandomLossWeighting, n: int) -> list[torch.Tensor]:
    out = []
    for _ in range(n):
        p = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        logs = w.backward(p * 1.0)
        assert torch.equal(p.grad, logs["task_weights"])   # d/dL_t sum_t lambda_t L_t
        out.append(logs["task_weights"])
    return out


def test_normal_weights_are_the_softmax_of_standard_normal_draws():
    w = RandomLossWeighting(3, seed=7).double()
    g = torch.Generator().manual_seed(7)
    for got in _steps(w, 4):
        z = torch.randn(3, generator=g, dtype=torch.float64).tolist()
        want = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-14, atol=0)


def test_uniform_weights_are_normalised_uniform_draws():
    """CoNAL Eq. 3: w_t ~ U[0, 1], then normalised to sum to 1."""
    w = RandomLossWeighting(3, distribution="uniform", seed=3).double()
    g = torch.Generator().manual_seed(3)
    for got in _steps(w, 4):
        u = torch.rand(3, generator=g, dtype=torch.float64).tolist()
        torch.testing.assert_close(got, torch.tensor([v / sum(u) for v in u], dtype=torch.float64),
                                   rtol=1e-14, atol=0)


def test_seeded_from_the_run_seed_reproducible_and_different_between_seeds():
    torch.manual_seed(5)                          # what the trainer does before building
    a = RandomLossWeighting(3).double()
    torch.randn(100)                              # the model's init draws do not matter
    torch.manual_seed(5)
    b = RandomLossWeighting(3).double()
    torch.manual_seed(6)
    c = RandomLossWeighting(3).double()
    assert a.stream_seed == 5 + SEED_OFFSET and c.stream_seed == 6 + SEED_OFFSET
    wa, wb, wc = _steps(a, 3), _steps(b, 3), _steps(c, 3)
    assert all(torch.equal(x, y) for x, y in zip(wa, wb))
    assert all(not torch.allclose(x, y) for x, y in zip(wa, wc))
    assert not torch.equal(wa[0], wa[1])          # a new draw every step


def test_generator_state_is_in_the_state_dict():
    w = RandomLossWeighting(3, seed=11).double()
    _steps(w, 2)
    state = copy.deepcopy(w.state_dict())
    resumed = RandomLossWeighting(3, seed=99).double()
    resumed.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(_steps(w, 3), _steps(resumed, 3)))


@pytest.mark.parametrize("distribution,threshold,probability", [
    # uniform, T = 2: P(u1 / (u1 + u2) < 1/4) = P(u1 < u2 / 3) = int_0^1 u2 / 3 du2 = 1/6
    ("uniform", 0.25, 1 / 6),
    # normal, T = 2: lambda_1 = sigmoid(z1 - z2), z1 - z2 ~ N(0, 2): P(< sigmoid(-1)) = Phi(-1/sqrt 2)
    ("normal", 1 / (1 + math.e), 0.5 * math.erfc(1 / 2)),
])
def test_distributions_by_hand(distribution, threshold, probability):
    w = RandomLossWeighting(2, distribution=distribution, seed=0)
    draws = torch.stack([w.draw() for _ in range(20000)])
    assert torch.all(draws >= 0) and torch.allclose(draws.sum(1), torch.ones(20000, dtype=torch.float64))
    assert float(draws[:, 0].mean()) == pytest.approx(0.5, abs=0.01)
    assert float((draws[:, 0] < threshold).double().mean()) == pytest.approx(probability, abs=0.01)


def test_task_by_task_with_the_steps_draw_equals_joint():
    w, w_ref = RandomLossWeighting(3, seed=1).double(), RandomLossWeighting(3, seed=1).double()
    losses = assert_task_by_task_equals_joint(w, w_ref)
    assert torch.equal(w.current_task_weights(losses), w_ref.current_task_weights(losses))


def test_bad_distribution():
    with pytest.raises(ValueError, match="distribution"):
        RandomLossWeighting(3, distribution="dirichlet")


@pytest.mark.parametrize("device", DEVICES)
def test_draws_do_not_depend_on_the_device(device):
    """The generator lives on the CPU: the same seed gives the same weights on every device."""
    cpu, dev = RandomLossWeighting(3, seed=4), RandomLossWeighting(3, seed=4).to(device)
    for _ in range(3):
        p = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0], device=device))
        logs = dev.backward(p * 1.0)
        cpu.start_step()
        assert logs["task_weights"].device.type == torch.device(device).type
        torch.testing.assert_close(logs["task_weights"].cpu(), cpu.weights, rtol=0, atol=0)


def test_docstring_example_runs():
    import doctest
    import importlib
    module = importlib.import_module("mtlrepro.methods.weightings.random")
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
