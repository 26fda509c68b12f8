"""Fixed scalarisation and Maninis et al.'s weights."""
from __future__ import annotations

import pytest
import torch

from mtlrepro.methods.weightings.scalar import ScalarWeighting, maninis_weights


def test_gradient_is_the_weighted_sum_by_hand():
    w = ScalarWeighting(3, weights=[1.0, 2.0, 50.0]).double()
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    # L = (p0 + p1, p0^2, p0 p1) = (3, 1, 2); grads (1, 1), (2, 0), (2, 1)
    logs = w.backward(torch.stack([p.sum(), p[0] ** 2, p[0] * p[1]]))
    torch.testing.assert_close(p.grad, torch.tensor([1 + 4 + 100, 1 + 0 + 50], dtype=torch.float64))
    assert float(logs["total_loss"]) == 3 * 1 + 1 * 2 + 2 * 50
    assert logs["task_weights"].tolist() == [1.0, 2.0, 50.0]
    w.start_step()
    assert float(w.task_objective(2, torch.tensor(2.0, dtype=torch.float64))) == 100.0


def test_default_is_uniform_scalarisation():
    w = ScalarWeighting(4)
    assert w.current_task_weights(torch.zeros(())).tolist() == [1.0] * 4


@pytest.mark.parametrize("weights,match", [([1.0, 2.0], "2 weights for 3 tasks"), ([1.0, -1.0, 1.0], ">= 0"),
                                           ([1.0, float("nan"), 1.0], ">= 0")])
def test_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        ScalarWeighting(3, weights=weights)


def test_maninis_weights_in_task_order():
    pascal = ["semseg", "human_parts", "sal", "normals", "edge"]
    assert maninis_weights("pascal_context", pascal) == [1.0, 2.0, 5.0, 10.0, 50.0]
    assert maninis_weights("pascal_context", ["edge", "saliency"], aliases={"saliency": "sal"}) == [50.0, 5.0]
    assert maninis_weights("nyud", ["semseg", "depth"]) == [1.0, 1.0]
    with pytest.raises(KeyError, match="depth"):
        maninis_weights("pascal_context", ["depth"])
    with pytest.raises(KeyError, match="cityscapes"):
        maninis_weights("cityscapes", ["semseg"])


def test_docstring_example_runs():
    import doctest
    import importlib
    module = importlib.import_module("mtlrepro.methods.weightings.scalar")
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
