"""One metric key = one definition: every key the evaluators return and every key a published
column names is defined once, keys of one quantity are refused as incomparable, and complexity
columns declare a defined unit that agrees with independent counts."""
from __future__ import annotations

import subprocess
import sys

import pytest

from mtlrepro.metrics.definitions import (COMPLEXITY_UNITS, METRIC_DEFS, base_key, get_def,
                                          incomparable_reason, same_quantity)
from mtlrepro.tables import all_tables, get_table

DENSE_SETS = [("cityscapes", "mr8"), ("cityscapes", "std2"), ("nyuv2", "mr15"), ("nyuv2", "std3")]


def test_definitions_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import mtlrepro.metrics.definitions as d\n"
            "assert len(d.METRIC_DEFS) > 10\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.parametrize("dataset,task_set", DENSE_SETS)
def test_every_dense_evaluator_key_is_defined(dataset, task_set):
    from mtlrepro.problems.dense import metric_keys
    keys = metric_keys(dataset, task_set)
    assert len(keys) == len(set(keys))
    assert [k for k in keys if get_def(k) is None] == []


def test_dense_task_sets_return_one_key_set():
    """A key is not allowed to exist on one task set and mean something else on another; the
    multi-class sets therefore also report the one-vs-rest definition (and vice versa)."""
    from mtlrepro.problems.dense import metric_keys
    for dataset in ("cityscapes", "nyuv2"):
        a, b = (sorted(metric_keys(dataset, s)) for s in {"cityscapes": ("mr8", "std2"),
                                                         "nyuv2": ("mr15", "std3")}[dataset])
        assert a == b


def test_celeba_evaluator_keys_are_defined():
    import torch

    from mtlrepro.problems.celeba import CelebAEvaluator
    ev = CelebAEvaluator(3, torch.device("cpu"))
    ev.update([torch.randn(4, 2), torch.randn(4, 1)], [torch.ones(4, 2), torch.zeros(4, 1)])
    assert [k for k in ev.compute() if get_def(k) is None] == []


def _measured_keys(table):
    return [(c, c.metric or c.key) for c in table.columns if c.kind == "metric"]


@pytest.mark.parametrize("table", all_tables(), ids=lambda t: t.id)
def test_every_published_metric_column_names_a_defined_key(table):
    for col, key in _measured_keys(table):
        d = get_def(key)
        assert d is not None, (table.id, col.key, key)
        assert d.higher_is_better == col.higher_is_better, (table.id, col.key, key)


@pytest.mark.parametrize("table", all_tables(), ids=lambda t: t.id)
def test_no_two_columns_of_a_table_read_the_same_key(table):
    keys = [k for _, k in _measured_keys(table)]
    assert len(keys) == len(set(keys)), (table.id, keys)


def test_dense_etr_nlp_columns_name_max_roamings_binary_iou():
    """ETR-NLP's dense tables follow Max Roaming's evaluation: their mIoU columns are the binary
    per-image IoU, not MTAN's confusion matrix (which CoNAL's LibMTL tables report)."""
    for tid in ("etr_nlp/table3b", "etr_nlp/table5", "etr_nlp/table6", "etr_nlp/table7"):
        assert get_table(tid).column("miou").metric == "miou_binary", tid
    for tid in ("conal/table2", "conal/table3"):
        t = get_table(tid)
        assert t.column("miou").metric == "miou" and t.column("abs_err").metric == "abs_err_pooled"


def test_estimators_of_one_quantity_are_refused():
    assert incomparable_reason("miou", "miou") is None
    reason = incomparable_reason("miou", "miou_binary")
    assert reason is not None and "different estimators of segmentation mIoU" in reason
    assert "abs_err_pooled" in same_quantity("abs_err")
    assert "different metrics" in incomparable_reason("miou", "abs_err")
    assert get_def("human_parts/miou") is get_def("miou") and base_key("human_parts/miou") == "miou"


def test_each_definition_is_registered_under_its_own_key():
    for key in METRIC_DEFS:
        d = METRIC_DEFS.get(key)
        assert d.key == key and d.definition and d.quantity


# Independent counts (REFERENCE.md, fvcore 0.1.5 on the public models): fvcore counts one
# multiply-add as one, i.e. MACs. GatedMTL prints 2 x fvcore on its ResNet tables and 1 x fvcore
# on its HRNet table, so one label "Flops" holds two definitions there.
FVCORE_G = {
    ("gatedmtl/table1", "stl"): 64.7,                # NYUD HRNet-W18, printed 65.1
    ("gatedmtl/table2", "stl"): 575.1,               # NYUD dilated R50 + ASPP, printed 1149
    ("gatedmtl/table5", "stl"): 334.6,               # PASCAL dilated R18 + ASPP, printed 670
}


@pytest.mark.parametrize("table", all_tables(), ids=lambda t: t.id)
def test_complexity_columns_declare_a_defined_unit(table):
    for col in table.columns:
        if col.kind == "complexity":
            assert col.unit in COMPLEXITY_UNITS, (table.id, col.key, col.unit)


@pytest.mark.parametrize("tid,row", list(FVCORE_G))
def test_gatedmtl_flops_unit_agrees_with_fvcore(tid, row):
    t = get_table(tid)
    col = t.column("flops")
    printed = t.row(row).cells["flops"].value
    factor = {"MACs": 1.0, "FLOPs": 2.0}[col.unit]
    assert printed == pytest.approx(factor * FVCORE_G[(tid, row)], rel=0.02), (tid, col.unit)


def test_etr_nlp_delta_p_states_the_sign_its_numbers_use():
    """Sec. 4.1 prints (-1)^p with p = 1 'if a higher value indicates better performance', which
    would make an improvement negative; the printed numbers are positive for improvements
    (Table 6: Max roaming beats hard sharing on all three metrics and prints +17.2%). Every Δp
    column says so, and the audit's convention gives the printed sign."""
    from mtlrepro.delta import MetricValue, delta
    for t in all_tables():
        if t.paper != "etr_nlp":
            continue
        for col in t.columns:
            if col.derived is not None and col.derived.formula == "delta_p":
                assert "p = 1 if lower is better" in col.derived.stated, (t.id, col.key)
    t = get_table("etr_nlp/table6")
    mine, base = t.row("max_roaming"), t.row("hard_sharing")
    vals = [MetricValue(t.column(k).task, mine.cells[k].value, base.cells[k].value,
                        bool(t.column(k).higher_is_better)) for k in ("miou", "abs_err", "rel_err")]
    assert all((v.value > v.baseline) == v.higher_is_better for v in vals)  # better on every metric
    assert delta(vals, "flat") > 0 and mine.cells["delta_p"].value > 0
