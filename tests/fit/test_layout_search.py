"""The layout searches (mtlrepro/fit): they read the published cells and rank candidate layouts."""
from __future__ import annotations

import pytest

from mtlrepro.fit import search_nlp_layouts, search_table2_layouts


def test_search_nlp_layouts_prefers_default_ratio():
    cands = [(("avg:k=9", "conv:k=3", "noise"), 2),
             (("avg:k=5", "avg:k=9", "conv:k=3,e=2", "noise:e=2"), 1),
             (("avg:k=5", "avg:k=9", "conv:k=3,e=2", "noise:e=2", "max:k=3"), 1)]
    rows = search_nlp_layouts(candidates=cands)
    assert rows[0]["ratio"] == 6 and rows[0]["params"] == 7_885_449
    assert [r["ratio"] for r in rows] == [6, 7, 1.5]


def test_search_reads_the_published_cells():
    rows = search_table2_layouts(backbones=("resnet18",), methods=("nlps",), grid={"nlp": [{}]})
    assert len(rows) == 1
    r = rows[0]
    assert (r["row"], r["params"], r["macs"]) == ("resnet18_nlps", 2_042_472, 42_754_048)
    assert (r["published_params"], r["published_macs"]) == (2.05e6, 43e6)
    assert r["gap_params"] == pytest.approx(-7_528) and r["rank"] == 0 and r["is_default"]
    assert r["macs_as_printed"] and not r["params_as_printed"]
