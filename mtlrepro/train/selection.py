"""Epoch-selection rules: which evaluated epoch (or epochs) a run reports.

A recipe's ``selection`` field names one rule; the run record keeps every epoch's metrics and
``final`` holds the selected ones with the rule, so a report can say how each number was chosen.

* ``last`` (default): the last epoch.
* ``mean_last:<k>``: the mean of the last ``k`` epochs' metrics.
* ``best:<metric>`` / ``best:-<metric>``: the epoch with the highest (lowest) ``metric``.
* ``best_delta_vs_first:<task metrics>``: LibMTL's rule (``LibMTL/utils.py: count_improvement``
  and its ``_PerformanceMeter``): the first evaluation is the base ``B``; every epoch's result
  ``N`` scores

      Δ(N) = 1/T Σ_t 1/|M_t| Σ_{m∈M_t} s_m (N_m − B_m) / B_m,     s_m = +1 if higher is better else −1

  and the epoch with the largest Δ wins (strictly larger, so the earliest among ties; the base
  epoch scores 0). ``<task metrics>`` lists each task's metric keys, tasks separated by ``|`` and
  keys by ``,`` (``miou,pixel_acc|abs_err_pooled,rel_err_pooled``); directions come from the
  metric definitions (:mod:`mtlrepro.metrics.definitions`).

``best*`` rules pick the epoch on the split the run evaluates on. When that split is the test set
(the papers' "val" of MTAN's data is their test set), the choice is *test-set selection*:
:func:`is_test_set_selection` says so and reports label it.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

from ..errors import ConfigError

__all__ = ["select_final", "check_selection_rule", "is_test_set_selection", "selection_label",
           "delta_vs_base", "RULES"]

RULES = "last, mean_last:<k>, best:<metric>, best:-<metric>, best_delta_vs_first:<m,m|m,...>"


class _Epoch(Protocol):
    epoch: int
    metrics: dict[str, float]


def _task_groups(spec: str) -> list[list[str]]:
    groups = [[k.strip() for k in g.split(",") if k.strip()] for g in spec.split("|")]
    if not groups or any(not g for g in groups):
        raise ValueError(f"selection 'best_delta_vs_first:{spec}': give each task's metric keys, tasks "
                         f"separated by '|' and keys by ',' (e.g. miou,pixel_acc|abs_err_pooled,rel_err_pooled)")
    from ..metrics.definitions import get_def
    unknown = [k for g in groups for k in g if get_def(k) is None]
    if unknown:
        raise ValueError(f"selection 'best_delta_vs_first:{spec}': undefined metric key(s) {', '.join(unknown)} "
                         f"(see mtlrepro/metrics/definitions.py)")
    return groups


def delta_vs_base(base: dict[str, float], new: dict[str, float], groups: Sequence[Sequence[str]]) -> float:
    """LibMTL's improvement of ``new`` over ``base`` (a fraction, not percent), per task then over tasks."""
    from ..metrics.definitions import get_def
    total = 0.0
    for keys in groups:
        task = 0.0
        for k in keys:
            sign = 1.0 if get_def(k).higher_is_better else -1.0  # type: ignore[union-attr]
            task += sign * (new[k] - base[k]) / base[k]
        total += task / len(keys)
    return total / len(groups)


def _check_measured(rule: str, epochs: Sequence[_Epoch], keys: Sequence[str]) -> None:
    for k in keys:
        missing = [r.epoch for r in epochs if k not in r.metrics]
        if missing:
            known = sorted(next(r for r in epochs if r.epoch == missing[0]).metrics)
            raise ValueError(f"selection {rule!r}: metric {k!r} is not measured (epochs {missing}); "
                             f"measured: {', '.join(known)}")


def select_final(epochs: Sequence[_Epoch], rule: str) -> dict[str, Any]:
    """The reported metrics under ``rule``: ``{"metrics", "epoch", "selection"}`` (+ ``"delta"``
    per epoch for ``best_delta_vs_first``)."""
    if not epochs:
        raise ValueError("selection: the run has no evaluated epoch")
    if rule == "last":
        e = epochs[-1]
    elif rule.startswith("best_delta_vs_first:"):
        groups = _task_groups(rule.split(":", 1)[1])
        _check_measured(rule, epochs, [k for g in groups for k in g])
        base = epochs[0].metrics
        deltas = [delta_vs_base(base, r.metrics, groups) for r in epochs]
        best = 0
        for i, d in enumerate(deltas):
            if d > deltas[best]:
                best = i
        e = epochs[best]
        return {"metrics": dict(e.metrics), "epoch": e.epoch, "selection": rule,
                "delta_vs_first": [round(d * 100.0, 6) for d in deltas]}
    elif rule.startswith("best:"):
        metric = rule.split(":", 1)[1]
        lower = metric.startswith("-")
        metric = metric.lstrip("-")
        _check_measured(rule, epochs, [metric])
        e = (min if lower else max)(epochs, key=lambda r: r.metrics[metric])
    elif rule.startswith("mean_last:"):
        k = int(rule.split(":", 1)[1])
        if k < 1:
            raise ValueError(f"selection {rule!r}: k must be >= 1")
        tail = list(epochs[-k:])
        keys = tail[-1].metrics.keys()
        return {"metrics": {m: sum(r.metrics[m] for r in tail) / len(tail) for m in keys},
                "epoch": [r.epoch for r in tail], "selection": rule}
    else:
        raise ConfigError(f"unknown selection rule {rule!r} ({RULES})")
    return {"metrics": dict(e.metrics), "epoch": e.epoch, "selection": rule}


def check_selection_rule(rule: str) -> None:
    """Reject a malformed rule before any training (metric presence is checked after epoch 1)."""
    if rule == "last" or (rule.startswith("best:") and rule.split(":", 1)[1].lstrip("-")):
        return
    if rule.startswith("mean_last:") and rule.split(":", 1)[1].isdigit() and int(rule.split(":", 1)[1]) >= 1:
        return
    if rule.startswith("best_delta_vs_first:"):
        _task_groups(rule.split(":", 1)[1])
        return
    raise ConfigError(f"unknown selection rule {rule!r} ({RULES})")


def is_test_set_selection(rule: str, dataset: str, eval_split: str) -> bool:
    """True when ``rule`` chooses among epochs by their score on the split that is reported and
    that split is the dataset's test set (``DatasetSpec.test_splits``: MTAN's ``val`` is one)."""
    from ..data.datasets import DATASETS
    return rule.startswith("best") and eval_split in DATASETS.get(dataset).test_splits


def selection_label(rule: str, dataset: str, eval_split: str) -> str:
    """How a report names a rule: e.g. ``best_delta_vs_first (test-set selection)``."""
    name = rule.split(":", 1)[0] if rule.startswith("best_delta") else rule
    return f"{name} (test-set selection)" if is_test_set_selection(rule, dataset, eval_split) else name
