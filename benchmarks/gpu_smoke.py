"""Real training through the harness on generated CelebA at the paper's batch and resolution.

Not a pytest file: a timing run for a GPU machine (CPU works, slowly). It generates a CelebA of
``--n-train`` images in the official format, then trains every ETR-NLP Table 4 recipe for
``--epochs`` epochs at batch 256, 64×64, with the real update schemes, and prints seconds per
epoch, per optimizer step and images/s, with the loader-vs-step split.

    python benchmarks/gpu_smoke.py --n-train 2560 --epochs 2 --out results/benchmarks/gpu_smoke.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=2560)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--only", default="", help="comma-separated row keys")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    os.environ["MTLREPRO_CACHE"] = str(tmp / "cache")
    import torch

    from mtlrepro.data.generate import generate_celeba
    from mtlrepro.problems import build_problem
    from mtlrepro.problems.paths import ensure_tiny
    from mtlrepro.recipe import recipes_for_table
    from mtlrepro.train import train_run

    # a bigger generated CelebA in this run's own cache, marked complete so build_problem keeps it
    ensure_tiny("celeba", generate_celeba, layout="torchvision", n_train=args.n_train, n_val=512, n_test=64, seed=0)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = []
    only = {s for s in args.only.split(",") if s}
    for recipe in recipes_for_table("etr_nlp/table4"):
        if only and recipe.row not in only:
            continue
        r = recipe.with_overrides(epochs=args.epochs, batch_size=args.batch, seeds=(0,))
        problem = build_problem(r, "tiny", None, dev)
        # loader alone: one epoch of batches, synchronised
        t0 = time.time()
        for x, ys in problem.train_batches(r.batch_size, 0, 0):
            pass
        if dev.type == "cuda":
            torch.cuda.synchronize()
        loader_s = time.time() - t0
        rec = train_run(r, 0, "tiny", device=str(dev), results_root=tmp / "results", progress=False,
                        problem=problem)
        steps = problem.steps_per_epoch(r.batch_size)
        epoch_s = [e.seconds for e in rec.epochs]
        opt_steps = steps * (problem.n_tasks if r.update == "steady_state" else 1)
        row = {"row": r.row, "tasks": problem.n_tasks, "update": r.update, "batches_per_epoch": steps,
               "optimizer_steps_per_epoch": opt_steps, "epoch_s": epoch_s,
               "s_per_batch": min(epoch_s) / steps, "images_per_s": steps * r.batch_size / min(epoch_s),
               "loader_s_per_epoch": loader_s, "final": rec.final["metrics"],
               "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"}
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
