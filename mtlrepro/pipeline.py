"""Recipes that depend on another recipe's output: search -> architecture -> retrain.

A recipe with ``architecture_from: <recipe id or row of the same table>`` (and
``architecture_seed``, default 0) retrains the architecture the upstream run exported
(``record.artifacts["architecture"]``, :mod:`mtlrepro.search.architecture`). It is *abstract*
until that run is stored: :func:`resolve_upstream` returns the concrete recipe, the architecture
embedded in ``sharing_kwargs`` (so it is part of the fingerprint: the same architecture from two
searches is one retraining run) and the provenance in ``upstream`` (not fingerprinted), or raises
:class:`Waiting`. The upstream's own record is its artifact's store: content-addressed by the
upstream fingerprint, written atomically like every record, so a pipeline killed between search
and retrain resumes at the retrain (the search is found, not redone) and one killed inside the
search resumes from the search's checkpoint.

The launchers run waves (:func:`run_pipeline`): every runnable job, then whatever became
runnable, until nothing is left or nothing progresses (a failed upstream leaves its dependants
waiting, reported).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Callable

from .profiles import apply_profile

from .recipe import Recipe, get_recipe

__all__ = ["Waiting", "upstream_recipe", "init_recipe", "resolve_upstream", "resolve_init", "init_waiting",
           "architecture_of", "run_pipeline"]

#: per architecture kind, the keys of an exported architecture that define it (the rest, e.g. the
#: search's probabilities, is provenance): trees (search/architecture.py) and MTL-NAS's fusion edges
_ARCH_KEYS = {"branched": ("n_tasks", "groups"), "mtl_nas": ("kind", "n_tasks", "n_points", "edges")}


class Waiting(Exception):
    """The recipe's upstream run is not stored (or did not finish)."""

    def __init__(self, recipe: Recipe, upstream: Recipe, seed: int, why: str):
        self.recipe, self.upstream, self.seed, self.why = recipe, upstream, seed, why
        super().__init__(f"{recipe.id} waits for {upstream.id} seed {seed} ({why})")


def upstream_recipe(recipe: Recipe) -> Recipe | None:
    """The recipe ``recipe`` takes its architecture from (a bare row names one of the same table)."""
    return _named_recipe(recipe, recipe.architecture_from)


def architecture_of(record) -> dict:
    """The architecture a finished search record exported (its defining keys)."""
    arch = (record.artifacts or {}).get("architecture")
    if not arch:
        raise ValueError(f"run {record.recipe_id} seed {record.seed} exported no architecture "
                         f"(record.artifacts); is it a search recipe?")
    kind = arch.get("kind", "branched")
    if kind not in _ARCH_KEYS:
        raise ValueError(f"run {record.recipe_id} seed {record.seed} exported an architecture of unknown kind "
                         f"{kind!r} (known: {', '.join(sorted(_ARCH_KEYS))})")
    return {k: arch[k] for k in _ARCH_KEYS[kind]}


def init_recipe(recipe: Recipe) -> Recipe | None:
    """The recipe whose trained weights initialise ``recipe`` (``init_from``; GatedMTL's STL rows)."""
    return _named_recipe(recipe, recipe.init_from)


def _named_recipe(recipe: Recipe, name: str | None) -> Recipe | None:
    """The recipe ``name`` (a recipe id, or a bare row of ``recipe``'s table), None when unset."""
    if not name:
        return None
    return get_recipe(name if "/" in name else f"{recipe.table}/{name}")


def resolve_init(recipe: Recipe, profile: str, results_root: Path | None = None) -> Recipe:
    """``recipe`` with ``init_weights`` naming its initialisation's recipe and fingerprint (so the
    fingerprint of a run depends on what it starts from); the weights themselves are per seed
    (seed ``k`` starts from the source's seed ``k``), checked by :func:`init_waiting`."""
    up = init_recipe(recipe)
    if up is None:
        return recipe
    up = resolve_upstream(apply_profile(up, profile), profile, results_root)
    return dataclasses.replace(recipe, init_weights={"recipe": up.id, "fingerprint": up.fingerprint})


def init_waiting(recipe: Recipe, seed: int, profile: str, device_kind: str,
                 results_root: Path | None = None) -> str | None:
    """Why seed ``seed`` of a resolved recipe cannot start yet (its source's weights are not stored), or None."""
    from .store import find_run, weights_path

    init = recipe.init_weights
    if not init:
        return None
    rec = find_run(profile, init["recipe"], init["fingerprint"], seed, results_root, device_kind=device_kind)
    if rec is None:
        return f"waiting for {init['recipe']} seed {seed} (not run yet: its weights initialise this run)"
    if rec.status != "finished":
        return f"waiting for {init['recipe']} seed {seed} (its run {rec.status})"
    if not weights_path(profile, init["fingerprint"], seed, device_kind, results_root).exists():
        return f"waiting for {init['recipe']} seed {seed} (its weights are not stored: it reruns to store them)"
    return None


def resolve_upstream(recipe: Recipe, profile: str, results_root: Path | None = None) -> Recipe:
    """The concrete form of ``recipe`` (itself when it has no upstream); raises :class:`Waiting`."""
    from .store import find_run

    recipe = resolve_init(recipe, profile, results_root)
    up = upstream_recipe(recipe)
    if up is None:
        return recipe
    up = apply_profile(up, profile)
    if up.architecture_from:
        up = resolve_upstream(up, profile, results_root)
    seed = recipe.architecture_seed
    rec = find_run(profile, up.id, up.fingerprint, seed, results_root)
    if rec is None:
        raise Waiting(recipe, up, seed, "not run yet")
    if rec.status != "finished":
        raise Waiting(recipe, up, seed, f"its run {rec.status}: {rec.failure.splitlines()[0] if rec.failure else ''}")
    arch = architecture_of(rec)
    return dataclasses.replace(
        recipe, sharing_kwargs={**recipe.sharing_kwargs, "architecture": arch},
        upstream={"recipe": up.id, "fingerprint": up.fingerprint, "seed": seed})


def run_pipeline(first: tuple[list, list, list], plan: Callable[[], tuple[list, list, list]],
                 launch: Callable[[list], None], max_waves: int = 8) -> tuple[list, list, list]:
    """Launch ``first`` (a plan: to run, stored, not run), then replan and launch in waves until no
    job is left or a wave makes no progress; returns the last plan. ``plan()`` is
    :func:`mtlrepro.launch.plan_jobs` bound to its arguments."""
    todo, done, skipped = first
    for wave in range(max_waves):
        if not todo:
            break
        waiting = [r for r in skipped if r.status.startswith("waiting")]
        if wave:
            print(f"pipeline wave {wave + 1}: {len(todo)} jobs whose upstream is now stored", file=sys.stderr)
        launch(todo)
        before = {j.name for j in todo}
        todo, done, skipped = plan()
        if not waiting or {j.name for j in todo} == before:
            break
    return todo, done, skipped
