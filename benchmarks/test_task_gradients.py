"""Per-task gradients (the engine, :mod:`mtlrepro.methods.gradients`): one batched call vs ``T`` calls.

ResNet18 hard sharing, CelebA-40 shape (40 binary heads, 64x64, batch ``MTLREPRO_BENCH_BATCH``).
Each timed call runs the forward pass and then takes the ``T`` per-task gradients that a weighting
needs:

* ``mgda_z``: w.r.t. the shared representation ``z`` (MGDA-UB's upper bound, Sener & Koltun);
* ``gradnorm_w``: w.r.t. the last shared layer's weight (GradNorm's ``W``);
* ``full_shared``: w.r.t. ALL shared parameters, one full backward per task (what a method
  without the representation trick pays; loop only, for scale).

Modes ``batched`` (one ``torch.autograd.grad`` with ``is_grads_batched=True``,
:func:`mtlrepro.methods.gradients.task_gradients`) and ``loop`` (``T`` calls). The test checks that batched equals
the loop before it times anything.

Run (CPU): ``MTLREPRO_BENCH_BATCH=16 pytest benchmarks/test_task_gradients.py --benchmark-enable``.
Measured on the 2-core dev machine (one thread, B = 16, forward included, mean of 2 rounds):
``mgda_z`` batched 109 ms / loop 141 ms (about 90 ms of it is the forward); ``gradnorm_w``
889 / 899 ms (the backward into layer4's last conv dominates, and vmap does not shorten it);
``full_shared`` 9.9 s - the representation trick makes MGDA-UB's 40 gradients ~90x cheaper
than 40 full backward passes.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtlrepro.methods.gradients import task_gradients
from mtlrepro.methods.weightings.gradnorm import last_shared_weights
from mtlrepro.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

N_TASKS = 40
CASES = {"mgda_z": ("batched", "loop"), "gradnorm_w": ("batched", "loop"), "full_shared": ("loop",)}
PARAMS = [(target, mode) for target, modes in CASES.items() for mode in modes]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def setup(device, bench_batch):
    torch.manual_seed(0)
    model = build_model("resnet18", "hard_sharing", [1] * N_TASKS).to(device).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(bench_batch, 3, 64, 64, generator=g).to(device)
    y = torch.randint(0, 2, (bench_batch, N_TASKS), generator=g).float().to(device)
    return model, x, y


def _losses(model, x, y):
    z = model.encode(x)
    losses = torch.stack([F.binary_cross_entropy_with_logits(model.decode(z, t), y[:, t:t + 1])
                          for t in range(N_TASKS)])
    return losses, z


def _inputs(target, model, z):
    if target == "mgda_z":
        return [z]
    if target == "gradnorm_w":
        return last_shared_weights(model)
    return model.shared_parameters()


def _with_inputs(target, model, x, y):
    losses, z = _losses(model, x, y)
    return losses, _inputs(target, model, z)


@pytest.mark.parametrize("target,mode", PARAMS)
def test_task_gradients(benchmark, setup, target, mode, device, bench_batch):
    benchmark.group = f"task gradients {target}"
    model, x, y = setup

    def run():
        losses, z = _losses(model, x, y)
        grads, used = task_gradients(losses, _inputs(target, model, z), batched=(mode == "batched"))
        _sync(device)
        return grads, used

    grads, used = run()
    assert used == (mode == "batched"), "is_grads_batched fell back to the loop"
    if mode == "batched":  # equal results before timing: the loop is the reference
        ref, _ = task_gradients(*_with_inputs(target, model, x, y), batched=False)
        for a, b in zip(grads, ref):
            scale = b.abs().max().item() or 1.0
            assert (a - b).abs().max().item() <= 1e-4 * scale, f"{target}: batched differs from the loop"
    benchmark.extra_info.update({"batch": bench_batch, "tasks": N_TASKS, "device": str(device),
                                 "threads": torch.get_num_threads(),
                                 "grad_elements_per_task": sum(g[0].numel() for g in grads)})
    benchmark.pedantic(run, rounds=2 if device.type == "cpu" else 20, iterations=1)
