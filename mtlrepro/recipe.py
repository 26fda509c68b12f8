"""Recipes: the runnable, reviewable config behind each published row.

A recipe file ``reproduce/recipes/<paper>/<table>.yaml`` has ``defaults`` (the paper's
schedule), ``choices`` (every hyper-parameter the paper leaves open, with the reason for the
default), ``tolerances`` (column key -> absolute tolerance in printed units, or ``"N%"`` of the
printed value: declared once, applied by the diff) and one entry per table row.

A :class:`Recipe` is frozen. Its :attr:`~Recipe.fingerprint` hashes the *resolved* configuration
(every option, in-code defaults of the model and weighting written out, see
:mod:`mtlrepro.fingerprint`) and the implementation version of every component it uses - not its
id, table, notes, seed list or ``fitted`` marks. The same configuration used by several tables is
therefore one fingerprint, trained once; a changed option or a bumped implementation gets new runs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .registry import Registry
from .tables import REPRODUCE_DIR, TableFormatError

RECIPES_DIR = REPRODUCE_DIR / "recipes"
#: provenance, not configuration: a run is a function of the rest (a dependent recipe's upstream
#: output is embedded in its resolved form, see mtlrepro/pipeline.py)
NOT_RESULT_FIELDS = {"id", "table", "row", "seeds", "notes", "status", "fitted", "architecture_from",
                     "architecture_seed", "upstream", "extra"}
OPTIONAL_MODEL_FIELDS = ("head", "conv_unit", "head_kwargs", "pretrained")
#: fields left out of the fingerprint while unset, so that adding them changed no existing run
OPTIONAL_FIELDS = (*OPTIONAL_MODEL_FIELDS, "lr_schedule", "grad_clip", "search_val_fraction", "encoder_lr",
                   "augment", "loss_weights")


@dataclass(frozen=True)
class Recipe:
    id: str
    table: str
    row: str
    dataset: str                       # celeba | cityscapes | nyuv2 | ...
    task_set: str                      # e.g. group8, attr40
    backbone: str                      # resnet18 | vgg16 | segnet | ...
    sharing: str                       # model family: hard_sharing, attentive, task_routing, ...
    head: str | None = None            # per-task head (models.HEADS); None: the backbone's default
    conv_unit: str | None = None       # conv unit the scheme builds with (None: conv -> BN)
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None      # backbone initialisation, e.g. "imagenet1k_v1" (None: from scratch)
    weighting: str = "equal"           # loss/gradient combination: equal, gradnorm, mgda_ub
    update: str = "joint"              # joint | steady_state | synchronized (one task per forward)
    sharing_kwargs: dict[str, Any] = field(default_factory=dict)
    weighting_kwargs: dict[str, Any] = field(default_factory=dict)
    loss_weights: list[float] | None = None   # per-task loss scales w_t L_t under any weighting (None: 1)
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    encoder_lr: float | None = None    # None: lr everywhere; else the heads at lr, the rest at encoder_lr (DPT)
    lr_schedule: str | None = None     # None: constant lr; "step:<epochs>:<gamma>" | "poly:<power>" (train/optim.py)
    epochs: int = 40
    batch_size: int = 256
    eval_split: str = "val"
    image_size: int = 64
    resize_mode: str = "square"
    augment: str | None = None         # training augmentation on the device: None | "vandenhende" (problems/)
    selection: str = "last"            # last | mean_last:<k> | best:<metric> | best_delta_vs_first:<..> (train/selection.py)
    amp: bool = False                  # bf16 autocast (off for fidelity; reported when on)
    tf32: bool = False                 # TF32 matmuls/convolutions on GPUs (set explicitly, recorded)
    channels_last: bool = False
    max_steps_per_epoch: int | None = None   # only the tiny profile sets it
    grad_clip: float | None = None     # total-norm gradient clipping before each optimizer step (None: off)
    search_val_fraction: float = 0.0   # > 0: hold out this fraction of the training split for a search's
    search_split_seed: int = 688       #   upper-level batches (CoNAL: 0.2, numpy seed 688 as released)
    architecture_from: str | None = None   # recipe id (or row of this table) whose run exports the architecture
    architecture_seed: int = 0         # which seed's search the architecture comes from
    upstream: dict[str, Any] = field(default_factory=dict)   # set when resolved: the run it came from
    extra: bool = False                # run with its table but not one of its printed rows (a documented variant)
    measure_conflicts: int = 0         # every k epochs and at the last, CoNAL Table 1's conflict ratios (0: off)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    status: str = "ready"              # ready | not_implemented
    notes: str = ""
    fitted: dict[str, str] = field(default_factory=dict)   # column -> why it was fitted to the paper

    def result_dict(self) -> dict[str, Any]:
        """Everything that can change a run's result, as written in the recipe (the model fields
        ``head``, ``conv_unit``, ``head_kwargs`` only when set, so their defaults add nothing)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in NOT_RESULT_FIELDS
               and not (f.name in OPTIONAL_FIELDS and not getattr(self, f.name))}
        if not self.search_val_fraction:
            out.pop("search_split_seed", None)   # only means something with a search split
        return out

    def model_kwargs(self, weights: bool = True) -> dict[str, Any]:
        """The keyword arguments of :func:`mtlrepro.models.build_model` after ``out_dims``
        (``weights=False``: without ``pretrained``, for counting parameters and FLOPs, which do not
        depend on the initialisation)."""
        extra = {k: getattr(self, k) for k in OPTIONAL_MODEL_FIELDS if getattr(self, k)}
        if not weights:
            extra.pop("pretrained", None)
        return {**extra, **self.sharing_kwargs}

    def resolved(self) -> dict[str, Any]:
        """:meth:`result_dict` with the in-code defaults of the model and weighting written out."""
        from .fingerprint import resolve
        return resolve(self)

    def implementation(self) -> dict[str, int]:
        """The implementation version of every component this recipe runs."""
        from .fingerprint import implementation_versions
        return implementation_versions(self)

    @property
    def fingerprint(self) -> str:
        if self.architecture_from and "architecture" not in self.sharing_kwargs:
            raise ValueError(f"{self.id} takes its architecture from {self.architecture_from!r}: its fingerprint "
                             f"exists once that run is stored (mtlrepro.pipeline.resolve_upstream)")
        return _fingerprint(self)

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        return d

    def resolved_dict(self) -> dict[str, Any]:
        """What a run record stores: the recipe, its resolved configuration and versions."""
        return dict(self.to_dict(), resolved=self.resolved(), implementation=self.implementation())

    def with_overrides(self, **kw: Any) -> "Recipe":
        return dataclasses.replace(self, **kw)


