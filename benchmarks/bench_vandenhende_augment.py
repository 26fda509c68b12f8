"""Vandenhende's flip + ScaleNRotate (``mtlrepro.problems.vandenhende_augment``): batched vs per sample.

One PASCAL_MT ``pascal5`` batch (uint8 image, int8 semseg and human parts, uint8 saliency and
edges, float16 normals) of ``--batch`` samples at ``--size`` x ``--size``, random content,
already on the device. **batched**: one call of the augmentation on the whole batch (one
``affine_grid``, one bicubic and one nearest ``grid_sample``); **per sample**: the same callable
on each sample in a Python loop (batch of 1), as a per-sample DataLoader transform would run it.
Median of ``--rounds`` after one warm-up; CPU runs use one thread (as the other benchmarks), CUDA
runs synchronise before the clock stops.

Run: ``python benchmarks/bench_vandenhende_augment.py [--device cuda] [--batch 8] [--size 512]``,
or ``pytest benchmarks/bench_vandenhende_augment.py --benchmark-enable`` (pytest-benchmark).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mtlrepro.problems.vandenhende_augment import augment_for

TASKS = ["semseg", "human_parts", "saliency", "normals", "edge"]


def make_batch(batch: int, size: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
    semseg = torch.randint(-1, 21, (batch, size, size), generator=g).to(torch.int8)
    parts = torch.randint(0, 7, (batch, size, size), generator=g).to(torch.int8)
    sal = torch.randint(0, 2, (batch, size, size), generator=g).to(torch.uint8)
    n = torch.randn(batch, 3, size, size, generator=g)
    normals = (n / n.norm(dim=1, keepdim=True)).half()
    edge = torch.randint(0, 2, (batch, size, size), generator=g).to(torch.uint8)
    return img.to(device), [t.to(device) for t in (semseg, parts, sal, normals, edge)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def batched(aug, img, targets, seed: int):
    return aug(img, targets, torch.Generator().manual_seed(seed))


def per_sample(aug, img, targets, seed: int):
    outs = [aug(img[b:b + 1], [t[b:b + 1] for t in targets], torch.Generator().manual_seed(seed * 1000 + b))
            for b in range(img.shape[0])]
    return torch.cat([o[0] for o in outs]), [torch.cat([o[1][i] for o in outs]) for i in range(len(targets))]


def time_it(fn, aug, img, targets, device, rounds: int) -> float:
    fn(aug, img, targets, 0)
    _sync(device)
    times = []
    for r in range(rounds):
        t0 = time.perf_counter()
        fn(aug, img, targets, r + 1)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(a.threads)
    aug = augment_for("pascal_mt", TASKS)
    img, targets = make_batch(a.batch, a.size, device)
    tb = time_it(batched, aug, img, targets, device, a.rounds)
    tp = time_it(per_sample, aug, img, targets, device, a.rounds)
    print(f"device {device} threads {torch.get_num_threads()} batch {a.batch} at {a.size}x{a.size}, pascal5 targets")
    print(f"batched    {tb * 1e3:8.1f} ms / batch")
    print(f"per sample {tp * 1e3:8.1f} ms / batch")
    print(f"per sample / batched = {tp / tb:.2f}")


def test_augment_batched(benchmark, device):
    aug = augment_for("pascal_mt", TASKS)
    img, targets = make_batch(8, 512, device)
    benchmark.extra_info.update({"batch": 8, "size": 512, "device": str(device)})
    benchmark.pedantic(lambda: (batched(aug, img, targets, 0), _sync(device)), rounds=3, iterations=1)


def test_augment_per_sample(benchmark, device):
    aug = augment_for("pascal_mt", TASKS)
    img, targets = make_batch(8, 512, device)
    benchmark.extra_info.update({"batch": 8, "size": 512, "device": str(device)})
    benchmark.pedantic(lambda: (per_sample(aug, img, targets, 0), _sync(device)), rounds=3, iterations=1)


if __name__ == "__main__":
    main()
