"""Recipes: the runnable, reviewable config behind each published row.

A recipe file ``reproduce/recipes/<paper>/<table>.yaml`` has ``defaults`` (the paper's
schedule), ``choices`` (every hyper-parameter the paper leaves open, with the reason for the
default), ``tolerances`` (column key -> absolute tolerance in printed units, or ``"N%"`` of the
printed value: declared once, applied by the diff) and one entry per table row; reading and
checking the files is :mod:`mtlrepro.recipe_files`.

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
from typing import Any

#: provenance, not configuration: a run is a function of the rest (a dependent recipe's upstream
#: output is embedded in its resolved form, see mtlrepro/pipeline.py)
NOT_RESULT_FIELDS = {"id", "table", "row", "seeds", "notes", "status", "fitted", "architecture_from",
                     "architecture_seed", "upstream", "extra", "init_from", "keep_weights"}
OPTIONAL_MODEL_FIELDS = ("head", "conv_unit", "head_kwargs", "pretrained")
#: fields left out of the fingerprint while unset, so that adding them changed no existing run
OPTIONAL_FIELDS = (*OPTIONAL_MODEL_FIELDS, "lr_schedule", "grad_clip", "search_val_fraction", "encoder_lr",
                   "augment", "loss_weights", "init_weights")


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
    init_from: str | None = None       # recipe id (or row of this table) whose trained weights initialise this one
    init_weights: dict[str, Any] = field(default_factory=dict)   # set when resolved: that recipe's id and fingerprint
    keep_weights: bool = False         # store the final weights (set for every recipe another one is init_from)
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
        if self.init_from and not self.init_weights:
            raise ValueError(f"{self.id} is initialised from {self.init_from!r}: its fingerprint names that recipe's "
                             f"(mtlrepro.pipeline.resolve_upstream)")
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


#: the recipe files' API (mtlrepro/recipe_files.py), importable from here as well
_FILE_API = ("RECIPES_DIR", "RecipeFieldError", "RecipeFiles", "RecipeSet", "check_fields", "get_recipe",
             "load_recipe_file", "parse_tolerance", "recipe_registry", "recipe_sets", "recipes_for_table")


def __getattr__(name: str) -> Any:
    """``from mtlrepro.recipe import get_recipe`` and friends (PEP 562): recipe_files imports this
    module, so its names are looked up when first asked for, not imported at the top."""
    if name in _FILE_API:
        from . import recipe_files
        return getattr(recipe_files, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
