"""A synthetic store for ETR-NLP Table 4 (profile "full") and the report rendered from it.

Every measured number below is written by hand (no training), chosen so that the rows produce each
verdict; ``tests/test_report.py`` recomputes the verdicts from these numbers by hand and compares
the rendered markdown with ``report_table4.md``.

Row (Table 4)          what its records are                          verdicts it must get
hard_sharing_g8        5 seeds, means = published                    match everywhere (baseline, Δ = 0)
gradnorm_g8            P mean 72.0, s 0.985 (published 70.4 ± 0.1)   P better (Welch p ≈ 0.02; the old
                                                                      2σ rule called it noise), Δ untested
mgda_ub_g8             P mean 67.0, s 0.985 (published 68.6 ± 0.1)   P worse, Δ untested
attentive_g8           P mean 70.3, s 0.985 (published 71.1 ± 0.3)   P within noise (p ≈ 0.15); #P fitted
task_routing_g8        one seed, P 73.0                              P untested (measured n = 1)
max_roaming_g8         no record                                     missing
etr_nlp_g8             one failed record                             failed
hard_sharing_a40       5 seeds, means = published                    match (baseline)
gradnorm_a40           F under another definition only; #P 11.5M     F and Δ incomparable; #P differs (1%)
mgda_ub_a40            recipe status not_implemented                 not implemented
attentive_a40          recipe status ambiguous                       ambiguous
task_routing_a40       5 seeds, no complexity recorded (old record)  #P missing, metrics match
max_roaming_a40, etr_nlp_a40: no record                              missing

Regenerate the golden file (after an intended change of the report, say why in the commit):
    MTLREPRO_THREADS=1 .venv/bin/python -m tests.golden.report_table4
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
import tempfile
from pathlib import Path
from typing import Iterator

GOLDEN = Path(__file__).with_name("report_table4.md")
TABLE = "etr_nlp/table4"
PROFILE = "full"
SEEDS = (0, 1, 2, 3, 4)
TOLERANCES = {"precision": 0.5, "recall": 0.5, "fscore": 0.5, "delta_p": 0.5, "params": "1%"}
FITTED = {"attentive_g8": {"params": "attention reduction chosen so that the count equals the printed 12.9M"}}
STATUS = {"mgda_ub_a40": ("not_implemented", "fixture: no implementation"),
          "attentive_a40": ("ambiguous", "fixture: the printed row maps to two configurations")}
OTHER_FSCORE = "fscore_per_sample"          # same quantity as fscore, another estimator
SPREAD = (-1.3, -0.5, 0.0, 0.5, 1.3)        # mean 0, sample variance 3.88 / 4 = 0.97
SMALL = (-0.2, -0.1, 0.0, 0.1, 0.2)         # mean 0, sample variance 0.1 / 4 = 0.025


@contextlib.contextmanager
def fixture_definitions() -> Iterator[None]:
    """The metric definitions of this fixture in place of the registry's (restored on exit)."""
    from mtlrepro.metrics import definitions
    from mtlrepro.registry import Registry

    saved = definitions.METRIC_DEFS
    reg = Registry("metric definition")
    for key, quantity, how in [
        ("precision", "attribute precision", "fixture: TP/(TP+FP) pooled over all attributes and images, %"),
        ("recall", "attribute recall", "fixture: TP/(TP+FN) pooled over all attributes and images, %"),
        ("fscore", "attribute F-score", "fixture: harmonic mean of the pooled precision and recall, %"),
        (OTHER_FSCORE, "attribute F-score", "fixture: mean over images of the per-image F-score, %"),
    ]:
        reg.register(key, definitions.MetricDef(key, quantity, how, True, "%"))
    definitions.METRIC_DEFS = reg
    try:
        yield
    finally:
        definitions.METRIC_DEFS = saved


def fixture_recipe_set():
    """Table 4's recipes with this fixture's tolerances, fitted marks and two changed statuses."""
    from mtlrepro.recipe import recipe_sets

    rs = recipe_sets()[TABLE]
    recipes = []
    for r in rs.recipes:
        if r.row in STATUS:
            r = dataclasses.replace(r, status=STATUS[r.row][0], notes=STATUS[r.row][1])
        recipes.append(dataclasses.replace(r, fitted=FITTED.get(r.row, {})))
    choices = ({"field": "fixture", "value": "hand-written records",
                "why": "tests/golden/report_table4.py: a synthetic store, no training"},)
    return dataclasses.replace(rs, recipes=tuple(recipes), choices=choices, tolerances=dict(TOLERANCES))


