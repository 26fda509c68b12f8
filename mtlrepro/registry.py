"""One generic registry for every named thing: tables, recipes, models, methods, metrics.

Why one pattern: a newcomer learns it once, and every unknown key gets the same
error that lists the closest known names.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UserError

T = TypeVar("T")


class UnknownKeyError(UserError, KeyError):
    """A key that is not registered; the message suggests the closest ones (``note``: one more
    sentence, e.g. which files could not be read while listing the known keys)."""

    def __init__(self, kind: str, key: str, known: list[str], note: str = ""):
        self.kind, self.key, self.known = kind, key, known
        close = difflib.get_close_matches(key, known, n=5, cutoff=0.4)
        if not close:  # fall back on prefix/substring matches ("table4" -> "etr_nlp/table4")
            close = [k for k in known if key.lower() in k.lower()][:5]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        listing = "" if len(known) > 40 else f" Known: {', '.join(sorted(known))}."
        super().__init__(f"unknown {kind} {key!r}.{hint}{listing}" + (f" {note}" if note else ""))

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


class Lazy:
    """A registry entry built by ``load()`` on first :meth:`Registry.get` (e.g. a file read and
    validated then, so that a broken file breaks only the lookups of its own name)."""

    def __init__(self, load: Callable[[], object]):
        self.load = load


def load_target(target: str):
    """The object a lazy ``"module:attr"`` target names."""
    module, attr = target.split(":", 1)
    return getattr(importlib.import_module(module), attr)


class Registry(Generic[T]):
    """Maps names to objects, or to lazy ``"module:attr"`` targets or :class:`Lazy` loaders resolved
    on first use (a loader that raises is tried again on the next use)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, obj: T | str | None = None) -> Callable[[T], T] | T | str:
        """Register ``obj`` under ``name``; without ``obj`` acts as a decorator."""
        if obj is None:
            def deco(target: T) -> T:
                self._add(name, target)
                return target
            return deco
        self._add(name, obj)
        return obj

    def _add(self, name: str, obj: T | str) -> None:
        if name in self._entries and self._entries[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownKeyError(self.kind, name, list(self._entries))
        obj = self._entries[name]
        if isinstance(obj, str) and ":" in obj:  # lazy "module:attr"
            obj = load_target(obj)
            self._entries[name] = obj
        elif isinstance(obj, Lazy):
            obj = obj.load()
            self._entries[name] = obj
        return obj  # type: ignore[return-value]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)
