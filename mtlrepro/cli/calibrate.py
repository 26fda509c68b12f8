"""``mtlrepro calibrate TABLE``: measure seconds per training batch for `mtlrepro plan`."""
from __future__ import annotations

import argparse

NAME = "calibrate"
HELP = "time one training step of each ready recipe of a table and write a calibration file"
EPILOG = ("examples:\n  mtlrepro calibrate conal/table3 --device cpu --batch 2 --name cpu\n"
          "  mtlrepro calibrate conal/table3 --device cuda --name h200   # at the recipes' batch sizes\n"
          "  mtlrepro plan conal/table3 --calibration cpu")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="table id or recipe id")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--batch", type=int, default=0,
                   help="measure at this batch size and scale linearly to each recipe's (0: the recipe's own)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--name", required=True,
                   help="writes reproduce/calibration/<name>.yaml, merging into an existing file")


def run(args: argparse.Namespace) -> int:
    import yaml

    from ..calibrate import calibrate, write_calibration
    from ..cost import CALIBRATION_DIR
    from ..launch import resolve_recipes
    from ..train.trainer import pick_device

    recipes = resolve_recipes(args.target)
    content = calibrate(recipes, pick_device(args.device), args.batch, args.warmup, args.repeats)
    path = CALIBRATION_DIR / f"{args.name}.yaml"
    if path.exists():
        old = yaml.safe_load(path.read_text()) or {}
        if old.get("device") != content["device"] or old.get("reference_batch") != content["reference_batch"]:
            print(f"{path} holds timings of {old.get('device')!r}; not merging {content['device']!r} into it "
                  f"(choose another --name)")
            return 2
        failed = content.get("failed", {})   # a key that failed now keeps no older timing
        content["s_per_batch"] = {**{k: v for k, v in old.get("s_per_batch", {}).items() if k not in failed},
                                  **content["s_per_batch"]}
    write_calibration(content, path)
    print(f"wrote {path} ({len(content['s_per_batch'])} entries)")
    return 1 if content.get("failed") else 0
