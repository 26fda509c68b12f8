"""Measured Overall / mean rank (mtlrepro/derived.py), unit conversion and the all-task FLOPs."""
from __future__ import annotations

import pytest
import torch

from mtlrepro.compare import unit_factor
from mtlrepro.complexity import count
from mtlrepro.derived import recompute_mean_rank, recompute_overall
from mtlrepro.models import build_model
from mtlrepro.tables import get_table


def _empty(table):
    return {r.key: {} for r in table.rows}, {r.key: {} for r in table.rows}


def test_overall_is_the_mean_of_the_measured_accuracies_per_seed():
    t = get_table("gatedmtl/table8")
    col = t.column("overall")
    measured, refused = _empty(t)
    measured["original_stl"] = {"gender": {0: 90.0, 1: 80.0}, "age": {0: 60.0, 1: 70.0}, "clothes": {0: 30.0}}
    vals, bad, missing = recompute_overall(t, col, measured, refused)
    assert vals["original_stl"] == {0: pytest.approx(60.0)}      # seed 1 lacks clothes
    assert "original_mtl_uniform" in missing and not bad


def test_mean_rank_by_hand_and_ties_rule():
    t = get_table("gatedmtl/table4")          # DPT ViT-S: 4 baseline rows + 4 GatedMTL rows, one group
    col = t.column("mr")
    measured, refused = _empty(t)
    # semseg ↑, depth ↓, normals ↓
    cells = {"stl": (50.0, 0.50, 19.0), "mtl_uniform": (49.0, 0.50, 21.0), "dwa": (51.0, 0.60, 20.0),
             "uncertainty": (48.0, 0.55, 22.0)}
    for k, (s, d, n) in cells.items():
        measured[k] = {"semseg": {0: s}, "depth": {0: d}, "normals": {0: n}}
    # every printed row is needed: without the GatedMTL rows the ranking is another one
    vals, bad, missing = recompute_mean_rank(t, col, measured, refused, "ties_average")
    assert not vals and set(bad) == set(cells) and "not measured: gatedmtl_1" in bad["stl"]
    for i, k in enumerate(["gatedmtl_1", "gatedmtl_2", "gatedmtl_3", "gatedmtl_4"]):
        measured[k] = {"semseg": {0: 40.0 - i}, "depth": {0: 0.7 + i}, "normals": {0: 30.0 + i}}
    vals, bad, _ = recompute_mean_rank(t, col, measured, refused, "ties_average")
    # semseg ranks: dwa 1, stl 2, mtl 3, unc 4; depth: stl/mtl tie 1.5 (average), unc 3, dwa 4;
    # normals: stl 1, dwa 2, mtl 3, unc 4
    assert vals["stl"][0] == pytest.approx((2 + 1.5 + 1) / 3)
    assert vals["mtl_uniform"][0] == pytest.approx((3 + 1.5 + 3) / 3)
    assert vals["dwa"][0] == pytest.approx((1 + 4 + 2) / 3)
    vals, _, _ = recompute_mean_rank(t, col, measured, refused, "ties_min")
    assert vals["stl"][0] == pytest.approx((2 + 1 + 1) / 3)      # competition rank: both tied rows get 1


def test_units_follow_the_printed_column():
    assert unit_factor("human_parts/miou", "fraction") == 0.01     # measured in %, printed 0.598
    assert unit_factor("miou_best_threshold", "fraction") == 0.01
    assert unit_factor("semseg/miou", "%") == 1.0
    assert unit_factor("mean_angle_pooled", "deg") == 1.0


def test_stl_flops_count_every_task_network():
    torch.manual_seed(0)
    stl = build_model("resnet18", "single_task", [1, 2, 3], head="linear")
    c = count(stl, (3, 32, 32))
    per_task = [count(stl, (3, 32, 32), task=t).flops for t in range(3)]
    assert c.flops == per_task[0] and c.flops_all_tasks == sum(per_task)
    hps = build_model("resnet18", "hard_sharing", [1, 2, 3], head="linear")
    h = count(hps, (3, 32, 32))
    assert h.flops_all_tasks == h.flops
    # one shared encoder vs three: the three networks cost three encoders, heads aside
    assert 2.9 * h.flops < c.flops_all_tasks < 3.1 * h.flops
