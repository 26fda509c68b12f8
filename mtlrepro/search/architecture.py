"""Branched multi-task architectures: which tasks share each module of an encoder.

An encoder is a chain of ``M`` branch modules (ResNets: stem, layer1..layer4; see
``ResNetStages.branch_module_names``). A branched architecture gives, for every module ``k``, a
partition of the tasks into groups: the tasks of one group run one shared copy of module ``k``.
Partitions only refine along the chain (a group of module ``k + 1`` lies inside one group of module
``k``), so the architecture is a tree whose root is the input. Hard sharing is one group everywhere,
single-task networks are singletons everywhere.

CoNAL's discretised architectures (Yue, Zhang & Liang, AAAI 2023, Sec. 2.2) are the special case
of *branch points*: task ``t`` with branch point ``p_t`` in ``0..M`` uses the all-shared modules
``0..p_t-1`` and its own purely-specific modules ``p_t..M-1`` (``p_t = M``: fully shared, ``0``:
its own network). So at module ``k`` the group ``{t : p_t > k}`` shares and every other task is
alone. CoNAL-Pro, LTB and BMTAS give general trees.

An architecture is data (JSON): a search run stores it in its record (``record.artifacts``) and a
retraining recipe embeds it in its ``sharing_kwargs``, so it is part of that run's fingerprint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["BranchedArchitecture"]

Groups = tuple[tuple[tuple[int, ...], ...], ...]


def _canonical(groups: Sequence[Sequence[Sequence[int]]]) -> Groups:
    return tuple(tuple(sorted((tuple(sorted(int(t) for t in g)) for g in level), key=lambda g: g[0]))
                 for level in groups)


@dataclass(frozen=True)
class BranchedArchitecture:
    """``groups[k]``: the partition of ``range(n_tasks)`` at module ``k`` (canonical order)."""

    n_tasks: int
    groups: Groups

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", _canonical(self.groups))
        everyone = tuple(range(self.n_tasks))
        for k, level in enumerate(self.groups):
            flat = sorted(t for g in level for t in g)
            if tuple(flat) != everyone:
                raise ValueError(f"branched architecture: module {k}'s groups {level} do not partition "
                                 f"the tasks 0..{self.n_tasks - 1}")
            if k and any(not any(set(g) <= set(p) for p in self.groups[k - 1]) for g in level):
                raise ValueError(f"branched architecture: module {k}'s groups {level} do not refine "
                                 f"module {k - 1}'s {self.groups[k - 1]} (a tree cannot merge branches)")

    @property
    def n_modules(self) -> int:
        return len(self.groups)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_branch_points(cls, points: Sequence[int], n_modules: int) -> "BranchedArchitecture":
        """CoNAL's form: task ``t`` shares modules ``0..points[t]-1``, owns ``points[t]..M-1``."""
        T = len(points)
        if any(not 0 <= int(p) <= n_modules for p in points):
            raise ValueError(f"branch points {list(points)} must lie in 0..{n_modules}")
        groups = []
        for k in range(n_modules):
            shared = tuple(t for t in range(T) if points[t] > k)
            alone = [(t,) for t in range(T) if points[t] <= k]
            groups.append(([shared] if shared else []) + alone)
        return cls(T, _canonical(groups))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BranchedArchitecture":
        if "branch_points" in d and "groups" not in d:
            return cls.from_branch_points(d["branch_points"], int(d["n_modules"]))
        return cls(int(d["n_tasks"]), _canonical(d["groups"]))

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``n_tasks``, ``n_modules``, ``groups`` (and ``branch_points`` when it has them)."""
        out: dict[str, Any] = {"n_tasks": self.n_tasks, "n_modules": self.n_modules,
                               "groups": [[list(g) for g in level] for level in self.groups]}
        points = self.branch_points()
        if points is not None:
            out["branch_points"] = points
        return out

    # ------------------------------------------------------------------ reading it
    def group_of(self, k: int, t: int) -> int:
        """Index (in ``groups[k]``) of the group that runs task ``t`` at module ``k``."""
        return next(i for i, g in enumerate(self.groups[k]) if t in g)

    def parent(self, k: int, i: int) -> int:
        """Index of the module-``k - 1`` group feeding group ``i`` of module ``k`` (k >= 1)."""
        return self.group_of(k - 1, self.groups[k][i][0])

    def branch_points(self) -> list[int] | None:
        """Each task's CoNAL branch point, when the tree is of that form (one shared group that only
        loses tasks); else None."""
        points = []
        for t in range(self.n_tasks):
            shared = [k for k in range(self.n_modules) if len(self.groups[k][self.group_of(k, t)]) > 1]
            points.append(len(shared))
            if shared != list(range(len(shared))):
                return None
        candidate = BranchedArchitecture.from_branch_points(points, self.n_modules) if self.n_tasks else None
        return points if candidate is not None and candidate.groups == self.groups else None

    def shared_modules(self) -> list[tuple[int, int]]:
        """``(module, group)`` pairs run by more than one task."""
        return [(k, i) for k, level in enumerate(self.groups) for i, g in enumerate(level) if len(g) > 1]

    def describe(self) -> str:
        """One line: e.g. ``module 0: {0,1,2} | ... | module 3: {0,1} {2}``."""
        return " | ".join(f"module {k}: " + " ".join("{" + ",".join(map(str, g)) + "}" for g in level)
                          for k, level in enumerate(self.groups))
