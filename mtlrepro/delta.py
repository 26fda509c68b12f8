"""Relative-improvement (Δ), mean-rank and "Overall" conventions of the three papers.

The papers name their Δ columns differently (ETR-NLP Δp vs hard sharing, CoNAL Δ_I vs STL,
GatedMTL Δ_MTL vs STL) and the printed formula is not always the one that produced the
printed numbers, so every convention is a separate, named function here and the audit
tries each. All functions are pure and work on plain floats.

    metric m of task t, value x_m, baseline b_m, sign s_m = +1 if higher is better else -1
    relative gain  r_m = s_m * (x_m - b_m) / |b_m| * 100
    per_task:  Δ = 1/T Σ_t ( 1/|M_t| Σ_{m∈M_t} r_m )      (CoNAL's and LibMTL's stated Δ_I)
    flat:      Δ = 1/M Σ_m r_m                             (every metric weighs the same)

The papers print the gain over b_m (Maninis et al. 2019's Δ_m, CoNAL's Δ_I); for the positive
metrics they report (accuracies, IoUs, errors) |b_m| = b_m and the two agree. Dividing by |b_m|
keeps the sign meaning "better" when a baseline metric is negative (a signed score or a log
quantity), where dividing by b_m would flip it. A zero baseline gives NaN.

Example:
    >>> from mtlrepro.delta import MetricValue, delta
    >>> vals = [MetricValue("seg", 60.0, 50.0, True), MetricValue("depth", 0.9, 1.0, False),
    ...         MetricValue("depth", 0.5, 0.4, False)]
    >>> round(delta(vals, "flat"), 4)   # (20 + 10 - 25) / 3
    1.6667
    >>> round(delta(vals, "per_task"), 4)  # (20 + (10 - 25)/2) / 2
    6.25
    >>> relative_gain(MetricValue("score", -1.0, -2.0, True))   # higher is better: +1 over |−2|
    50.0
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

DELTA_CONVENTIONS = ("flat", "per_task")


@dataclass(frozen=True)
class MetricValue:
    """One metric of one row next to the same metric of the baseline row."""

    task: str
    value: float
    baseline: float
    higher_is_better: bool


def relative_gain(v: MetricValue) -> float:
    """Signed relative improvement in percent over |baseline|; positive means better than the baseline."""
    if v.baseline == 0:
        return math.nan
    sign = 1.0 if v.higher_is_better else -1.0
    return sign * (v.value - v.baseline) / abs(v.baseline) * 100.0


def delta(values: Sequence[MetricValue], convention: str = "per_task") -> float:
    """Δ of a row against its baseline under a named convention (see module docstring)."""
    if not values:
        return math.nan
    gains = [relative_gain(v) for v in values]
    if convention == "flat":
        return sum(gains) / len(gains)
    if convention == "per_task":
        per_task: "OrderedDict[str, list[float]]" = OrderedDict()
        for v, g in zip(values, gains):
            per_task.setdefault(v.task, []).append(g)
        return sum(sum(g) / len(g) for g in per_task.values()) / len(per_task)
    raise ValueError(f"unknown Δ convention {convention!r}; known: {DELTA_CONVENTIONS}")


def rank_values(values: Sequence[float], higher_is_better: bool, ties: str = "average") -> list[float]:
    """Rank 1 = best. ``ties``: "average" (fractional ranks) or "min" (competition ranking)."""
    order = sorted(range(len(values)), key=lambda i: -values[i] if higher_is_better else values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        r = (i + j) / 2 + 1 if ties == "average" else i + 1
        for k in range(i, j + 1):
            ranks[order[k]] = r
        i = j + 1
    return ranks


def mean_rank(matrix: Sequence[Sequence[float]], higher_is_better: Sequence[bool],
              ties: str = "average") -> list[float]:
    """Mean rank of each row over the metric columns (rows × metrics matrix); lower is better."""
    n_rows = len(matrix)
    if n_rows == 0:
        return []
    totals = [0.0] * n_rows
    n_cols = len(higher_is_better)
    for c in range(n_cols):
        col_ranks = rank_values([row[c] for row in matrix], higher_is_better[c], ties)
        totals = [t + r for t, r in zip(totals, col_ranks)]
    return [t / n_cols for t in totals]


def overall(values: Sequence[float]) -> float:
    """GatedMTL's CelebA "Overall": the unweighted mean of the task accuracies."""
    return sum(values) / len(values) if values else math.nan


def rounding_bound(f: Callable[[list[float]], float], x: list[float], half_units: list[float]) -> float:
    """How far f can move when each input moves by its printed rounding (first-order, per input).

    Recomputing a Δ from printed cells inherits their rounding; a published Δ counts as reproduced
    when it lies within this bound plus its own rounding.
    """
    base = f(x)
    bound = 0.0
    for i, h in enumerate(half_units):
        if h == 0:
            continue
        xp = list(x); xp[i] += h
        xm = list(x); xm[i] -= h
        bound += max(abs(f(xp) - base), abs(f(xm) - base))
    return bound