@lru_cache(maxsize=4096)
def _fingerprint(recipe: "Recipe") -> str:
    blob = json.dumps({"config": recipe.resolved(), "implementation": recipe.implementation()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Profile:
    """How a recipe is run: ``full`` as the paper says, ``tiny`` on generated data in minutes."""

    name: str
    synthetic: bool
    overrides: dict[str, Any]
    description: str


PROFILES = {
    "full": Profile("full", False, {}, "the paper's schedule on the real dataset"),
    "tiny": Profile("tiny", True, {"epochs": 2, "batch_size": 8, "seeds": (0,), "max_steps_per_epoch": 2,
                             "image_size": 32, "pretrained": None},
                    "2 epochs × 2 steps of batch 8 at 32×32 on a generated tiny dataset in the real "
                    "on-disk format, from random initialisation (no pretrained weights); exercises the "
                    "whole pipeline, numbers are not comparable with the paper"),
}


def apply_profile(recipe: Recipe, profile: str) -> Recipe:
    if profile not in PROFILES:
        from .registry import UnknownKeyError
        raise UnknownKeyError("profile", profile, list(PROFILES))
    return recipe.with_overrides(**PROFILES[profile].overrides)


_FIELD_NAMES = {f.name for f in fields(Recipe)}


def _make(entry: dict, defaults: dict, table: str, where: str) -> Recipe:
    merged = {**defaults, **entry}
    unknown = set(merged) - _FIELD_NAMES
    if unknown:
        raise TableFormatError(f"{where}: unknown recipe fields {sorted(unknown)}")
    merged.setdefault("table", table)
    if "id" not in merged:
        merged["id"] = f"{table}/{merged['row']}"
    for k in ("seeds",):
        if k in merged:
            merged[k] = tuple(merged[k])
    for k in ("lr", "weight_decay"):
        if k in merged:
            merged[k] = float(merged[k])
    try:
        return Recipe(**merged)
    except TypeError as e:
        raise TableFormatError(f"{where}: {e}") from None


@dataclass(frozen=True)
class RecipeSet:
    """All recipes of one table file, with the documented choices."""

    table: str
    recipes: tuple[Recipe, ...]
    choices: tuple[dict, ...]
    path: Path
    figure: dict | None = None        # set for figure sweeps (no printed numbers to diff against)
    suite: dict | None = None         # set for method suites (no published table: run, not diffed)
    tolerances: dict[str, float | str] = field(default_factory=dict)   # column -> abs or "N%"
    #: where a Δ column finds its baseline when the table prints no per-task metrics (CoNAL Tables 4
    #: and 7: Δ_I against Table 3's STL row): ``{"table": id, "row": key}``
    delta_reference: dict | None = None


def _recipe_file_data(table_id: str, seen: tuple[str, ...] = ()) -> dict:
    """A recipe file's YAML with ``extends:`` applied (defaults, choices and tolerances of the file
    it extends come first; its own override them)."""
    path = RECIPES_DIR / f"{table_id}.yaml"
    if not path.exists():
        raise TableFormatError(f"recipe file for {table_id!r} not found ({path})")
    return _with_extends(yaml.safe_load(path.read_text()), path, seen + (table_id,))


def _with_extends(data: dict, path: Path, seen: tuple[str, ...]) -> dict:
    base_id = data.get("extends")
    if not base_id:
        return data
    if base_id in seen:
        raise TableFormatError(f"{path}: extends {base_id!r} again ({' -> '.join(seen)})")
    base = _recipe_file_data(base_id, seen)
    return dict(data, defaults={**(base.get("defaults") or {}), **(data.get("defaults") or {})},
                choices=[*(base.get("choices") or ()), *(data.get("choices") or ())],
                tolerances={**(base.get("tolerances") or {}), **(data.get("tolerances") or {})},
                _base=base)


def _entry(e: dict, data: dict, where: str) -> dict:
    """A recipe entry with ``from: <row of the extended file>`` expanded: that row's entry, then
    this one's fields over it (e.g. the same model with ``measure_conflicts`` on)."""
    src = e.get("from")
    if not src:
        return e
    base = data.get("_base")
    rows = {b["row"]: b for b in (base or {}).get("recipes", ())}
    if src not in rows:
        raise TableFormatError(f"{where}: from {src!r} names no row of {data.get('extends') or 'an extended file'} "
                               f"(rows: {', '.join(sorted(rows))})")
    inherited = dict(_entry(rows[src], base, where))
    up = inherited.get("architecture_from")
    if up and "/" not in up:            # a bare row names a recipe of the file it was written in
        inherited["architecture_from"] = f"{base['table']}/{up}"
    return {**inherited, **{k: v for k, v in e.items() if k != "from"}}


def load_recipe_file(path: Path) -> RecipeSet:
    data = _with_extends(yaml.safe_load(path.read_text()), path, ())
    table = data["table"]
    defaults = data.get("defaults") or {}
    recipes = tuple(_make(_entry(e, data, f"{path} recipe {e.get('row')}"), defaults, table,
                          f"{path} recipe {e.get('row')}") for e in data["recipes"])
    tolerances = dict(data.get("tolerances") or {})
    for key, tol in tolerances.items():
        parse_tolerance(tol, 1.0, where=f"{path} tolerances.{key}")
    return RecipeSet(table, recipes, tuple(data.get("choices") or ()), path, figure=data.get("figure"),
                     tolerances=tolerances, suite=data.get("suite"), delta_reference=data.get("delta_reference"))


def parse_tolerance(tol: float | str, published: float, where: str = "tolerance") -> float:
    """An absolute tolerance from a declared one: a number (printed units) or ``"N%"`` of ``published``."""
    if isinstance(tol, str) and tol.strip().endswith("%"):
        try:
            return abs(published) * float(tol.strip()[:-1]) / 100.0
        except ValueError:
            pass
    elif isinstance(tol, (int, float)) and not isinstance(tol, bool):
        return float(tol)
    raise TableFormatError(f"{where}: expected a number or a percentage like '1%', got {tol!r}")


@lru_cache(maxsize=1)
def recipe_sets() -> dict[str, RecipeSet]:
    out: dict[str, RecipeSet] = {}
    for path in sorted(RECIPES_DIR.glob("*/*.yaml")):
        rs = load_recipe_file(path)
        out[rs.table] = rs
    return out


@lru_cache(maxsize=1)
def recipe_registry() -> Registry[Recipe]:
    reg: Registry[Recipe] = Registry("recipe")
    for rs in recipe_sets().values():
        for r in rs.recipes:
            reg.register(r.id, r)
    return reg


def get_recipe(recipe_id: str) -> Recipe:
    return recipe_registry().get(recipe_id)


def recipes_for_table(table_id: str) -> list[Recipe]:
    rs = recipe_sets().get(table_id)
    return list(rs.recipes) if rs else []
