"""Table 9's forward / backward timing (mtlrepro/step_timing.py)."""
from __future__ import annotations

import torch

from mtlrepro.recipe import Recipe
from mtlrepro.step_timing import ratio_table, time_forward_backward
from mtlrepro.tables import get_table


def test_forward_and_backward_are_timed_apart_for_an_aggregator():
    r = Recipe(id="t/pcgrad", table="t", row="pcgrad", dataset="celeba", task_set="gated3", backbone="resnet18",
               sharing="hard_sharing", weighting="pcgrad", image_size=32)
    out = time_forward_backward(r, torch.device("cpu"), batch=2, warmup=1, iters=2)
    assert out["forward_ms"] > 0 and out["backward_ms"] > 0
    assert set(out) == {"forward_ms", "backward_ms", "forward_ms_median", "backward_ms_median"}


def test_ratios_to_standard_mtl_beside_the_printed_ones():
    t = get_table("gatedmtl/table9")
    text = ratio_table(t, {"rows": {"mtl_uniform": {"forward_ms": 10.0, "backward_ms": 20.0},
                                    "mtan": {"forward_ms": 20.0, "backward_ms": 30.0}}})
    mtan = next(line for line in text.splitlines() if "(mtan)" in line)
    # measured 2.00 / 1.50; printed 73/60 = 1.22 and 330/299 = 1.10
    assert "| 2.00 | 1.22 |" in mtan and "| 1.50 | 1.10 |" in mtan
    assert "(no measured" in ratio_table(t, {"rows": {"mtan": {"forward_ms": 1.0, "backward_ms": 1.0}}})
