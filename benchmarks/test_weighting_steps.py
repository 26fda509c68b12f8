"""Step time of every multi-task method relative to equal weighting, and the per-task-gradient
engine relative to a LibMTL-style ``backward(retain_graph=True)`` loop, side by side in one run.

Model: hard parameter sharing on SegNet, NYUv2 ``std3`` (segmentation 13 + depth + normals), the
tiny profile (32x32, batch 8, generated data in the real on-disk format; real task losses). Why
this one: CoNAL's Table 1 and LibMTL's HPS baseline are NYUv2 with these three dense tasks on one
shared encoder-decoder; SegNet's 24.9M shared parameters are the size of the Jacobian CoNAL's
dilated ResNet-50 (23.5M, not built yet) would give, and that size is what the
aggregators pay for. (ResNet18 / CelebA-8 has 8 classification tasks: another T, another regime.)

Each timed call is one :func:`mtlrepro.train.steps.joint_step` (forward, the method's backward,
fused Adam step), with the trainer's optimizer. Variants:

* ``ours``: the method as the trainer runs it (aggregators: the engine,
  :func:`mtlrepro.methods.gradients.task_jacobian`: ONE batched ``autograd.grad`` with
  ``is_grads_batched=True``, falling back to ``T`` calls when an op has no batching rule);
* ``engine_loop`` (aggregators): the engine forced to its ``T`` ``autograd.grad`` calls;
* ``libmtl_loop`` (aggregators): the Jacobian as LibMTL's ``_compute_grad(mode="backward")``
  builds it: ``for t: loss_t.backward(retain_graph=True); row_t = cat(p.grad of the shared
  parameters); zero_grad`` (for a representation Jacobian, MGDA-UB, ``backward(inputs=[z])``:
  LibMTL's ``rep_grad`` stops at the detached representation the same way). Before timing, the
  test checks that it gives the same gradients as ``ours``.

Run: ``MTLREPRO_THREADS=1 pytest benchmarks/test_weighting_steps.py --benchmark-enable -s``; the
last test prints the table (times are the median over the rounds; without ``--benchmark-enable``
each case runs once, untimed by pytest-benchmark, and the table shows those single calls).
Sizes: ``MTLREPRO_BENCH_WIDTH`` (SegNet ``width_mult``, default 1.0), ``MTLREPRO_BENCH_BATCH``
(default the tiny profile's 8), ``MTLREPRO_BENCH_ROUNDS`` (default 3 on CPU, 20 on a GPU),
``MTLREPRO_BENCH_METHODS`` (comma-separated subset). About 3 minutes on one CPU thread at full width
(``MTLREPRO_BENCH_WIDTH=0.25``: 15 s).

Measured on the 2-core dev machine (one thread, full width, batch 8, median of 3): equal 493 ms;
loss weightings 0.92-1.16x equal (Auto-λ 3.9x); aggregators 2.6-3.6x equal (MGDA-UB, on ``z``,
1.24x); ours / LibMTL loop 0.72-0.97 (PCGrad 0.72, CAGrad 0.80, GradVac 0.79, IMTL 0.79, Nash-MTL
0.89, Pareto-MTL 0.91, MGDA 0.94, MGDA-UB 0.97); batched engine / its own loop 0.77-0.96, except
MGDA-UB's representation Jacobian (1.11: through three small heads the vmap does not pay).
"""
from __future__ import annotations

import copy
import os
import statistics
import time

import pytest
import torch

from mtlrepro.methods import WEIGHTINGS, build_weighting
from mtlrepro.methods.aggregators.base import Aggregator
from mtlrepro.models import build_model
from mtlrepro.problems import build_problem
from mtlrepro.profiles import apply_profile
from mtlrepro.recipe import get_recipe
from mtlrepro.train.steps import joint_step
from mtlrepro.train.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = apply_profile(get_recipe("etr_nlp/table5/hard_sharing").with_overrides(task_set="std3"), "tiny")


def _methods() -> list[str]:
    """One name per registered class (the class's own ``name``: ``rlw`` not ``rdw``), ``equal`` first."""
    names = sorted({WEIGHTINGS.get(n).name for n in WEIGHTINGS.names()})
    wanted = os.environ.get("MTLREPRO_BENCH_METHODS")
    if wanted:
        names = [n for n in names if n in {w.strip() for w in wanted.split(",")} | {"equal"}]
    return ["equal"] + [n for n in names if n != "equal"]


METHODS = _methods()
CASES = [(m, v) for m in METHODS
         for v in (("ours", "engine_loop", "libmtl_loop") if issubclass(WEIGHTINGS.get(m), Aggregator) else ("ours",))]
TIMES: dict[tuple[str, str], float] = {}
BATCHED: dict[str, bool | None] = {}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def libmtl_jacobian(self: Aggregator, losses: torch.Tensor, inputs) -> torch.Tensor:
    """LibMTL's per-task loop (``AbsWeighting._compute_grad``, mode "backward"): one full
    ``backward(retain_graph=True)`` per task, the shared rows read from ``.grad``."""
    inputs = list(inputs)
    leaf = all(x.is_leaf for x in inputs)
    rows = []
    for t in range(losses.shape[0]):
        if leaf:   # shared parameters: backward into everything, as LibMTL does
            losses[t].backward(retain_graph=True)
        else:      # the representation z (LibMTL's rep_grad: a detached copy stops the pass there)
            torch.autograd.backward(losses[t], inputs=inputs, retain_graph=True)
        rows.append(torch.cat([x.grad.reshape(-1) if x.grad is not None else torch.zeros(x.numel(), device=x.device)
                               for x in inputs]))
        for x in inputs:
            x.grad = None
    for p in self._bench_model.parameters():   # heads' grads: the update writes them afresh
        p.grad = None
    return torch.stack(rows)


