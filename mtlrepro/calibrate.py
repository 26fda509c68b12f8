"""Measure seconds per training batch of recipes, for `mtlrepro plan`'s cost estimates.

``mtlrepro calibrate TABLE --device cpu --batch 2 --name cpu-<host>`` builds each ready recipe's
model and method at the recipe's full input size, feeds random inputs and random targets of the
task kinds' formats (already on the device: the step alone is timed, as ``benchmarks/`` does),
runs the recipe's update step ``warmup`` times, then times ``repeats`` steps and writes the
median to ``reproduce/calibration/<name>.yaml`` with its provenance (device, torch, threads,
batch, date). An estimate from it scales linearly in the batch size (``reference_batch``): on a
CPU, where a step's time is close to linear in the batch, that is a sound relative figure; a
GPU calibration is measured at the recipes' own batch sizes (``--batch 0``).

Keys are ``dataset/task_set/backbone/sharing/weighting/update`` (:func:`calibration_key`), the
same :mod:`mtlrepro.cost` looks up. Nothing here guesses a throughput: a recipe that fails to
build or step is reported, not estimated.
"""
from __future__ import annotations

import datetime as _dt
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .recipe import Recipe

__all__ = ["calibration_key", "random_targets", "time_step", "calibrate"]


def calibration_key(recipe: Recipe) -> str:
    return f"{recipe.dataset}/{recipe.task_set}/{recipe.backbone}/{recipe.sharing}/{recipe.weighting}/{recipe.update}"


def _tasks(recipe: Recipe):
    """The recipe's tasks (name, kind, out_dim), without touching data."""
    if recipe.dataset in ("cityscapes", "nyuv2"):
        from .problems.dense import dense_tasks
        return dense_tasks(recipe.dataset, recipe.task_set)
    if recipe.dataset in ("nyud_mt", "pascal_mt"):
        from .problems.vandenhende import vandenhende_tasks
        return vandenhende_tasks(recipe.dataset, recipe.task_set)
    from .problems import problem_shape
    from .tasks.base import Task
    out_dims, _ = problem_shape(recipe)
    return [Task(f"task{t}", "attributes", d) for t, d in enumerate(out_dims)]


def random_targets(tasks, batch: int, hw: tuple[int, int], device, generator: torch.Generator) -> list[torch.Tensor]:
    """Batch targets in each task kind's format: class maps with ignored (-1) pixels, 0/1 masks,
    depth with invalid (0) pixels, unit normals with invalid (0) pixels, 0/1 attribute vectors."""
    h, w = hw
    out = []
    for task in tasks:
        if task.kind == "seg":
            y = torch.randint(-1, task.out_dim, (batch, h, w), generator=generator)
        elif task.kind in ("binary_seg", "edge", "saliency"):
            y = torch.randint(0, 2, (batch, 1, h, w), generator=generator).float()
        elif task.kind == "depth":
            y = torch.rand(batch, 1, h, w, generator=generator) * (torch.rand(batch, 1, h, w, generator=generator) > 0.1)
        elif task.kind in ("normals", "normals_l1"):
            n = torch.randn(batch, 3, h, w, generator=generator)
            y = n / n.norm(dim=1, keepdim=True) * (torch.rand(batch, 1, h, w, generator=generator) > 0.1)
        elif task.kind == "attributes":
            y = torch.randint(0, 2, (batch, task.out_dim), generator=generator).float()
        else:
            raise ValueError(f"calibrate: no random target for task kind {task.kind!r}")
        out.append(y.to(device))
    return out


