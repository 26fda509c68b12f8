"""Forward and backward time per training iteration (GatedMTL Table 9's protocol), as ratios.

GatedMTL Appendix F times each method on PASCAL-Context at batch 4 on one V100: 10 warm-up
iterations, then the mean over 1000 of the forward pass and of the backward pass. Here, per ready
recipe of a table, on random inputs and targets of the recipe's formats already on the device
(:func:`mtlrepro.calibrate.step_bench`):

* **forward** = :func:`mtlrepro.train.steps.joint_forward`: the model's forward (``encode`` +
  ``decode`` when the method reads the shared representation) and the task losses;
* **backward** = :func:`~mtlrepro.train.steps.joint_update`: everything else of one update, the
  method's ``backward`` (for MGDA-UB, PCGrad and CAGrad the per-task gradients and their
  aggregation) and the optimizer step - the trainer's own joint step, cut in two. The paper does
  not say where it puts the optimizer step; it is a constant of the model, the same for every
  method on one backbone, and is written here so that nothing lives only in code.

Absolute milliseconds belong to the device they were measured on; what transfers between
devices is the **ratio to Standard MTL** (the row whose method is ``mtl_uniform``), which
:func:`ratio_table` sets beside the paper's printed ratios. A CPU measurement may use a smaller
``image_size`` than the paper's 512x512 (said in the output): the ratios then describe that size.
Only the joint update (one forward for all tasks) is timed, as in the table.
"""
from __future__ import annotations

import datetime as _dt
import statistics
import time
from typing import Any

import torch

from .calibrate import _cpu_model, _sync, step_bench
from .recipe import Recipe
from .train.steps import joint_forward, joint_update

__all__ = ["time_forward_backward", "time_table", "ratio_table"]


def time_forward_backward(recipe: Recipe, device: torch.device, batch: int = 4, warmup: int = 10,
                          iters: int = 1000, image_size: int | None = None) -> dict[str, float]:
    """Mean forward and backward milliseconds of ``iters`` joint update steps after ``warmup``."""
    if recipe.update != "joint":
        raise ValueError(f"{recipe.id}: update {recipe.update!r}; Table 9's protocol times the joint update")
    b = step_bench(recipe, device, batch, image_size)
    model, weighting, opt, problem = b.model, b.weighting, b.optimizer, b.problem
    model.train()
    fwd, bwd = [], []
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        losses, z = joint_forward(model, weighting, opt, problem, b.x, b.targets)
        _sync(device)
        t1 = time.perf_counter()
        joint_update(model, weighting, opt, b.x, b.targets, losses, z)
        _sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return {"forward_ms": 1e3 * statistics.fmean(fwd), "backward_ms": 1e3 * statistics.fmean(bwd),
            "forward_ms_median": 1e3 * statistics.median(fwd), "backward_ms_median": 1e3 * statistics.median(bwd)}


def time_table(recipes: list[Recipe], device: torch.device, batch: int = 4, warmup: int = 10,
               iters: int = 1000, image_size: int | None = None, log=print) -> dict[str, Any]:
    """:func:`time_forward_backward` of every ready joint-update recipe; failures are reported."""
    rows: dict[str, dict[str, float]] = {}
    failed: dict[str, str] = {}
    for r in recipes:
        if r.status != "ready" or r.update != "joint":
            continue
        try:
            rows[r.row] = time_forward_backward(r, device, batch, warmup, iters, image_size)
        except Exception as e:  # noqa: BLE001 - reported per recipe, the others go on
            failed[r.row] = f"{type(e).__name__}: {e}"[:300]
            log(f"{r.id}: FAILED ({failed[r.row]})")
            continue
        log(f"{r.id}: forward {rows[r.row]['forward_ms']:.1f} ms, backward {rows[r.row]['backward_ms']:.1f} ms")
    from .store import environment
    env = environment(device)
    return {
        "device": env["gpu"] if env.get("gpu") else f"CPU: {_cpu_model()} ({torch.get_num_threads()} threads)",
        "measured": f"{_dt.date.today().isoformat()}, torch {torch.__version__}, fp32, random inputs on the device",
        "protocol": {"batch": batch, "warmup": warmup, "iters": iters,
                     "image_size": image_size or "recipe", "statistic": "mean"},
        "rows": rows, **({"failed": failed} if failed else {}),
    }


def ratio_table(table, measured: dict[str, Any], baseline_method: str = "mtl_uniform") -> str:
    """Markdown: per row, measured ms and ratios to Standard MTL beside the printed ratios."""
    base = next((r for r in table.rows if r.method == baseline_method), None)
    rows = measured.get("rows", {})
    if base is None or base.key not in rows:
        return f"(no measured {baseline_method} row: ratios need Standard MTL timed on the same device)"

    def printed(row, col):
        v, b = row.cells.get(col), base.cells.get(col)
        if v is None or b is None or v.value is None or not b.value:
            return None
        return v.value / b.value

    out = ["| Row | Forward (ms) | ×MTL | printed ×MTL | Backward (ms) | ×MTL | printed ×MTL |",
           "|---|---|---|---|---|---|---|"]
    for row in table.rows:
        m = rows.get(row.key)
        if m is None:
            out.append(f"| {row.label} ({row.key}) | — | — | {_fmt(printed(row, 'forward'))} | — | — | "
                       f"{_fmt(printed(row, 'backward'))} |")
            continue
        fr = m["forward_ms"] / rows[base.key]["forward_ms"]
        br = m["backward_ms"] / rows[base.key]["backward_ms"]
        out.append(f"| {row.label} ({row.key}) | {m['forward_ms']:.1f} | {fr:.2f} | {_fmt(printed(row, 'forward'))} "
                   f"| {m['backward_ms']:.1f} | {br:.2f} | {_fmt(printed(row, 'backward'))} |")
    return "\n".join(out)


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"
