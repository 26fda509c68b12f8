"""The layout of ``mtlrepro/models``: no import cycle between its modules, no registry reader inside.

Read statically (every ``import`` statement, function-level ones included, ``if
TYPE_CHECKING:`` blocks excluded since they never run), so that a lazy
import that hides a cycle - ``base.py`` importing ``task_memory.py`` inside ``forward_all`` while
``task_memory.py`` imported ``base.py``, or a scheme module importing ``build_model`` from its
own package inside a search function - counts as what it is.
"""
from __future__ import annotations

import ast
from pathlib import Path

import mtlrepro.models

MODELS = Path(mtlrepro.models.__file__).resolve().parent
PACKAGE = "mtlrepro.models"
# modules that read the published numbers; the layout searches that need them live in mtlrepro.fit
REGISTRY_READERS = ("mtlrepro.tables", "mtlrepro.complexity", "mtlrepro.fit", "mtlrepro.recipe")


def module_name(path: Path, root: Path = MODELS, package: str = PACKAGE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _is_type_checking_block(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` - imports for annotations only, never run."""
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports_of(path: Path, root: Path = MODELS, package: str = PACKAGE) -> set[str]:
    """Absolute names of the modules ``path`` imports (``from . import x`` -> the submodule ``x``
    when it is one)."""
    me = module_name(path, root, package)
    pkg = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out: set[str] = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking_block(block)
                   for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            for a in node.names:
                out.add(f"{mod}.{a.name}")   # kept below only if it names a module
    return out


def import_graph(root: Path = MODELS, package: str = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, root, package): p for p in root.rglob("*.py")}
    return {m: {i for i in imports_of(p, root, package) if i in files and i != m} for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycle_in_models():
    """No module imports (even lazily) a module that imports it back - a package ``__init__``
    that re-exports its submodules included, so a submodule must not import its own package."""
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_models_read_no_registry():
    readers = {module_name(p): sorted(i for i in imports_of(p) if i.startswith(REGISTRY_READERS))
               for p in MODELS.rglob("*.py")}
    assert {m: r for m, r in readers.items() if r} == {}


def test_the_cycle_finder_finds_a_lazy_cycle(tmp_path):
    """The check can fail: the pre-split ``base.py`` / ``task_memory.py`` pair, reduced."""
    pkg = tmp_path / "models"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .base import f\n")
    (pkg / "base.py").write_text("def f():\n    from .task_memory import g\n    return g()\n")
    (pkg / "task_memory.py").write_text("from .base import f\n\ndef g():\n    return 1\n")
    assert find_cycle(import_graph(pkg, "pkg")) == ["pkg.base", "pkg.task_memory", "pkg.base"]