class _RandomProblem:
    def __init__(self, tasks):
        from .tasks.base import task_loss
        self.tasks, self.n_tasks = tasks, len(tasks)
        self.out_dims = [t.out_dim for t in tasks]
        self._loss = task_loss

    def task_loss(self, t: int, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._loss(self.tasks[t], out, target)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepBench:
    """A recipe's model, method and optimizer on random data of its full input size, on the device."""

    model: torch.nn.Module
    weighting: Any
    optimizer: torch.optim.Optimizer
    problem: "_RandomProblem"
    x: torch.Tensor
    targets: list[torch.Tensor]


def step_bench(recipe: Recipe, device: torch.device, batch: int, image_size: int | None = None) -> StepBench:
    """Build what one timed update step of ``recipe`` needs (``image_size``: another input height,
    the width scaled with it, for a smaller measurement than the recipe's full size)."""
    from .methods import build_weighting
    from .models import build_model
    from .problems import problem_shape
    from .train.optim import build_optimizer, model_param_groups

    out_dims, shape = problem_shape(recipe)
    if image_size:
        h, w = shape[-2:]
        shape = (*shape[:-2], int(image_size), max(1, round(w * image_size / h)))
    tasks = _tasks(recipe)
    torch.manual_seed(0)
    model = build_model(recipe.backbone, recipe.sharing, out_dims,
                        **recipe.model_kwargs(weights=False)).to(device)   # timing needs no ImageNet file
    weighting = build_weighting(recipe.weighting, len(out_dims), **recipe.weighting_kwargs).to(device)
    problem = _RandomProblem(tasks)
    opt = build_optimizer(recipe, model_param_groups(recipe, model, weighting))
    weighting.bind_training(problem.task_loss, opt)
    from .cost import batches_per_epoch
    weighting.bind_schedule(recipe.epochs, batches_per_epoch(recipe) or 1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *shape, generator=g).to(device)
    ys = random_targets(tasks, batch, tuple(shape[-2:]), device, g)
    if weighting.needs_validation_batches:
        weighting.bind_validation(lambda: (x, ys))
    return StepBench(model, weighting, opt, problem, x, ys)


def time_step(recipe: Recipe, device: torch.device, batch: int, warmup: int = 1, repeats: int = 3) -> list[float]:
    """Seconds of ``repeats`` timed update steps of ``recipe`` at ``batch`` (after ``warmup``)."""
    from .train.steps import STEPS

    b = step_bench(recipe, device, batch)
    model, weighting, opt, problem, x, ys = b.model, b.weighting, b.optimizer, b.problem, b.x, b.targets
    step = STEPS.get(recipe.update)
    model.train()
    for _ in range(warmup):
        step(model, weighting, opt, problem, x, ys)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(model, weighting, opt, problem, x, ys)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def calibrate(recipes: list[Recipe], device: torch.device, batch: int, warmup: int = 1,
              repeats: int = 3, log=print) -> dict[str, Any]:
    """Measure every distinct calibration key among ``recipes``; returns the calibration file's
    content (``batch`` 0: each recipe's own batch size)."""
    from .store import environment
    entries: dict[str, float] = {}
    failures: dict[str, str] = {}
    for r in recipes:
        key = calibration_key(r)
        if key in entries or key in failures or r.status != "ready":
            continue
        b = batch or r.batch_size
        try:
            from .pipeline import resolve_upstream
            r = resolve_upstream(r, "full")   # a retraining row is timed on the tree its stored search found
            times = time_step(r, device, b, warmup, repeats)
        except Exception as e:  # noqa: BLE001 - reported per recipe, the others go on
            failures[key] = f"{type(e).__name__}: {e}"[:300]
            log(f"{key}: FAILED ({failures[key]})")
            continue
        per = statistics.median(times)
        entries[key] = round(per * (r.batch_size / b) if batch else per, 4)
        log(f"{key}: {per:.3f} s/batch at batch {b} ({', '.join(f'{t:.3f}' for t in times)})")
    env = environment(device)
    return {
        "device": env["gpu"] if env.get("gpu") else f"CPU: {_cpu_model()} ({torch.get_num_threads()} threads)",
        "measured": f"{_dt.date.today().isoformat()}, torch {torch.__version__}, "
                    f"{torch.get_num_threads()} threads, fp32, random inputs on the device, "
                    f"median of {repeats} steps after {warmup} warm-up",
        "source": "mtlrepro calibrate (mtlrepro/calibrate.py)",
        "reference_batch": "recipe",
        "measured_batch": batch or "recipe",
        "s_per_batch": entries,
        **({"failed": failures} if failures else {}),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def write_calibration(content: dict[str, Any], path: Path) -> None:
    import yaml
    head = ("# Seconds per training batch at each recipe's own batch size (entries measured at a smaller\n"
            "# batch are scaled linearly; see measured_batch). Written by `mtlrepro calibrate`.\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + yaml.safe_dump(content, sort_keys=False, width=110))
