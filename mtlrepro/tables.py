"""Loads the published tables under ``reproduce/`` into typed :class:`Table` objects.

Every table is one YAML file, ``reproduce/<paper>/<table>.yaml``; its id is
``<paper>/<table>``. Loading validates the file against the schema so a typo in a
column key or a direction fails here, with the file and line named (and the closest valid
field for an unknown one), not later in a report. Files are read on first use: a broken
file breaks the commands that need that table only.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import UserError, did_you_mean, read_yaml, shown_path, yaml_line
from .registry import Lazy, Registry, UnknownKeyError
from .schema import COLUMN_KINDS, DERIVED_FORMULAS, PAPERS, Cell, Column, DerivedSpec, Row, Table

REPRODUCE_DIR = Path(__file__).resolve().parent.parent / "reproduce"
#: the fields a table file may hold (parse_table reads exactly these)
TABLE_FIELDS = ("id", "paper", "title", "caption", "source", "dataset", "dataset_variant", "backbone", "columns",
                "rows", "in_scope", "out_of_scope_reason", "seeds", "epoch_selection", "notes", "layout",
                "tolerances", "source_rows", "source_label_fields", "source_artefacts")
COLUMN_FIELDS = ("key", "label", "kind", "higher_is_better", "task", "metric", "block", "unit", "scale",
                 "input_shape", "derived", "printed_as", "notes")
ROW_FIELDS = ("key", "label", "cells", "group", "method", "attrs", "baseline", "recipe", "flags", "notes")
DERIVED_FIELDS = ("formula", "inputs", "baseline", "stated")


class TableFormatError(UserError, ValueError):
    """A table or recipe file that does not follow the schema; the message names file and field."""


class _Where:
    """A place in a table file, ``keys`` from its top; its line is looked up only for an error."""

    def __init__(self, where: str, path: Path | None = None, keys: tuple = (), label: str = ""):
        self.where, self.path, self.keys, self.label = where, path, keys, label

    def sub(self, keys: tuple, label: str) -> "_Where":
        return _Where(self.where, self.path, self.keys + keys, f"{self.label} {label}".strip())

    def error(self, msg: str, field: str | None = None) -> TableFormatError:
        line = yaml_line(self.path, self.keys + ((field,) if field else ())) if self.path else None
        head = f"{self.where}:{line}" if line else self.where
        return TableFormatError(f"{head}: {self.label + ': ' if self.label else ''}{msg}")


def _check_mapping(d: Any, known: tuple[str, ...], w: _Where, what: str) -> dict:
    if not isinstance(d, dict):
        raise w.error(f"expected a mapping of {what} fields, got {type(d).__name__} {d!r:.60}")
    for k in d:
        if k not in known:
            raise w.error(f"unknown {what} field {k!r}{did_you_mean(str(k), known)}", k)
    return d


def _list(d: dict, key: str, w: _Where) -> list:
    v = d.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise w.error(f"{key} must be a list, got {type(v).__name__} {v!r:.60}", key)
    return v


def _int(d: dict, key: str, default: int, w: _Where) -> int:
    v = d.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise w.error(f"{key} must be an integer, got {v!r}", key)
    return v


def _req(d: dict, key: str, where: str | _Where) -> Any:
    if key not in d:
        if isinstance(where, _Where):
            raise where.error(f"missing required field {key!r}")
        raise TableFormatError(f"{where}: missing required field {key!r}")
    return d[key]


def _column(d: dict, w: _Where | str) -> Column:
    w = w if isinstance(w, _Where) else _Where(w)
    _check_mapping(d, COLUMN_FIELDS, w, "column")
    key = _req(d, "key", w)
    w = w.sub((), f"column {key!r}")
    kind = d.get("kind", "metric")
    if kind not in COLUMN_KINDS:
        raise w.error(f"kind {kind!r} not in {COLUMN_KINDS}{did_you_mean(str(kind), COLUMN_KINDS)}", "kind")
    hib = d.get("higher_is_better")
    if hib not in (True, False, None):
        raise w.error(f"higher_is_better must be true, false or null, got {hib!r}", "higher_is_better")
    if kind == "metric" and hib is None:
        raise w.error("a metric column needs higher_is_better")
    derived = None
    if kind == "derived":
        dd = _check_mapping(_req(d, "derived", w), DERIVED_FIELDS, w.sub(("derived",), "derived"), "derived")
        formula = _req(dd, "formula", w)
        if formula not in DERIVED_FORMULAS:
            raise w.error(f"formula {formula!r} not in {DERIVED_FORMULAS}{did_you_mean(str(formula), DERIVED_FORMULAS)}",
                          "derived")
        derived = DerivedSpec(formula=formula, inputs=tuple(_list(dd, "inputs", w) or _req(dd, "inputs", w)),
                              baseline=dd.get("baseline"), stated=dd.get("stated", ""))
    shape = _list(d, "input_shape", w)
    return Column(key=key, label=str(_req(d, "label", w)), kind=kind, higher_is_better=hib,
                  task=d.get("task"), metric=d.get("metric"), block=d.get("block"),
                  unit=d.get("unit"), scale=d.get("scale"),
                  input_shape=tuple(shape) if shape else None, derived=derived,
                  printed_as=d.get("printed_as", "absolute"), notes=d.get("notes", ""))


def _row(d: dict, w: _Where | str, column_keys: set[str]) -> Row:
    w = w if isinstance(w, _Where) else _Where(w)
    _check_mapping(d, ROW_FIELDS, w, "row")
    key = _req(d, "key", w)
    w = w.sub((), f"row {key!r}")
    cells_in = d.get("cells") or {}
    if not isinstance(cells_in, dict):
        raise w.error(f"cells must be a mapping column -> printed value, got {type(cells_in).__name__}", "cells")
    for k in cells_in:
        if k not in column_keys:
            raise w.error(f"cell for unknown column {k!r}{did_you_mean(str(k), sorted(column_keys))}", "cells")
    if not isinstance(d.get("attrs") or {}, dict):
        raise w.error("attrs must be a mapping", "attrs")
    cells = {k: Cell.parse(v) for k, v in cells_in.items() if v is not None}
    return Row(key=key, label=str(_req(d, "label", w)), cells=cells, group=d.get("group"),
               method=d.get("method"), attrs=dict(d.get("attrs") or {}),
               baseline=d.get("baseline"), recipe=d.get("recipe"),
               flags=tuple(_list(d, "flags", w)), notes=d.get("notes", ""))


def parse_table(data: dict, where: str, path: Path | None = None) -> Table:
    """The :class:`Table` of a file's YAML; ``where`` starts every error message (``path``, when
    given, adds the line of the field at fault)."""
    w = _Where(where, path)
    _check_mapping(data, TABLE_FIELDS, w, "table")
    tid = _req(data, "id", w)
    paper = _req(data, "paper", w)
    if paper not in PAPERS:
        raise w.error(f"paper {paper!r} not in {sorted(PAPERS)}{did_you_mean(str(paper), PAPERS)}", "paper")
    columns = tuple(_column(c, w.sub(("columns", i), "")) for i, c in enumerate(_list(data, "columns", w)
                                                                                 or _req(data, "columns", w)))
    keys = [c.key for c in columns]
    if len(set(keys)) != len(keys):
        raise w.error(f"duplicate column keys {sorted({k for k in keys if keys.count(k) > 1})}", "columns")
    rows = tuple(_row(r, w.sub(("rows", i), ""), set(keys)) for i, r in enumerate(_list(data, "rows", w)
                                                                                  or _req(data, "rows", w)))
    rkeys = [r.key for r in rows]
    if len(set(rkeys)) != len(rkeys):
        dup = sorted({k for k in rkeys if rkeys.count(k) > 1})
        raise w.error(f"duplicate row keys {dup}", "rows")
    for c in columns:
        refs = list(c.derived.inputs) if c.derived else []
        for ref in refs:
            if ref not in keys:
                raise w.error(f"derived column {c.key!r} uses unknown column {ref!r}{did_you_mean(str(ref), keys)}")
        if c.derived and c.derived.baseline and c.derived.baseline not in rkeys:
            raise w.error(f"derived column {c.key!r} baseline {c.derived.baseline!r} is no row key")
        if c.printed_as.startswith("difference_from:") and c.printed_as.split(":", 1)[1] not in rkeys:
            raise w.error(f"column {c.key!r} printed_as refers to an unknown row")
    for r in rows:
        if r.baseline and r.baseline not in rkeys:
            raise w.error(f"row {r.key!r} baseline {r.baseline!r} is no row key{did_you_mean(str(r.baseline), rkeys)}")
    seeds = data.get("seeds")
    if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool)):
        raise w.error(f"seeds is the number of runs per cell the paper states: an integer or null, got {seeds!r}",
                      "seeds")
    return Table(
        id=tid, paper=paper, title=str(_req(data, "title", w)), caption=data.get("caption", ""),
        source=str(_req(data, "source", w)), dataset=_req(data, "dataset", w),
        dataset_variant=data.get("dataset_variant", ""), backbone=data.get("backbone"),
        columns=columns, rows=rows, in_scope=data.get("in_scope", True),
        out_of_scope_reason=data.get("out_of_scope_reason", ""), seeds=seeds,
        epoch_selection=data.get("epoch_selection", ""), notes=tuple(_list(data, "notes", w)),
        layout=data.get("layout", ""), tolerances=dict(data.get("tolerances") or {}),
        source_rows=tuple(_list(data, "source_rows", w)),
        source_label_fields=_int(data, "source_label_fields", 1, w),
        source_artefacts=data.get("source_artefacts", ""),
    )


def load_table_file(path: Path) -> Table:
    data = read_yaml(path, TableFormatError)
    where = shown_path(path)
    table = parse_table(data, where, path)
    expected = f"{path.parent.name}/{path.stem}"
    if table.id != expected:
        raise _Where(where, path).error(f"id {table.id!r} should be {expected!r} (its path)", "id")
    return table


def table_paths() -> dict[str, Path]:
    """Table id -> its file, from the file names alone (nothing is read)."""
    return {f"{p.parent.name}/{p.stem}": p for p in sorted(REPRODUCE_DIR.glob("*/*.yaml"))
            if p.parent.name in PAPERS}


@lru_cache(maxsize=1)
def table_registry() -> Registry[Table]:
    """Every table by id; a file is read and validated on the first lookup of its id."""
    reg: Registry[Table] = Registry("table")
    for tid, path in table_paths().items():
        reg.register(tid, Lazy(lambda path=path: load_table_file(path)))
    return reg


def get_table(table_id: str) -> Table:
    """A table by id; a bare name like ``table4`` resolves when it is unique across papers."""
    reg = table_registry()
    if table_id in reg:
        return reg.get(table_id)
    matches = [n for n in reg.names() if n.split("/", 1)[1] == table_id]
    if len(matches) == 1:
        return reg.get(matches[0])
    if len(matches) > 1:
        raise UnknownKeyError("table", table_id, matches)
    return reg.get(table_id)


def all_tables(broken: list[TableFormatError] | None = None) -> list[Table]:
    """Every table, in id order. A broken file raises its :class:`TableFormatError`; with a
    ``broken`` list it is appended there instead and the other tables are returned."""
    reg = table_registry()
    out = []
    for n in reg.names():
        try:
            out.append(reg.get(n))
        except TableFormatError as e:
            if broken is None:
                raise
            broken.append(e)
    return out
