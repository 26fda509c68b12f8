"""Per-epoch averages of the per-step logs."""
from __future__ import annotations

import pytest
import torch

from mtlrepro.methods.logs import EpochLogs


def test_means_per_key_over_the_steps_that_reported_it():
    acc = EpochLogs()
    acc.add({"task_weights": torch.tensor([1.0, 0.0]), "total_loss": torch.tensor(2.0)})
    acc.add({"task_weights": torch.tensor([0.0, 1.0]), "total_loss": torch.tensor(4.0),
             "solver_iters": torch.tensor(3)})
    acc.add({"task_weights": torch.tensor([0.5, 0.5]), "total_loss": torch.tensor(0.0),
             "solver_iters": torch.tensor(4)})
    assert len(acc) == 3
    assert acc.means() == {"task_weights": [0.5, 0.5], "total_loss": 2.0, "solver_iters": 3.5}
    acc.reset()
    assert acc.means() == {} and len(acc) == 0


def test_sums_in_float64_and_shape_changes_fail():
    acc = EpochLogs()
    for _ in range(3):
        acc.add({"w": torch.tensor([0.1], dtype=torch.float32)})
    assert acc.means()["w"] == [pytest.approx(float(torch.tensor(0.1, dtype=torch.float32)), abs=1e-15)]
    with pytest.raises(ValueError, match="shape"):
        acc.add({"w": torch.tensor([0.1, 0.2])})
    x = torch.tensor([1.0], requires_grad=True)
    acc2 = EpochLogs()
    acc2.add({"w": x * 2})  # detached: no graph kept alive
    assert not acc2._sums["w"].requires_grad
