"""Runs that start from another run's weights (``init_from``: GatedMTL's task branches from the STL
networks, Sec. 4.1) and runs whose final weights are kept for them (``keep_weights``).

The source is addressed like its record: (profile, fingerprint, seed, device kind) ->
:func:`mtlrepro.store.weights_path`; seed ``k`` of the dependant starts from seed ``k`` of the source
(a choice: the paper does not pair seeds; pairing keeps the seeds independent). The weights are
written atomically before the source's record, so a stored record with ``keep_weights`` has them
(the planner reruns one that does not: :func:`mtlrepro.launch.plan_jobs`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..profiles import apply_profile

from ..recipe import Recipe, get_recipe
from ..store import weights_path
from .faults import EnvironmentFault, save_checkpoint

__all__ = ["save_final_weights", "load_init_weights"]


def save_final_weights(model: nn.Module, recipe: Recipe, seed: int, profile: str, device_kind: str,
                       results_root: Path | None = None) -> Path:
    path = weights_path(profile, recipe.fingerprint, seed, device_kind, results_root)
    save_checkpoint(path, {"model": model.state_dict(), "recipe": recipe.id, "fingerprint": recipe.fingerprint,
                           "seed": seed})
    return path


def load_init_weights(model: nn.Module, recipe: Recipe, seed: int, profile: str, device_kind: str,
                      out_dims: list[int], results_root: Path | None = None) -> None:
    """Initialise ``model`` from the stored weights its ``init_weights`` names."""
    from ..models import build_model

    init = recipe.init_weights
    path = weights_path(profile, init["fingerprint"], seed, device_kind, results_root)
    if not path.exists():
        raise EnvironmentFault(f"{recipe.id} seed {seed} starts from the weights of {init['recipe']} seed {seed}, "
                               f"which are not stored at {path}: run `mtlrepro run {recipe.table}` (it runs the "
                               f"source first)", path)
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != init["fingerprint"]:
        raise EnvironmentFault(f"{path} holds the weights of fingerprint {str(state.get('fingerprint'))[:12]}, not "
                               f"{init['fingerprint'][:12]}: the file was moved or overwritten; remove it", path)
    src = apply_profile(get_recipe(init["recipe"]), profile)
    source = build_model(src.backbone, src.sharing, out_dims, **src.model_kwargs(weights=False))
    source.load_state_dict(state["model"])
    loader = getattr(model, "load_task_branches", None)
    if loader is None:
        raise ValueError(f"{recipe.id}: sharing {recipe.sharing!r} cannot start from another run's weights "
                         f"(init_from is GatedMTL's STL initialisation)")
    dev = next(model.parameters()).device
    loader(source.to(dev))
