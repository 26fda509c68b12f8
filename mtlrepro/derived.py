"""Measured values of the derived columns that are not a Δ: GatedMTL's Overall and mean rank (MR).

Both are recomputed from the measured cells of the table, never copied:

* ``overall`` (GatedMTL's CelebA "Overall ↑"): per seed, the unweighted mean of the row's measured
  input columns (:func:`mtlrepro.delta.overall`), over the seeds every input has;
* ``mean_rank`` (GatedMTL's "MR ↓", after Navon et al. 2022): within each row group, the rows are
  ranked per input column on their measured means (rank 1 = best in the column's direction) and a
  row's MR is the mean of its ranks, with the tie rule ``mtlrepro audit`` found to reproduce the
  printed column (:data:`mtlrepro.audit.RANK_CONVENTIONS`: fractional or competition ranks).
  An MR depends on which rows it ranks: it is only compared with the printed one when every
  printed row of the group is measured; otherwise it is **incomparable** and the note names the
  rows not measured. One value per row (n = 1), judged against the printed rounding.
"""
from __future__ import annotations

import statistics

from .delta import mean_rank, overall
from .schema import Column, Table

__all__ = ["recompute_overall", "recompute_mean_rank"]


def recompute_overall(table: Table, col: Column, measured: dict[str, dict[str, dict[int, float]]],
                      refused: dict[str, dict[str, str]]) -> tuple[dict, dict, dict]:
    """``(row -> {seed: Overall}, row -> why incomparable, row -> why missing)``."""
    vals, bad, missing = {}, {}, {}
    for row in table.rows:
        if row.cells.get(col.key) is None:
            continue
        inputs = list(col.derived.inputs)
        off = [k for k in inputs if k in refused[row.key]]
        if off:
            bad[row.key] = f"Overall not computed: its input `{off[0]}` is incomparable (see that cell)"
            continue
        if not all(measured[row.key].get(k) for k in inputs):
            missing[row.key] = "Overall not computed: an input is not measured"
            continue
        seeds = sorted(set.intersection(*(set(measured[row.key][k]) for k in inputs)))
        vals[row.key] = {s: overall([measured[row.key][k][s] for k in inputs]) for s in seeds}
    return vals, bad, missing


def recompute_mean_rank(table: Table, col: Column, measured: dict[str, dict[str, dict[int, float]]],
                        refused: dict[str, dict[str, str]], convention: str) -> tuple[dict, dict, dict]:
    """``(row -> {first seed: MR}, row -> why incomparable, row -> why missing)``."""
    ties = convention.split("_", 1)[1] if convention.startswith("ties_") else "average"
    inputs = list(col.derived.inputs)
    hib = [bool(table.column(k).higher_is_better) for k in inputs]
    groups: dict[str | None, list] = {}
    for row in table.rows:
        if row.cells.get(col.key) is not None and row.cells[col.key].value is not None:
            groups.setdefault(row.group, []).append(row)
    vals, bad, missing = {}, {}, {}
    for rows in groups.values():
        done = [r for r in rows if all(measured[r.key].get(k) for k in inputs)
                and not any(k in refused[r.key] for k in inputs)]
        if not done:
            for r in rows:
                missing[r.key] = "MR not computed: no row of its group has every ranked metric measured"
            continue
        matrix = [[statistics.fmean(measured[r.key][k].values()) for k in inputs] for r in done]
        ranks = mean_rank(matrix, hib, ties=ties)
        absent = [r.key for r in rows if r not in done]
        for r, rk in zip(done, ranks):
            if absent:
                bad[r.key] = (f"MR ranks {len(done)} of the {len(rows)} printed rows (not measured: "
                              f"{', '.join(absent[:6])}{' ...' if len(absent) > 6 else ''}): another ranking "
                              f"than the paper's")
            else:
                vals[r.key] = {min(min(measured[r.key][k]) for k in inputs): rk}
        for key in absent:
            missing[key] = "MR not computed: a ranked metric is not measured"
    return vals, bad, missing
