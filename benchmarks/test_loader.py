"""Loader throughput vs train-step rate: can ``Problem.train_batches`` starve the step?

For the hard-sharing, joint / equal-weighting recipe of each dense and CelebA table (ETR-NLP
Table 4 ``hard_sharing_g8`` / ``hard_sharing_a40``, Table 5 NYUv2 ``mr15``, Table 6 Cityscapes
``mr8``), the problem is built exactly as the harness builds it for ``--profile tiny``:
``build_problem(apply_profile(recipe, "tiny") [with overrides], "tiny", None, device)``, i.e. the
generated tiny dataset in its real on-disk format, decoded and resized by the data cache, held
on the device as uint8 / float16 tensors. The data cache lives in a temporary
``MTLREPRO_CACHE`` for this module, so nothing is written into (or read from) the user's cache.
Then, on the same batch size:

* **loader** (the timed benchmark): one epoch of ``problem.train_batches(batch, epoch, seed)``,
  every batch consumed (for CUDA, synchronised before the clock stops): the shuffle, the
  per-batch gathers of the inputs and of every task's targets, ``prepare`` (uint8 / float16 ->
  float32) and, for the dense problems, the expansion of the int8 label map into one mask per
  one-vs-rest task. Each round is a different epoch (a different shuffle).
* **step** (timed by hand, same synchronisation): one training step of the recipe on the first
  batch, built as ``train_run`` builds it (``build_model``, ``build_weighting``, the harness's
  optimizer, ``STEPS[recipe.update]``).

``extra_info``: ``loader_batches_per_s``, ``loader_ms_per_batch`` (median epoch time / batches
per epoch), ``step_ms`` (median) and ``steps_per_s``, and **``loader_over_step``** = loader time
per batch / step time per batch. How to read it: the trainer runs loader and step one after the
other, so an epoch takes about ``(1 + loader_over_step)`` times the steps alone. Well below 1
(say < 0.05): the loader costs a few percent at most and cannot starve the step. Near or above
1: the loader is the bottleneck (a prefetching loader or another data layout would pay off).
On CUDA both run on the device in the same stream; the ratio then says how much of each batch's
device time (plus host launch overhead) is data movement.

Caveats: the tiny sets hold 32 (CelebA) / 16 (Cityscapes, NYUv2) training images, so the batch
is capped at that size (CelebA: ``min(MTLREPRO_BENCH_BATCH, 32)``; dense: the recipes' batch 8)
and an epoch is 1-4 batches; a tiny set also sits in the CPU caches, whereas the real ones
(CelebA 64x64: 2 GB of uint8) are gathered from DRAM, so on CPU the loader time here is a lower
bound. Input sizes: CelebA at the paper's 64x64 (``image_size`` overridden); the dense problems
at the tiny profile's 32 rows (Cityscapes 32x64, NYUv2 32x32), or
``MTLREPRO_BENCH_DENSE_SIZE=128`` / ``288`` for MTAN's full resolution (a GPU's job). CPU runs use
one thread (``one_thread``, as the other benchmarks), so loader and step see the same thread count.

Run: ``pytest benchmarks/test_loader.py --benchmark-enable``.
"""
from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from mtlrepro.methods import build_weighting
from mtlrepro.models import build_model
from mtlrepro.problems import build_problem
from mtlrepro.profiles import apply_profile
from mtlrepro.recipe import recipes_for_table
from mtlrepro.train.steps import STEPS
from mtlrepro.train.optim import build_optimizer

ROWS = [("etr_nlp/table4", "hard_sharing_g8"), ("etr_nlp/table4", "hard_sharing_a40"),
        ("etr_nlp/table5", "hard_sharing"), ("etr_nlp/table6", "hard_sharing")]