def _means(row) -> dict[str, float]:
    return {k: row.cells[k].value for k in ("precision", "recall", "fscore")}


def _complexity(params: float) -> dict:
    return {"params_active_task0": int(round(params * 1e6)), "params_total": int(round(params * 1e6)) + 4104,
            "buffers": 0, "flops": 148_000_000, "flops_unit": "MAC", "input_shape": [3, 64, 64],
            "scope": "one task's forward pass", "unsupported_ops": {}}


def planned_records() -> dict[str, list[dict]]:
    """Row -> its records as keyword dicts: seed, status, metrics, complexity, failure."""
    from mtlrepro.tables import get_table

    table = get_table(TABLE)
    key = {c.key: (c.metric or c.key) for c in table.columns if c.kind == "metric"}
    out: dict[str, list[dict]] = {}

    def seeds(row_key: str, offsets: dict[str, tuple[float, ...]], params: float | None = 11.2,
              n: int = 5, rename: dict[str, str] | None = None, means: dict[str, float] | None = None):
        m = dict(_means(table.row(row_key)), **(means or {}))
        recs = []
        for i in range(n):
            metrics = {key[c]: m[c] + (offsets.get(c, SMALL)[i] if n == len(SEEDS) else 0.0) for c in m}
            for old, new in (rename or {}).items():
                metrics[new] = metrics.pop(old)
            recs.append(dict(seed=SEEDS[i], status="finished", metrics=metrics,
                             complexity={} if params is None else _complexity(params)))
        out[row_key] = recs

    seeds("hard_sharing_g8", {})
    seeds("gradnorm_g8", {"precision": SPREAD}, means={"precision": 72.0})
    seeds("mgda_ub_g8", {"precision": SPREAD}, means={"precision": 67.0})
    seeds("attentive_g8", {"precision": SPREAD}, params=12.9, means={"precision": 70.3})
    seeds("task_routing_g8", {}, n=1, means={"precision": 73.0})
    out["etr_nlp_g8"] = [dict(seed=0, status="failed", metrics={}, complexity=_complexity(8.0),
                              failure="RunFailed: non-finite loss at epoch 3 (fixture)")]
    seeds("hard_sharing_a40", {})
    seeds("gradnorm_a40", {}, params=11.5, rename={key["fscore"]: OTHER_FSCORE})
    seeds("task_routing_a40", {}, params=None)
    return out


def write_store(root: Path) -> None:
    """Save the planned records as run records under ``root`` (the store's own writer)."""
    from mtlrepro.profiles import apply_profile
    from mtlrepro.store import RunRecord, save_run

    by_row = {r.row: r for r in fixture_recipe_set().recipes}
    for row, recs in planned_records().items():
        eff = apply_profile(by_row[row], PROFILE)
        for r in recs:
            save_run(RunRecord(
                recipe_id=eff.id, fingerprint=eff.fingerprint, seed=r["seed"], profile=PROFILE,
                status=r["status"], recipe={"amp": False, "channels_last": False}, data={"synthetic": False},
                final={"metrics": r["metrics"], "selection": "last", "epoch": 39} if r["metrics"] else {},
                complexity=r["complexity"], failure=r.get("failure", ""),
                environment={"device": "cpu", "device_kind": "cpu", "torch": "fixture", "git_sha": "fixture",
                             "precision": {"amp": False, "tf32": False, "dtype": "float32"}}), root)


def mask(text: str) -> str:
    """Remove what changes between checkouts and days: the report's own git sha."""
    return re.sub(r"report from git \S+", "report from git <sha>", text)


def render_report(root: Path) -> str:
    """The masked markdown report of the fixture store under ``root``."""
    from mtlrepro.compare import compare_table
    from mtlrepro.report import render
    from mtlrepro.tables import get_table

    rs = fixture_recipe_set()
    with fixture_definitions():
        td = compare_table(get_table(TABLE), PROFILE, results_root=root, recipe_set=rs)
        return mask(render(td, rs))


if __name__ == "__main__":
    root = Path(tempfile.mkdtemp())
    write_store(root)
    GOLDEN.write_text(render_report(root))
    print(f"wrote {GOLDEN}")
