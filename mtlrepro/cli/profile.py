"""``mtlrepro profile TABLE``: fvcore params/FLOPs of each row's model vs the published #P/#F."""
from __future__ import annotations

import argparse
import json

NAME = "profile"
HELP = "count parameters and FLOPs (fvcore) of every row's model, next to the published numbers"
EPILOG = "examples:\n  mtlrepro profile etr_nlp/table4\n  mtlrepro profile etr_nlp/table4 --json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", help="table id")
    p.add_argument("--json", action="store_true")
    p.add_argument("--search-profile", default="full", choices=["full", "tiny"],
                   help="whose stored searches give the searched rows' architectures (counted at full size)")


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..profile import profile_table
    from ..tables import get_table

    table = get_table(args.id)
    rows = profile_table(table, search_profile=args.search_profile)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=1))
        return 0
    out = []
    for r in rows:
        pub = "; ".join(f"{k}={v['text']}" for k, v in r.published.items())
        flops_cols = {k: v for k, v in r.published.items() if v.get("unit") not in ("params", "ms", "h")}
        gaps = "; ".join(_flops_gap(r.flops, v) for v in flops_cols.values()) if r.flops else ""
        conv = "; ".join(_flops_gap(r.flops_conv, v) for v in flops_cols.values()) if r.flops_conv else ""
        out.append([r.label, r.group or "", pub, r.note or f"{r.params:,}", _gap(r.params, r.published.get("params")),
                    r.note or f"{r.flops / 1e6:.1f}M", gaps, conv, r.flops_unit or "",
                    "×".join(map(str, r.input_shape or [])),
                    ", ".join(r.unsupported_ops) or ""])
    print(tabulate(out, headers=["row", "group", "published", "params", "vs #P", "compute (MACs)",
                                 "vs #F in the table's unit", "convs only: vs #F", "unit", "input",
                                 "ops fvcore skips"]))
    searched = [r for r in rows if "search" in (r.scope or "")]
    if searched:
        print(f"\nrows {', '.join(r.row for r in searched)}: the architecture a {args.search_profile}-profile search "
              "found (synthetic data: not the paper's), counted at the paper's input size.")
    from ..compare import params_key
    scope = ("every learnable parameter of the model" if params_key(table) == "params_total"
             else "learnable parameters used by one task's forward pass")
    from ..compare import flops_key
    fscope = ("every task of one image (a task-conditional model such as STL: the sum of its task networks' passes)"
              if flops_key(table) == "flops_all_tasks" else "one image, one task's forward pass")
    print(f"\nparams: {scope} (the paper's #P scope); compute: fvcore multiply-accumulates for {fscope}; "
          "'vs #F' converts them to the column's unit (FLOPs = 2 x MACs); 'convs only' counts the convolutions "
          "alone (context: some papers' counts are conv-only; the full count is the one compared).")
    return 0


def _flops_gap(macs: int, published: dict) -> str:
    """The gap to a printed compute cell in its column's unit (FLOPs = 2 x MACs; MACs = fvcore's
    count); a column whose convention the paper leaves open ("FLOPs-as-printed") gets both."""
    from ..compare import MACS_TO_UNIT
    unit = published.get("unit")
    if unit in MACS_TO_UNIT:
        return f"{_gap(int(macs * MACS_TO_UNIT[unit]), published)} ({unit})"
    return f"{_gap(macs, published)} (as MACs), {_gap(2 * macs, published)} (as 2xMACs)"


def _gap(measured: int | None, published: dict | None) -> str:
    if not measured or not published or not published.get("value"):
        return ""
    return f"{(measured - published['value']) / published['value'] * 100:+.1f}%"
