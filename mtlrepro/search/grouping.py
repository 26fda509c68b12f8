r"""Task groupings from an inter-task affinity matrix: TAG's network selection (Fifty et al., NeurIPS
2021; the authors' ``tag/network_selection/TAG_network_selection.ipynb``), over partitions.

The score of task ``a`` in group ``g`` is the affinity onto it from the other members,
:math:`s(a, g) = \frac{1}{|g|-1}\sum_{b\in g\setminus a} \hat Z_{b\to a}` (``score="mean"``, the
notebook's normalisation; ``"sum"`` drops the division), a group of one task scores
``singleton_score`` (the notebook's -1e6: a task alone is served by nothing), and a grouping's value
is the mean over tasks of their scores. The notebook lets groups overlap (each task served by its
best group) and also tries fewer groups; a branched architecture is a *partition*, so here the
search is exhaustive over the partitions into exactly ``n_groups`` non-empty groups (255 for 9
tasks and 2 groups). Over partitions the value is :math:`\sum_g w_g \sum_{a \ne b \in g} \hat
Z_{b\to a}` with a weight per group, so transposing the matrix does not change the optimum: the
direction convention only matters for overlapping groups.

The affinities come from :class:`~mtlrepro.search.tag.TAGAffinity`; ``affinity[i][j]`` is
:math:`\hat Z_{i\to j}` (row: the task whose gradient is stepped, column: the task whose loss is
looked at).

Example::

    >>> import numpy as np
    >>> A = np.array([[0., 1., -1., -1.], [1., 0., -1., -1.], [-1., -1., 0., 2.], [-1., -1., 2., 0.]])
    >>> g = best_grouping(A, 2)
    >>> g.groups, g.score
    (((0, 1), (2, 3)), 1.5)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

__all__ = ["Grouping", "best_grouping", "grouping_value", "set_partitions", "SCORES", "SINGLETON_SCORE"]

SCORES = ("mean", "sum")
#: the authors' network-selection notebook scores a task alone in its group -1e6
SINGLETON_SCORE = -1e6
#: exhaustive search limit (number of partitions); beyond it a branch-and-bound would be needed
MAX_PARTITIONS = 2_000_000


@dataclass(frozen=True)
class Grouping:
    """A partition of the tasks (groups sorted, each sorted), its value and each task's score."""

    groups: tuple[tuple[int, ...], ...]
    score: float
    task_scores: tuple[float, ...]


def set_partitions(n: int, k: int) -> Iterator[tuple[tuple[int, ...], ...]]:
    """Every partition of ``range(n)`` into exactly ``k`` non-empty blocks, once each (restricted
    growth strings: item ``i`` joins a block already opened or opens the next one)."""
    labels = [0] * n

    def rec(i: int, opened: int) -> Iterator[tuple[tuple[int, ...], ...]]:
        if n - i < k - opened:
            return
        if i == n:
            yield tuple(tuple(t for t in range(n) if labels[t] == b) for b in range(k))
            return
        for b in range(min(opened + 1, k)):
            labels[i] = b
            yield from rec(i + 1, max(opened, b + 1))

    if n >= 1 and 1 <= k <= n:
        labels[0] = 0
        yield from rec(1, 1)


def _stirling2(n: int, k: int) -> int:
    """Stirling number of the second kind: the number of partitions of n items into k blocks."""
    row = [1] + [0] * k                      # S(0, j)
    for _ in range(n):
        row = [0] + [j * row[j] + row[j - 1] for j in range(1, k + 1)]
    return row[k]


def grouping_value(affinity: np.ndarray, groups: Sequence[Sequence[int]], score: str = "mean",
                   singleton_score: float = SINGLETON_SCORE) -> tuple[float, np.ndarray]:
    """(value, per-task scores) of a partition: task ``a`` in group ``g`` scores the affinity onto
    it from the rest of ``g`` (``affinity[b, a]``, mean or sum over ``b``), alone ``singleton_score``;
    the value is the mean over tasks."""
    if score not in SCORES:
        raise ValueError(f"tag: score must be one of {SCORES}, got {score!r}")
    A = np.asarray(affinity, dtype=np.float64)
    scores = np.full(A.shape[0], np.nan)
    for g in groups:
        g = list(g)
        for a in g:
            others = [b for b in g if b != a]
            if not others:
                scores[a] = singleton_score
            else:
                s = A[others, a].sum()
                scores[a] = s / len(others) if score == "mean" else s
    if np.isnan(scores).any():
        raise ValueError(f"tag: groups {groups} do not cover the {A.shape[0]} tasks")
    return float(scores.mean()), scores


def best_grouping(affinity, n_groups: int, score: str = "mean",
                  singleton_score: float = SINGLETON_SCORE) -> Grouping:
    """The partition of the tasks into exactly ``n_groups`` groups that maximises
    :func:`grouping_value`, by exhaustive search (ties: the first in :func:`set_partitions`
    order). ``affinity[i][j]`` is :math:`Z_{i\\to j}` (a ``T x T`` array-like)."""
    A = np.asarray(affinity, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"tag: the affinity must be a square matrix, got shape {A.shape}")
    T = A.shape[0]
    if not 1 <= int(n_groups) <= T:
        raise ValueError(f"tag: n_groups must lie in 1..{T}, got {n_groups}")
    if not np.isfinite(A).all():
        raise ValueError("tag: the affinity matrix has non-finite entries")
    count = _stirling2(T, int(n_groups))
    if count > MAX_PARTITIONS:
        raise ValueError(f"tag: {count} partitions of {T} tasks into {n_groups} groups exceed the exhaustive "
                         f"limit {MAX_PARTITIONS} (the paper's branch-and-bound is not implemented)")
    best: Grouping | None = None
    for groups in set_partitions(T, int(n_groups)):
        value, scores = grouping_value(A, groups, score, singleton_score)
        if best is None or value > best.score:
            best = Grouping(groups, value, tuple(float(s) for s in scores))
    assert best is not None
    return best
