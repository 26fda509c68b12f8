"""``mtlrepro conflicts RECIPE``: CoNAL Table 1's gradient-conflict ratios per shared module.

The definition and the module mapping per backbone: :mod:`mtlrepro.conflicts`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .common import add_data_root_argument, add_profile_argument

NAME = "conflicts"
MAX_PAIRS_PRINTED = 10   # 5 tasks; more pairs only in the JSON
HELP = "ratio of negative cosine similarities between task gradients, per shared module (CoNAL Table 1)"
EPILOG = (
    "examples:\n"
    "  mtlrepro conflicts etr_nlp/table5/hard_sharing --profile tiny --set task_set=std3\n"
    "  mtlrepro conflicts etr_nlp/table5/hard_sharing --set task_set=std3 --checkpoint ckpt.pt --json\n"
    "  mtlrepro conflicts etr_nlp/table4/hard_sharing --profile tiny --checkpoint stored\n\n"
    "Every training sample is seen once, batch by batch (--batch-size, default the recipe's). Without\n"
    "--checkpoint the model is measured at initialisation (the run's seed); --checkpoint PATH reads a\n"
    "trainer checkpoint (a .pt with a 'model' state dict, or a bare state dict); --checkpoint stored\n"
    "uses the run's in-progress checkpoint under results/checkpoints/ (the trainer deletes it when the\n"
    "run finishes). --set KEY=VALUE overrides recipe fields (YAML values) before the profile applies.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe id (e.g. etr_nlp/table5/hard_sharing)")
    add_profile_argument(p)
    p.add_argument("--seed", type=int, default=0, help="the run's seed (initialisation, stored checkpoint)")
    p.add_argument("--checkpoint", default=None, help="PATH to a checkpoint .pt, or 'stored'")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. task_set=std3 (repeatable)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per gradient (default: the recipe's)")
    p.add_argument("--max-batches", type=int, default=None, help="stop after N batches (a partial pass)")
    p.add_argument("--bn-mode", default="train", choices=["train", "eval"],
                   help="BatchNorm statistics for the forwards (eval for --batch-size 1)")
    add_data_root_argument(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")


def _overrides(items: list[str]) -> dict:
    """``--set KEY=VALUE`` items as recipe fields (YAML values), each name and type checked."""
    import yaml

    from ..errors import UsageError
    from ..recipe import RecipeFieldError, check_fields

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise UsageError(f"--set {item}: the value is not valid YAML ({' '.join(str(e).split())})") from None
    try:
        return check_fields(out)
    except RecipeFieldError as e:
        raise UsageError(f"--set: {e}") from None


def run(args: argparse.Namespace) -> int:
    import torch

    from ..conflicts import conflict_table, measure_conflicts, paper_label
    from ..models import build_model
    from ..problems import build_problem
    from ..profiles import apply_profile
    from ..recipe import get_recipe
    from ..store import checkpoint_path, device_kind
    from ..train.trainer import load_checkpoint, pick_device

    if os.environ.get("MTLREPRO_THREADS"):  # as the trainer: oversubscribed CPUs
        torch.set_num_threads(int(os.environ["MTLREPRO_THREADS"]))
    recipe = get_recipe(args.recipe)
    over = _overrides(args.overrides)
    if over:
        recipe = recipe.with_overrides(**over)
    recipe = apply_profile(recipe, args.profile)
    dev = pick_device(args.device)
    problem = build_problem(recipe, args.profile, args.data_root, dev)
    torch.manual_seed(args.seed)   # the run's initialisation (as train_run builds it)
    model = build_model(recipe.backbone, recipe.sharing, problem.out_dims, **recipe.model_kwargs()).to(dev)

    ckpt = args.checkpoint
    if ckpt == "stored":
        ckpt = checkpoint_path(args.profile, recipe.fingerprint, args.seed, device_kind(dev))
        if not Path(ckpt).exists():
            print(f"mtlrepro conflicts: no stored checkpoint at {ckpt} (finished runs delete theirs)",
                  file=sys.stderr)
            return 2
    if ckpt:
        state = load_checkpoint(Path(ckpt))
        model.load_state_dict(state["model"] if "model" in state else state)
        epochs = len(state.get("epochs") or []) if "model" in state else None
        where = f"checkpoint {ckpt}" + (f" (after epoch {epochs})" if epochs else "")
    else:
        where = f"at initialisation (seed {args.seed}; no --checkpoint given)"

    result = measure_conflicts(model, problem, args.batch_size or recipe.batch_size,
                               max_batches=args.max_batches, bn_mode=args.bn_mode)
    result.update(recipe=recipe.id, fingerprint=recipe.fingerprint, profile=args.profile, seed=args.seed,
                  model_state=where, backbone=recipe.backbone, sharing=recipe.sharing,
                  weighting=recipe.weighting, task_set=recipe.task_set, synthetic=bool(problem.synthetic))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{recipe.id} ({recipe.backbone}, {recipe.sharing}, {recipe.task_set}: {', '.join(problem.task_names)})"
          f", profile {args.profile}" + (" - synthetic data, not comparable with the paper" if problem.synthetic else ""))
    print(f"model: {where}")
    print(f"{result['samples']} training samples in {result['batches']} batches of {result['batch_size']} "
          f"(BN {result['bn_mode']} mode), {len(result['pairs'])} task pairs per batch")
    print()
    print(conflict_table([(paper_label(recipe.sharing, recipe.weighting), result)]))
    print("\nratio of negative cosine similarities (%) between task gradients w.r.t. each shared module's"
          "\nparameters, over (batch, task pair); CoNAL Table 1 (its f_S^1..5 = ResNet-50 stem, layer1..4)")
    if len(result["pairs"]) > MAX_PAIRS_PRINTED:
        print(f"\nper task pair: {len(result['pairs'])} pairs, in --json (pair_negative)")
    elif len(result["pairs"]) > 1:
        from tabulate import tabulate
        n = result["batches"]
        rows = [[pair] + [f"{100.0 * result['pair_negative'][m][pair] / n:.2f}" for m in result["modules"]]
                for pair in result["pairs"]]
        print("\nper task pair (%):")
        print(tabulate(rows, headers=["pair"] + result["modules"], tablefmt="github", disable_numparse=True))
    return 0
