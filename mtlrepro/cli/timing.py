"""``mtlrepro timing TABLE``: forward / backward ms per iteration and ratios to Standard MTL (GatedMTL Table 9)."""
from __future__ import annotations

import argparse
import json

NAME = "timing"
HELP = "time the forward and backward pass of each ready recipe of a table (GatedMTL Table 9's protocol)"
EPILOG = ("examples:\n  mtlrepro timing gatedmtl/table9 --device cuda            # batch 4, 10 warm-up, 1000 timed\n"
          "  mtlrepro timing gatedmtl/table9 --device cpu --iters 3 --warmup 1 --image-size 128\n"
          "writes results/timing/<paper>/<table>/<device kind>[-<size>].json and prints the ratios to Standard MTL")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="table id")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=None,
                   help="input height (width scaled with it) instead of the recipe's, e.g. on a CPU")


def run(args: argparse.Namespace) -> int:
    from ..recipe import recipes_for_table
    from ..step_timing import ratio_table, time_table
    from ..store import RESULTS_DIR, device_kind, device_kind_slug
    from ..tables import get_table
    from ..train.trainer import pick_device

    table = get_table(args.target)
    device = pick_device(args.device)
    content = time_table(recipes_for_table(table.id), device, args.batch, args.warmup, args.iters, args.image_size)
    name = device_kind_slug(device_kind(device)) + (f"-{args.image_size}px" if args.image_size else "")
    path = RESULTS_DIR / "timing" / table.id / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"table": table.id, **content}, indent=1))
    tmp.replace(path)
    print(f"\n{table.id} on {content['device']} (batch {args.batch}, {args.iters} timed after {args.warmup}; "
          f"input {'recipe size' if not args.image_size else f'{args.image_size} px high'}):\n")
    print(ratio_table(table, content))
    print(f"\nwrote {path}")
    return 1 if content.get("failed") else 0
