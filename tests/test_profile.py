"""Complexity columns that check themselves: fvcore counts vs the published #P / #F."""
from __future__ import annotations

import pytest

from mtlrepro.profile import profile_table
from mtlrepro.tables import get_table


def _by_key(table_id):
    return {p.row: p for p in profile_table(get_table(table_id))}


def test_table4_hard_sharing_within_one_percent_of_published():
    rows = _by_key("etr_nlp/table4")
    for key in ("hard_sharing_g8", "hard_sharing_a40"):
        p = rows[key]
        pub = p.published["params"]["value"]
        assert pub == pytest.approx(11.2e6)
        assert abs(p.params - pub) / pub < 0.01
        assert p.flops_unit.startswith("MACs") and p.input_shape == [3, 64, 64]
    assert rows["hard_sharing_g8"].params == 11_197_032


def test_table2_conv_rows_reproduce_params_and_flops():
    rows = _by_key("etr_nlp/table2")
    for key, params, flops in (("resnet18_conv", 11.2e6, 148e6), ("vgg16_conv", 14.7e6, 1.25e9)):
        p = rows[key]
        assert p.published["params"]["value"] == pytest.approx(params)
        assert p.published["flops"]["value"] == pytest.approx(flops)
        assert abs(p.params - params) / params < 0.01
        assert abs(p.flops - flops) / flops < 0.02
    assert all(p.params and p.flops for p in rows.values())  # every row measured


def test_conal_profile_counts_the_whole_model_and_matches_libmtl():
    """CoNAL's #P is every parameter of the model (STL: one network per task); HPS, MTAN and STL
    are LibMTL's measured counts (REFERENCE), and building needs no ImageNet weights file."""
    from mtlrepro.profile import profile_table
    from mtlrepro.tables import get_table
    rows = {r.row: r for r in profile_table(get_table("conal/table2")) if r.row in ("stl", "hps", "mtan")}
    assert {k: r.params for k, r in rows.items()} == {"stl": 79_269_000, "hps": 55_760_968, "mtan": 72_044_232}
