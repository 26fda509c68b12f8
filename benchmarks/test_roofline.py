"""How close the per-task loop's convolutions already run to this machine's GEMM peak.

Why this exists: a batched all-task pass (``forward_all`` / the synchronized step with
``task_chunk`` > 1, ``benchmarks/test_batched_tasks.py``) does exactly the FLOPs of the per-task
loop - it only turns T passes over B rows into one pass over T*B rows. Batching can therefore
only win what the loop loses to poor utilisation (small GEMMs, per-call overhead, kernel
launches). If the loop's convolutions already run at a large fraction of the dense GEMM peak -
as on a CPU, where one task's ResNet18 pass at B = 16 is already big enough to keep the cores
busy - there is little left to win, and a T-times larger working set can even lose (cache
locality): this benchmark is the evidence behind ``task_chunks``' CPU default (the loop). On a
GPU a one-task pass at B = 16-256 is expected to leave much of the device idle (launch- and
occupancy-bound), i.e. a low ratio below and room for batching (not yet measured here).

Measured (CPU: one thread, ``one_thread`` fixture, as ``test_batched_tasks.py``):

* ``test_gemm_peak``: one float32 ``n x n`` matmul (``n`` = 1024 on CPU, 4096 on CUDA, or
  ``MTLREPRO_BENCH_GEMM_N``), 2 n^3 FLOP; ``extra_info['gflops']`` from its fastest round and
  ``gflops_median``. On CUDA it runs twice, plain float32 and TF32 (``tf32`` in the id).
* ``test_resnet18_achieved``: ResNet18, hard sharing, CelebA-40 shape (40 one-logit heads,
  64x64, B = ``MTLREPRO_BENCH_BATCH``), phase ``forward`` (eval mode, ``no_grad``: what
  ``evaluate`` runs) or ``forward_backward`` (train mode, summed BCE, ``backward``; no optimizer
  step). FLOPs = 2 x the fvcore MAC count of ``mtlrepro.complexity.count`` (one image, all
  heads) x B, and x 3 for forward + backward (the usual estimate: the backward computes the
  gradients of both the inputs and the weights, each about a forward's work). ``extra_info``:
  ``gflops`` (fastest round), ``gflops_median``, ``peak_gflops`` (this module's GEMM peak at
  the precision the convolutions use - TF32 on CUDA when ``torch.backends.cudnn.allow_tf32``,
  PyTorch's default, else float32; measured once per module, fastest of 5) and
  ``fraction_of_peak`` = gflops / peak_gflops.

How to read it: ``fraction_of_peak`` close to 1 (CPU: reference measurement on the 2-core dev
machine, one thread: ~89 GFLOP/s for a 1024^2 matmul, ~52 GFLOP/s for a one-task ResNet18
forward at B = 16, i.e. ~0.6) bounds the speed-up of any batching of the same FLOPs by
``1 / fraction_of_peak`` (here < 2x, and the measured batched passes stayed within 0.65-1.26x of
the loop); a small fraction (GPUs at small batch) leaves room for batching. The fvcore count
includes the BatchNorm/pooling/head work (a few percent), and the ``x 3`` backward estimate is
an approximation, so treat the fraction as +-10%.

Run: ``pytest benchmarks/test_roofline.py --benchmark-enable``.
"""
from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from mtlrepro.complexity import count
from mtlrepro.models import build_model

N_TASKS = 40
SHAPE = (3, 64, 64)


pytestmark = pytest.mark.usefixtures("one_thread")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rounds(device):
    return 5 if device.type == "cpu" else 20


def _gemm_n(device) -> int:
    return int(os.environ.get("MTLREPRO_BENCH_GEMM_N", "1024" if device.type == "cpu" else "4096"))


def _conv_tf32(device) -> bool:
    """Whether this device's float32 convolutions run in TF32 (cuDNN's default on Ampere+)."""
    return device.type == "cuda" and torch.backends.cudnn.allow_tf32


@contextmanager
def _matmul_tf32(on: bool):
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _gemm(n, device):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    out = torch.empty(n, n, device=device)

    def run():
        torch.mm(a, b, out=out)
        _sync(device)

    return run


def _timed(fn, times: list[float]):
    def run():
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return run


@pytest.fixture(scope="module")
def peak_gflops(device) -> float:
    """Dense float32 GEMM throughput at the convolutions' precision: fastest of 5 (after a warm-up)."""
    n = _gemm_n(device)
    with _matmul_tf32(_conv_tf32(device)):
        run = _gemm(n, device)
        run()
        times: list[float] = []
        for _ in range(5):
            _timed(run, times)()
    return 2 * n ** 3 / min(times) / 1e9


@pytest.mark.parametrize("tf32", [False, True], ids=["fp32", "tf32"])
def test_gemm_peak(benchmark, tf32, device):
    if tf32 and device.type != "cuda":
        pytest.skip("TF32 matmul exists on CUDA only")
    benchmark.group = "roofline gemm"
    n = _gemm_n(device)
    times: list[float] = []
    with _matmul_tf32(tf32):
        run = _gemm(n, device)
        run()  # warm-up
        benchmark.pedantic(_timed(run, times), rounds=_rounds(device) * 2, iterations=1)
    flop = 2 * n ** 3
    benchmark.extra_info.update({
        "n": n, "gflop": flop / 1e9, "gflops": flop / min(times) / 1e9,
        "gflops_median": flop / statistics.median(times) / 1e9, "tf32": tf32,
        "device": str(device), "threads": torch.get_num_threads()})
    print(f"\ngemm {n}^2 {'tf32' if tf32 else 'fp32'} on {device}: "
          f"{benchmark.extra_info['gflops']:.1f} GFLOP/s (threads {torch.get_num_threads()})")


@pytest.mark.parametrize("phase", ["forward", "forward_backward"])
def test_resnet18_achieved(benchmark, phase, device, bench_batch, peak_gflops):
    benchmark.group = "roofline resnet18"
    torch.manual_seed(0)
    model = build_model("resnet18", "hard_sharing", [1] * N_TASKS)
    macs = count(model, SHAPE).flops                       # one image, all heads (fvcore MACs)
    model = model.to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(bench_batch, *SHAPE, generator=g).to(device)
    ys = [torch.randint(0, 2, (bench_batch, 1), generator=g).float().to(device) for _ in range(N_TASKS)]

    if phase == "forward":
        model.eval()

        def run():
            with torch.no_grad():
                model(x)
            _sync(device)
    else:
        model.train()

        def run():
            model.zero_grad(set_to_none=True)
            outs = model(x)
            loss = sum(F.binary_cross_entropy_with_logits(o, y) for o, y in zip(outs, ys))
            loss.backward()
            _sync(device)

    run()  # warm-up
    times: list[float] = []
    benchmark.pedantic(_timed(run, times), rounds=_rounds(device), iterations=1)
    flop = 2 * macs * bench_batch * (3 if phase == "forward_backward" else 1)
    gflops = flop / min(times) / 1e9
    benchmark.extra_info.update({
        "macs_per_image": macs, "batch": bench_batch, "gflop": flop / 1e9, "gflops": gflops,
        "gflops_median": flop / statistics.median(times) / 1e9, "peak_gflops": peak_gflops,
        "fraction_of_peak": gflops / peak_gflops, "peak_gemm_n": _gemm_n(device),
        "peak_tf32": _conv_tf32(device), "device": str(device), "threads": torch.get_num_threads()})
    print(f"\nresnet18 {phase} B={bench_batch} on {device}: {gflops:.1f} GFLOP/s, "
          f"peak {peak_gflops:.1f}, fraction {gflops / peak_gflops:.2f}")
