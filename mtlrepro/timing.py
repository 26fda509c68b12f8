"""Speed-up columns measured from the run records' training times (CoNAL Tables 4, 6 and 7).

A printed speed-up is a ratio of times: ``search_speedup`` (Table 4) is the reference row's search
time over the row's, ``train_speedup`` (Tables 6 and 7) the reference row's training time over the
row's. Both are recomputed here from ``record.seconds`` (summed over every resumed segment), per
seed of the row against the mean of the reference, and never copied. A ratio needs the same
device kind on both sides: timings from different devices are refused, not compared. The search
time of a row is its upstream run's (the search that exported its architecture), found by the
fingerprint the resolved recipe carries (``recipe.upstream``).
"""
from __future__ import annotations

import statistics
from pathlib import Path

__all__ = ["SPEEDUP_COLUMNS", "speedups"]

#: column key -> (whose time: "train" = the row's own runs, "search" = its upstream search run;
#: the reference row, which is 1.0x by definition)
SPEEDUP_COLUMNS = {"search_speedup": ("search", "conal"), "train_speedup": ("train", "stl")}


def _times(rr, kind: str, profile: str, results_root: Path | None) -> dict[int, tuple[float, str]]:
    """seed -> (seconds, device kind) of a row's runs (or of its upstream search)."""
    from .store import find_run
    if kind == "train":
        return {r.seed: (float(r.seconds), str(r.environment.get("device_kind"))) for r in rr.runs if r.seconds}
    up = (rr.recipe.upstream if rr.recipe is not None else None) or {}
    if not up:
        return {}
    rec = find_run(profile, up["recipe"], up["fingerprint"], up["seed"], results_root)
    if rec is None or rec.status != "finished" or not rec.seconds:
        return {}
    return {up["seed"]: (float(rec.seconds), str(rec.environment.get("device_kind")))}


def speedups(column: str, rows_runs: dict, profile: str, results_root: Path | None = None
             ) -> tuple[dict[str, dict[int, float]], dict[str, str]]:
    """(row -> {seed: reference time / row time}, row -> why refused) for a speed-up column."""
    kind, ref = SPEEDUP_COLUMNS[column]
    vals: dict[str, dict[int, float]] = {}
    refused: dict[str, str] = {}
    if ref not in rows_runs:
        return vals, refused
    ref_times = _times(rows_runs[ref], kind, profile, results_root)
    if not ref_times:
        return vals, refused
    ref_kinds = {k for _, k in ref_times.values()}
    ref_mean = statistics.fmean(t for t, _ in ref_times.values())
    for key, rr in rows_runs.items():
        times = _times(rr, kind, profile, results_root)
        if not times:
            continue
        kinds = {k for _, k in times.values()}
        if kinds != ref_kinds or len(kinds) != 1:
            refused[key] = (f"timings on {', '.join(sorted(kinds))} against the reference `{ref}` on "
                            f"{', '.join(sorted(ref_kinds))}: a ratio needs one device kind")
            continue
        vals[key] = {s: ref_mean / t for s, (t, _) in times.items()}
    return vals, refused
