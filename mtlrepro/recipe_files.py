"""Recipe files: reading ``reproduce/recipes/<paper>/<table>.yaml`` into checked :class:`~mtlrepro.recipe.Recipe` s.

A file has ``defaults`` (the paper's schedule), ``choices`` (every hyper-parameter the paper leaves
open, with the reason for the default), ``tolerances`` and one entry per table row; ``extends``
names a file whose keys it starts from. Every field is checked by name and type against
:class:`~mtlrepro.recipe.Recipe` (an unknown field gets the closest valid one, with the file and
line); :func:`recipe_sets` reads every file once, :func:`get_recipe` finds one recipe by id.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import at_line, conforms, did_you_mean, expected, given, read_yaml, shown_path
from .recipe import Recipe
from .registry import Registry, UnknownKeyError
from .tables import REPRODUCE_DIR, TableFormatError

RECIPES_DIR = REPRODUCE_DIR / "recipes"

_FIELD_NAMES = {f.name for f in fields(Recipe)}
#: the top-level keys of a recipe file
FILE_FIELDS = ("table", "extends", "defaults", "choices", "tolerances", "recipes", "figure", "suite",
               "delta_reference")


class RecipeFieldError(TableFormatError):
    """One recipe field that is unknown or of the wrong type (``field``: its name)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@lru_cache(maxsize=1)
def _field_types() -> dict[str, Any]:
    """The :class:`Recipe` annotations, evaluated (none, so no type check, if one cannot be)."""
    try:
        return typing.get_type_hints(Recipe)
    except (NameError, TypeError, AttributeError):
        return {}


def check_fields(values: dict) -> dict:
    """``values`` as :class:`Recipe` fields: every name known and every value of its annotated type
    (a number YAML read as a string, ``1e-4``, becomes a float); else :class:`RecipeFieldError`
    naming the field, the closest valid one, what was given and what is expected."""
    types, out = _field_types(), {}
    for k, v in values.items():
        if k not in _FIELD_NAMES:
            raise RecipeFieldError(str(k), f"unknown recipe field {k!r}{did_you_mean(str(k), sorted(_FIELD_NAMES))}")
        tp = types.get(k, Any)
        if isinstance(v, str) and conforms(1.5, tp) and not conforms(v, tp):
            try:
                v = float(v)
            except ValueError:
                pass
        if not conforms(v, tp):
            raise RecipeFieldError(k, f"field {k!r} is {given(v)}; expected {expected(tp)}")
        out[k] = v
    return out