def _recipe(table: str, row: str):
    (r,) = [r for r in recipes_for_table(table) if r.row == row]
    assert (r.sharing, r.weighting, r.update) == ("hard_sharing", "equal", "joint"), r.id
    return r


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A private MTLREPRO_CACHE: the tiny datasets are generated there once for the module."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("cache")
        mp.setenv("MTLREPRO_CACHE", str(path))
        yield path


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _effective_recipe(table: str, row: str, bench_batch: int):
    """The recipe as the tiny profile runs it, at the benchmark's input size and batch."""
    paper = _recipe(table, row)
    r = apply_profile(paper, "tiny")
    if r.dataset == "celeba":
        return r.with_overrides(image_size=paper.image_size, batch_size=bench_batch)
    size = int(os.environ.get("MTLREPRO_BENCH_DENSE_SIZE", r.image_size))
    return r.with_overrides(image_size=size, batch_size=paper.batch_size)


@pytest.mark.parametrize("table, row", ROWS, ids=[f"{t.split('/')[-1]}-{r}" for t, r in ROWS])
def test_loader_vs_step(benchmark, table, row, device, bench_batch, tiny_cache):
    recipe = _effective_recipe(table, row, bench_batch)
    problem = build_problem(recipe, "tiny", None, device)
    batch = min(recipe.batch_size, len(problem.train))
    steps = problem.steps_per_epoch(batch)
    benchmark.group = f"loader {recipe.dataset}"
    short = benchmark.disabled  # smoke run (--benchmark-disable): one timed repetition of each

    # --- the step, built as train_run builds it -------------------------------------------------
    torch.manual_seed(0)
    model = build_model(recipe.backbone, recipe.sharing, problem.out_dims, **recipe.sharing_kwargs).to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    weighting = build_weighting(recipe.weighting, problem.n_tasks, **recipe.weighting_kwargs).to(device)
    optimizer = build_optimizer(recipe, model.parameters())
    step_fn = STEPS.get(recipe.update)
    x, targets = next(iter(problem.train_batches(batch, 0, 0)))
    assert x.shape == (batch, *problem.input_shape)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.amp)

    def step():
        with autocast:
            step_fn(model, weighting, optimizer, problem, x, targets)
        _sync(device)

    step()  # warm-up
    step_times = []
    for _ in range(1 if short else (3 if device.type == "cpu" else 20)):
        t0 = time.perf_counter()
        step()
        step_times.append(time.perf_counter() - t0)

    # --- the loader: one epoch per round, every round a new epoch (shuffle) -----------------------
    epoch_times: list[float] = []
    epochs = iter(range(1, 1_000_000))

    def load_epoch():
        t0 = time.perf_counter()
        n = 0
        for xb, ys in problem.train_batches(batch, next(epochs), 0):
            n += 1
        _sync(device)
        epoch_times.append(time.perf_counter() - t0)
        assert n == steps and xb.shape[0] == batch and len(ys) == problem.n_tasks

    load_epoch()  # warm-up (first-touch allocations, kernel caches)
    epoch_times.clear()
    benchmark.pedantic(load_epoch, rounds=20 if device.type == "cpu" else 50, iterations=1)

    loader_s = statistics.median(epoch_times) / steps
    step_s = statistics.median(step_times)
    info = {"recipe": recipe.id, "dataset": problem.name, "tasks": problem.n_tasks,
            "input_shape": list(problem.input_shape), "batch": batch, "n_train": len(problem.train),
            "batches_per_epoch": steps, "loader_epoch_ms": 1e3 * statistics.median(epoch_times),
            "loader_ms_per_batch": 1e3 * loader_s, "loader_batches_per_s": 1.0 / loader_s,
            "step_ms": 1e3 * step_s, "steps_per_s": 1.0 / step_s, "loader_over_step": loader_s / step_s,
            "timed_epochs": len(epoch_times), "timed_steps": len(step_times),
            "device": str(device), "threads": torch.get_num_threads()}
    benchmark.extra_info.update(info)
    print(f"\n{recipe.id} {problem.name} B={batch} {tuple(problem.input_shape)}: loader "
          f"{info['loader_ms_per_batch']:.2f} ms/batch ({info['loader_batches_per_s']:.0f} batches/s), "
          f"step {info['step_ms']:.1f} ms, loader/step {info['loader_over_step']:.2e}")
