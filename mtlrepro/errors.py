"""The base class of the errors meant for the user, and the helpers that make their messages.

``mtlrepro/cli/main.py`` prints a :class:`UserError` as one line, ``mtlrepro <verb>: <message>``,
and exits 2; anything else keeps its traceback (a bug). Subclasses: ``UnknownKeyError``
(:mod:`mtlrepro.registry`), ``TableFormatError`` (:mod:`mtlrepro.tables`: table and recipe files),
:class:`UsageError` (command-line values argparse cannot check alone), :class:`ConfigError` (a
recipe value the code cannot run).

The helpers read a YAML file so that a syntax error names ``file:line:column`` and the problem
(yaml's ``problem_mark``, 0-based, printed 1-based), find the line of a key for later errors
(:func:`yaml_line`, from the node tree ``yaml.compose`` builds), and suggest the closest known name
(:func:`did_you_mean`).
"""
from __future__ import annotations

import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml


class UserError(Exception):
    """Bad input from the user (a file, an id, a command-line value): a message, no traceback."""


class UsageError(UserError):
    """A command-line value or combination of values that is not allowed."""


class ConfigError(UserError, ValueError):
    """A recipe value the code cannot run (e.g. an update scheme with a weighting it cannot apply);
    a ``ValueError`` too, so callers that catch that keep working."""


def shown_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies under it (as an editor opens it)."""
    p = Path(path)
    try:
        return os.path.relpath(p) if p.is_absolute() and p.resolve().is_relative_to(Path.cwd()) else str(p)
    except (OSError, ValueError):
        return str(p)


def _initials(name: str) -> str:
    return "".join(w[0] for w in name.replace("-", "_").split("_") if w)


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name``: same name up to case and ``-``/``_``, the same word
    initials (``learning_rate`` -> ``lr``, ``bs`` -> ``batch_size``), else difflib's best match at
    ratio >= 0.6 (None when nothing is that close)."""
    known = list(known)
    norm = name.lower().replace("-", "_")
    for k in known:
        if k.lower() == norm:
            return k
    for k in known:
        if "_" in norm and _initials(norm) == k.lower() or "_" in k and _initials(k) == norm:
            return k
    close = difflib.get_close_matches(norm, known, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or ``""``."""
    c = closest(name, known)
    return f" (did you mean {c!r}?)" if c else ""


def read_yaml(path: Path, error: type[Exception]) -> Any:
    """The YAML document in ``path``; a syntax error raises ``error`` with ``file:line:column: problem``."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise error(f"{shown_path(path)}: not a text file ({e})") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        ctx = f" ({e.context})" if e.context else ""
        raise error(f"{shown_path(path)}{at}: YAML syntax error: {e.problem}{ctx}") from None
    except yaml.YAMLError as e:
        raise error(f"{shown_path(path)}: not valid YAML: {' '.join(str(e).split())}") from None


def yaml_line(path: Path, keys: tuple[Any, ...]) -> int | None:
    """The 1-based line of the node at ``keys`` (mapping keys and list indices from the top) in the
    YAML file ``path``: the key's line for a mapping entry; None when it is not there."""
    try:
        node = yaml.compose(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    line = None
    for k in keys:
        if isinstance(node, yaml.MappingNode):
            hit = [(kn, vn) for kn, vn in node.value if kn.value == k]
            if not hit:
                return line
            line, node = hit[0][0].start_mark.line + 1, hit[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(k, int) and 0 <= k < len(node.value):
            node = node.value[k]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def at_line(path: Path, keys: tuple[Any, ...]) -> str:
    """``file:line`` of ``keys`` in ``path`` (``file`` alone when the line is unknown)."""
    line = yaml_line(path, keys)
    return f"{shown_path(path)}:{line}" if line else shown_path(path)


# --- values against the type annotations of a dataclass field (recipe files, --set) ----------------

def _union_args(tp: Any) -> tuple | None:
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else None


def conforms(value: Any, tp: Any) -> bool:
    """Whether ``value`` (as YAML gives it) fits the annotation ``tp``: ``int`` not ``bool``, ``float``
    also an int, ``tuple[int, ...]`` also a list; a type this does not know accepts anything."""
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    union = _union_args(tp)
    if union is not None:
        return any(conforms(value, a) for a in union)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return value in args
    if origin is dict or tp is dict:
        return isinstance(value, dict) and (not args or all(conforms(k, args[0]) and conforms(v, args[1])
                                                            for k, v in value.items()))
    if origin is list or tp is list:
        return isinstance(value, list) and (not args or all(conforms(v, args[0]) for v in value))
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(conforms(v, args[0]) for v in value)
        return not args or (len(args) == len(value) and all(conforms(v, a) for v, a in zip(value, args)))
    return isinstance(value, tp) if isinstance(tp, type) else True


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def expected(tp: Any) -> str:
    """The annotation ``tp`` in words: ``an integer``, ``a list of integers (e.g. [0, 1, 2])``, ..."""
    union = _union_args(tp)
    if union is not None:
        parts = [expected(a) for a in union if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in union else "")
    if tp in _NAMES:
        return _NAMES[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is dict or tp is dict:
        return "a mapping" + (f" of {expected(args[0])[2:]} to {expected(args[1]).split(' ', 1)[-1]}"
                              if args and args[0] is not Any and args[1] is not Any else " (key: value)")
    if origin in (list, tuple) or tp in (list, tuple):
        inner = args[0] if args else Any
        if inner is int:
            return "a list of integers (e.g. [0, 1, 2])"
        if inner is float:
            return "a list of numbers (e.g. [1.0, 0.5])"
        return "a list" + (f" of {expected(inner).split(' ', 1)[-1]}s" if inner in _NAMES else "")
    return getattr(tp, "__name__", str(tp))


def given(value: Any) -> str:
    """A YAML value and its kind, e.g. ``'ten' (a string)``, ``3 (an integer)``."""
    kind = ("null" if value is None else "a boolean" if isinstance(value, bool) else "an integer"
            if isinstance(value, int) else "a number" if isinstance(value, float) else "a string"
            if isinstance(value, str) else "a list" if isinstance(value, (list, tuple)) else "a mapping"
            if isinstance(value, dict) else type(value).__name__)
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({kind})"