def _make(entry: dict, defaults: dict, table: str, where: str | Callable[[str | None], str]) -> Recipe:
    """The recipe of one entry over the file's (checked) ``defaults``; ``where(field)`` starts an
    error message (file, line, row)."""
    loc = where if callable(where) else (lambda _f: where)
    try:
        merged = {**defaults, **check_fields(entry)}
    except RecipeFieldError as e:
        raise TableFormatError(f"{loc(e.field)}: {e}") from None
    merged.setdefault("table", table)
    missing = [f.name for f in fields(Recipe) if f.name not in merged and f.name != "id"
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise TableFormatError(f"{loc(None)}: missing required recipe field(s) {', '.join(map(repr, missing))} "
                               "(set them in the entry or the file's defaults)")
    if "id" not in merged:
        merged["id"] = f"{table}/{merged['row']}"
    for k in ("seeds",):
        if k in merged:
            merged[k] = tuple(merged[k])
    for k in ("lr", "weight_decay"):
        if k in merged:
            merged[k] = float(merged[k])
    return Recipe(**merged)


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


def _check_file(data: Any, path: Path) -> dict:
    """The top of a recipe file: a mapping of :data:`FILE_FIELDS` with ``table`` and a list of
    ``recipes``, each a mapping with a ``row``."""
    def err(msg: str, keys: tuple = ()) -> TableFormatError:
        return TableFormatError(f"{at_line(path, keys)}: {msg}")

    if not isinstance(data, dict):
        raise err(f"expected a mapping with {', '.join(FILE_FIELDS)}, got {given(data)}")
    for k in data:
        if k not in FILE_FIELDS:
            raise err(f"unknown recipe-file field {k!r}{did_you_mean(str(k), FILE_FIELDS)}", (k,))
    if not isinstance(data.get("table"), str):
        raise err(f"'table' must be the table id, e.g. paper/table4, got {given(data.get('table'))}", ("table",))
    for k, kind in (("defaults", dict), ("tolerances", dict), ("choices", list), ("recipes", list)):
        if data.get(k) is not None and not isinstance(data[k], kind):
            raise err(f"{k!r} must be a {'mapping' if kind is dict else 'list'}, got {given(data[k])}", (k,))
    if "recipes" not in data:
        raise err("missing required field 'recipes' (the list of row entries)")
    rows: set = set()
    for i, e in enumerate(data.get("recipes") or ()):
        if not isinstance(e, dict):
            raise err(f"recipe #{i + 1} must be a mapping of recipe fields with a 'row', got {given(e)}", ("recipes", i))
        if "row" not in e:
            raise err(f"recipe #{i + 1} has no 'row' (the table row it reproduces)", ("recipes", i))
        if not isinstance(e["row"], str):
            raise err(f"recipe #{i + 1}: field 'row' is {given(e['row'])}; expected a string (a row key of "
                      "the table)", ("recipes", i, "row"))
        if e["row"] in rows:
            raise err(f"recipe {e['row']!r}: row {e['row']!r} appears twice", ("recipes", i, "row"))
        rows.add(e["row"])
    return data


def _recipe_file_data(table_id: str, seen: tuple[str, ...] = (), by: Path | None = None) -> dict:
    """A recipe file's YAML with ``extends:`` applied (defaults, choices and tolerances of the file
    it extends come first; its own override them). ``by``: the file that extends it."""
    path = RECIPES_DIR / f"{table_id}.yaml"
    if not path.exists():
        known = [f"{p.parent.name}/{p.stem}" for p in RECIPES_DIR.glob("*/*.yaml")]
        where = f"{at_line(by, ('extends',))}: extends {table_id!r}: " if by else ""
        raise TableFormatError(f"{where}recipe file for {table_id!r} not found ({shown_path(path)})"
                               f"{did_you_mean(str(table_id), known)}")
    return _with_extends(_check_file(read_yaml(path, TableFormatError), path), path, seen + (table_id,))


def _with_extends(data: dict, path: Path, seen: tuple[str, ...]) -> dict:
    base_id = data.get("extends")
    if not base_id:
        return data
    if base_id in seen:
        raise TableFormatError(f"{at_line(path, ('extends',))}: extends {base_id!r} again ({' -> '.join(seen)})")
    base = _recipe_file_data(str(base_id), seen, by=path)
    return dict(data, defaults={**(base.get("defaults") or {}), **(data.get("defaults") or {})},
                choices=[*(base.get("choices") or ()), *(data.get("choices") or ())],
                tolerances={**(base.get("tolerances") or {}), **(data.get("tolerances") or {})},
                _base=base)


def _entry(e: dict, data: dict, where: str | Callable[[], str]) -> dict:
    """A recipe entry with ``from: <row of the extended file>`` expanded: that row's entry, then
    this one's fields over it (e.g. the same model with ``measure_conflicts`` on). ``where`` (or
    ``where()``, called for an error only) starts an error message."""
    src = e.get("from")
    if not src:
        return e
    base = data.get("_base")
    rows = {b["row"]: b for b in (base or {}).get("recipes", ())}
    if src not in rows:
        where = where() if callable(where) else where
        raise TableFormatError(f"{where}: from {src!r} names no row of {data.get('extends') or 'an extended file'} "
                               f"(rows: {', '.join(sorted(rows))}){did_you_mean(str(src), rows)}")
    inherited = dict(_entry(rows[src], base, where))
    for key in ("architecture_from", "init_from"):
        up = inherited.get(key)
        if up and "/" not in up:            # a bare row names a recipe of the file it was written in
            inherited[key] = f"{base['table']}/{up}"
    return {**inherited, **{k: v for k, v in e.items() if k != "from"}}


def load_recipe_file(path: Path) -> RecipeSet:
    """The recipes of one file, every field checked (unknown names, wrong types: the file, line,
    row and field in the message)."""
    data = _with_extends(_check_file(read_yaml(path, TableFormatError), path), path, ())
    table = data["table"]
    try:
        defaults = check_fields(data.get("defaults") or {})
    except RecipeFieldError as e:
        raise TableFormatError(f"{at_line(path, ('defaults', e.field))}: defaults: {e}") from None
    recipes = []
    for i, e in enumerate(data["recipes"]):
        def where(fld: str | None, i: int = i, row: str = e["row"]) -> str:
            return f"{at_line(path, ('recipes', i) + ((fld,) if fld else ()))}: recipe {row!r}"
        recipes.append(_make(_entry(e, data, lambda w=where: w("from")), defaults, table, where))
    recipes = _mark_init_sources(recipes, table)
    tolerances = dict(data.get("tolerances") or {})
    for key, tol in tolerances.items():
        parse_tolerance(tol, 1.0, where=f"{at_line(path, ('tolerances', key))}: tolerances.{key}")
    return RecipeSet(table, tuple(recipes), tuple(data.get("choices") or ()), path, figure=data.get("figure"),
                     tolerances=tolerances, suite=data.get("suite"), delta_reference=data.get("delta_reference"))


def _mark_init_sources(recipes: list[Recipe], table: str) -> list[Recipe]:
    """Bare ``init_from`` rows as recipe ids, and ``keep_weights`` on every recipe of the file another
    one is initialised from (its final weights are stored: :func:`mtlrepro.store.weights_path`)."""
    recipes = [dataclasses.replace(r, init_from=f"{table}/{r.init_from}") if r.init_from and "/" not in r.init_from
               else r for r in recipes]
    sources = {r.init_from for r in recipes if r.init_from}
    return [dataclasses.replace(r, keep_weights=True) if r.id in sources else r for r in recipes]


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


class RecipeFiles(Mapping):
    """Table id -> :class:`RecipeSet`, from the file names under ``root``; each file is read and
    checked on first use, so a broken file breaks only what needs that table (iterating the values
    reads them all: the first broken one raises)."""

    def __init__(self, root: Path):
        self.paths = {f"{p.parent.name}/{p.stem}": p for p in sorted(root.glob("*/*.yaml"))}
        self._sets: dict[str, RecipeSet] = {}

    def __getitem__(self, table_id: str) -> RecipeSet:
        if table_id not in self._sets:
            path = self.paths[table_id]          # KeyError: no such file (Mapping.get -> None)
            try:
                rs = load_recipe_file(path)
            except KeyError as e:                # never a missing key to Mapping.get: a broken file
                raise TableFormatError(f"{shown_path(path)}: {e}") from None
            if rs.table != table_id:
                raise TableFormatError(f"{at_line(path, ('table',))}: table {rs.table!r} should be "
                                       f"{table_id!r} (its path)")
            self._sets[table_id] = rs
        return self._sets[table_id]

    def __contains__(self, table_id: object) -> bool:
        return table_id in self.paths

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def readable(self) -> tuple[list[RecipeSet], list[TableFormatError]]:
        """(every set that loads, the errors of the files that do not)."""
        ok, bad = [], []
        for tid in self.paths:
            try:
                ok.append(self[tid])
            except TableFormatError as e:
                bad.append(e)
        return ok, bad


@lru_cache(maxsize=1)
def recipe_sets() -> RecipeFiles:
    return RecipeFiles(RECIPES_DIR)


@lru_cache(maxsize=1)
def recipe_registry() -> Registry[Recipe]:
    """Every recipe by id (reads every recipe file)."""
    reg: Registry[Recipe] = Registry("recipe")
    for rs in recipe_sets().values():
        for r in rs.recipes:
            reg.register(r.id, r)
    return reg


def get_recipe(recipe_id: str) -> Recipe:
    """A recipe by id, reading its table's file only (``<table>/<row>``); an unknown id lists the
    closest recipe ids, and table ids too when it has the shape of one (``gatedmtl/tabel5``)."""
    sets = recipe_sets()
    table = recipe_id.rsplit("/", 1)[0]
    if table in sets:
        same = [r.id for r in sets[table].recipes]
        if recipe_id in same:
            return sets[table].recipes[same.index(recipe_id)]
        if difflib.get_close_matches(recipe_id, same, n=1, cutoff=0.6):   # a typo in the row
            raise UnknownKeyError("recipe", recipe_id, same)
    ok, bad = sets.readable()
    known = [r.id for rs in ok for r in rs.recipes]
    if recipe_id in known:                       # an id set explicitly in another file
        return next(r for rs in ok for r in rs.recipes if r.id == recipe_id)
    kind = "recipe"
    if recipe_id.count("/") <= 1:
        from .tables import table_paths
        kind, known = "table or recipe", sorted({*table_paths(), *sets}) + known
    note = " ".join(f"(Not searched: {e})" for e in bad)
    raise UnknownKeyError(kind, recipe_id, known, note=note)


def recipes_for_table(table_id: str) -> list[Recipe]:
    rs = recipe_sets().get(table_id)
    return list(rs.recipes) if rs else []
