"""Jobs: which (recipe, seed) runs a target needs, and which of them are missing from the store.

A job is finished when its record is in the store (:mod:`mtlrepro.store`), so planning is a read
of the store: :func:`plan_jobs` splits a target's jobs into those to run, those stored, and the
recipes not run (not implemented, or waiting for an upstream run of a pipeline,
:mod:`mtlrepro.pipeline`). Running them is :mod:`mtlrepro.launch`'s job.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .pipeline import Waiting, init_waiting, resolve_upstream
from .profiles import apply_profile
from .recipe import Recipe, get_recipe, recipes_for_table
from .registry import UnknownKeyError
from .store import RunRecord, find_run, weights_path


@dataclass(frozen=True)
class Job:
    recipe: Recipe          # with the profile applied
    seed: int
    profile: str
    retry_of: int | None = None   # a rerun of the failed record with this mtime (ns): it is replaced

    @property
    def name(self) -> str:
        return f"{self.recipe.id} seed {self.seed}"


def resolve_recipes(target: str) -> list[Recipe]:
    """A table id (all its recipes), a bare table name, or one recipe id."""
    from .recipe import recipe_sets
    from .tables import get_table, table_registry

    if target in recipe_sets() and target not in table_registry():  # a figure sweep
        rs = recipe_sets()[target]
        if (rs.figure or {}).get("kind") == "tradeoff":   # a figure of tables' rows (GatedMTL Figure 2)
            return [r for p in dict.fromkeys(p["table"] for p in rs.figure["panels"]) for r in resolve_recipes(p)]
        return list(rs.recipes)
    if target in table_registry() or "/" not in target or target.count("/") == 1:
        try:
            table = get_table(target)
        except UnknownKeyError:
            table = None
        if table is not None:
            recipes = recipes_for_table(table.id)
            if not recipes:
                raise UnknownKeyError(f"recipe set (table {table.id} has no recipes yet)", table.id,
                                      [r for r in _tables_with_recipes()])
            ref = getattr(recipe_sets().get(table.id), "delta_reference", None)
            if ref:   # the row another table's Δ is measured against runs with it (CoNAL Tables 4, 7)
                recipes = recipes + [get_recipe(f"{ref['table']}/{ref['row']}")]
            return recipes
    return [get_recipe(target)]


def _tables_with_recipes() -> list[str]:
    from .recipe import recipe_sets
    return list(recipe_sets())


def plan_jobs(recipes: list[Recipe], profile: str, seeds: list[int] | None = None,
              results_root: Path | None = None, device: str | None = None
              ) -> tuple[list[Job], list[tuple[Job, RunRecord]], list[Recipe]]:
    """(jobs to run, jobs already stored with their records, recipes not run: not implemented, or
    ``status`` "waiting for <upstream> ..." when their upstream run is not stored yet).

    A job is stored when a record of its fingerprint and seed exists for the device kind it would
    run on (``device``; the default device when None). Recipes of several tables that resolve to
    one configuration are one job: it is planned once.
    """
    from .store import device_kind
    from .train.steps import check_update_weighting
    from .train.trainer import pick_device

    kind = device_kind(pick_device(device))
    todo, done, skipped = [], [], []
    seen: set[tuple[str, int]] = set()
    sources: dict[str, Recipe | None] = {}   # recipe id -> the recipe its weights come from, resolved once
    for r in recipes:
        if r.status != "ready":
            skipped.append(r)
            continue
        check_update_weighting(r.update, r.weighting)   # an unsupported pair stops the sweep before any run
        eff = apply_profile(r, profile)
        try:
            eff = resolve_upstream(eff, profile, results_root)
        except Waiting as w:   # its upstream (a search) has not run: a later wave runs it
            skipped.append(dataclasses.replace(eff, status=f"waiting for {w.upstream.id} seed {w.seed} ({w.why})"))
            continue
        waiting = []
        for s in (seeds if seeds is not None else list(eff.seeds)):
            if (eff.fingerprint, s) in seen:
                continue
            why = init_waiting(eff, s, profile, kind, results_root)
            if why is not None:   # its initialisation (e.g. GatedMTL's STL weights) is not stored: a later wave
                waiting.append(why)
                if eff.id not in sources:
                    sources[eff.id] = _init_source(eff, profile, results_root)
                source = _init_source_job(sources[eff.id], s, profile, results_root, kind)
                if source is not None and (source.recipe.fingerprint, s) not in seen:
                    seen.add((source.recipe.fingerprint, s))
                    todo.append(source)
                continue
            seen.add((eff.fingerprint, s))
            job = Job(eff, s, profile)
            rec = find_run(profile, eff.id, eff.fingerprint, s, results_root, device_kind=kind)
            if rec is not None and eff.keep_weights and rec.status == "finished" and \
                    not weights_path(profile, eff.fingerprint, s, kind, results_root).exists():
                rec = None        # stored without the weights another recipe starts from: run again to keep them
            (done.append((job, rec)) if rec is not None else todo.append(job))
        if waiting:
            skipped.append(dataclasses.replace(eff, status=waiting[0] + (f" (and {len(waiting) - 1} more seeds)"
                                                                         if len(waiting) > 1 else "")))
    return todo, done, skipped


def _init_source(recipe: Recipe, profile: str, results_root: Path | None) -> Recipe | None:
    """The recipe whose stored weights ``recipe`` starts from, resolved as a job (None: none, or
    not runnable)."""
    from .pipeline import init_recipe

    src = init_recipe(recipe)
    if src is None or src.status != "ready":
        return None
    return resolve_upstream(apply_profile(dataclasses.replace(src, keep_weights=True), profile), profile, results_root)


def _init_source_job(src: Recipe | None, seed: int, profile: str, results_root: Path | None, kind: str) -> Job | None:
    """The job that stores the weights a recipe starts from (``src``: :func:`_init_source`), when
    they are missing and that run is not failed (a failed source leaves its dependants waiting, reported)."""
    if src is None:
        return None
    rec = find_run(profile, src.id, src.fingerprint, seed, results_root, device_kind=kind)
    if rec is not None and rec.status != "finished":
        return None
    return Job(src, seed, profile)


def record_path(job: Job, device: str | None, results_root: Path | None) -> Path:
    """Where ``job``'s record goes when it runs on ``device`` (its claim is next to it)."""
    from .store import device_kind, run_path
    from .train.trainer import pick_device
    return run_path(job.profile, job.recipe.fingerprint, job.seed, device_kind(pick_device(device)), results_root)


def retry(job: Job, rec: RunRecord, results_root: Path | None = None) -> Job:
    """``job`` as a rerun of its failed record ``rec`` (only that record is replaced: a sweep that
    finds another record there, a concurrent retry's, leaves the job alone)."""
    from .store import run_path
    path = run_path(job.profile, job.recipe.fingerprint, job.seed, rec.environment.get("device_kind") or "unknown",
                    results_root)
    try:
        return dataclasses.replace(job, retry_of=path.stat().st_mtime_ns)
    except OSError:
        return job