@pytest.fixture(scope="module")
def setup(device):
    problem = build_problem(RECIPE, "tiny", None, device)
    batch = int(os.environ.get("MTLREPRO_BENCH_BATCH", RECIPE.batch_size))
    x, ys = next(problem.train_batches(batch, 0, 0))
    torch.manual_seed(0)
    width = float(os.environ.get("MTLREPRO_BENCH_WIDTH", "1.0"))
    model = build_model(RECIPE.backbone, RECIPE.sharing, problem.out_dims, width_mult=width,
                        **RECIPE.model_kwargs()).to(device)
    return problem, x, ys, model, width


def _build(method: str, variant: str, problem, model, x, ys):
    torch.manual_seed(0)
    kwargs = {"batched": False} if variant == "engine_loop" else {}
    w = build_weighting(method, problem.n_tasks, **kwargs).to(x.device)
    opt = build_optimizer(RECIPE, [*model.parameters(), *w.parameters_for_model_optimizer()])
    w.bind_training(problem.task_loss, opt)
    if w.needs_validation_batches:
        w.bind_validation(lambda: (x, ys))
    if variant == "libmtl_loop":
        w._bench_model = model
        w.jacobian = libmtl_jacobian.__get__(w)
    return w, opt


def _grads_after_backward(method: str, variant: str, problem, base, x, ys) -> list[torch.Tensor]:
    model = copy.deepcopy(base)
    w, _ = _build(method, variant, problem, model, x, ys)
    z = model.encode(x) if w.needs_representation else None
    outs = [model.decode(z, t) for t in range(problem.n_tasks)] if z is not None else model(x)
    losses = torch.stack([problem.task_loss(t, o, y) for t, (o, y) in enumerate(zip(outs, ys))])
    w.backward(losses, model, z)
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@pytest.mark.parametrize("method,variant", CASES)
def test_weighting_step(benchmark, setup, method, variant, device):
    problem, x, ys, base, width = setup
    benchmark.group = "joint step, SegNet NYUv2 std3 tiny"
    if variant == "libmtl_loop":   # same update as ours before timing anything
        ours = _grads_after_backward(method, "ours", problem, base, x, ys)
        theirs = _grads_after_backward(method, variant, problem, base, x, ys)
        for a, b in zip(ours, theirs):
            scale = b.abs().max().item() or 1.0
            assert (a - b).abs().max().item() <= 1e-3 * scale, f"{method}: the LibMTL-style loop differs"
    model = copy.deepcopy(base)
    w, opt = _build(method, variant, problem, model, x, ys)
    durations: list[float] = []

    def run():
        t0 = time.perf_counter()
        joint_step(model, w, opt, problem, x, ys)
        _sync(device)
        durations.append(time.perf_counter() - t0)

    run()   # warm-up (first-step state, allocator)
    durations.clear()
    rounds = int(os.environ.get("MTLREPRO_BENCH_ROUNDS", "3" if device.type == "cpu" else "20"))
    benchmark.extra_info.update({"method": method, "variant": variant, "batch": x.shape[0],
                                 "width_mult": width, "device": str(device), "threads": torch.get_num_threads(),
                                 "used_batched": getattr(w, "last_used_batched", None)})
    benchmark.pedantic(run, rounds=rounds, iterations=1)
    TIMES[(method, variant)] = statistics.median(durations)
    if variant == "ours":
        BATCHED[method] = getattr(w, "last_used_batched", None)


def test_summary_table(setup, device):
    """Print the table (with ``-s``): every method relative to equal, ours relative to LibMTL's loop."""
    from tabulate import tabulate

    if ("equal", "ours") not in TIMES:
        pytest.skip("no step was timed (run the whole file)")
    eq = TIMES[("equal", "ours")]
    rows = []
    for m in METHODS:
        if (m, "ours") not in TIMES:
            continue
        ours = TIMES[(m, "ours")]
        loop, lib = TIMES.get((m, "engine_loop")), TIMES.get((m, "libmtl_loop"))
        rows.append([m, f"{ours * 1e3:.0f}", f"{ours / eq:.2f}",
                     {True: "batched", False: "loop", None: ""}[BATCHED.get(m)],
                     f"{loop * 1e3:.0f}" if loop else "", f"{lib * 1e3:.0f}" if lib else "",
                     f"{ours / lib:.2f}" if lib else "", f"{ours / loop:.2f}" if loop else ""])
    problem, x, _, model, width = setup
    shared = sum(p.numel() for p in model.shared_parameters())
    print(f"\n\njoint step, hard sharing SegNet (width_mult {width}, {shared:,} shared parameters), NYUv2 std3, "
          f"batch {x.shape[0]} at {tuple(x.shape[2:])}, {device}, {torch.get_num_threads()} thread(s); median ms")
    print(tabulate(rows, headers=["method", "ours ms", "/ equal", "engine", "engine loop ms", "LibMTL loop ms",
                                  "ours / LibMTL", "ours / engine loop"], tablefmt="github", disable_numparse=True))
