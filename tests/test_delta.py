"""Δ conventions, mean rank and Overall on hand-computed cases."""
import math

import pytest

from mtlrepro.delta import MetricValue, delta, mean_rank, overall, rank_values, relative_gain, rounding_bound


def test_relative_gain_directions():
    # higher is better: (60 - 50) / 50 = +20 %
    assert relative_gain(MetricValue("seg", 60.0, 50.0, True)) == pytest.approx(20.0)
    # lower is better: error 0.9 vs 1.0 -> -(0.9 - 1.0)/1.0 = +10 %
    assert relative_gain(MetricValue("depth", 0.9, 1.0, False)) == pytest.approx(10.0)
    # lower is better and worse: 0.5 vs 0.4 -> -(0.1/0.4) = -25 %
    assert relative_gain(MetricValue("depth", 0.5, 0.4, False)) == pytest.approx(-25.0)
    assert math.isnan(relative_gain(MetricValue("x", 1.0, 0.0, True)))


def test_flat_vs_per_task_with_a_multi_metric_task():
    vals = [MetricValue("seg", 60.0, 50.0, True),      # +20
            MetricValue("depth", 0.9, 1.0, False),     # +10
            MetricValue("depth", 0.5, 0.4, False)]     # -25
    assert delta(vals, "flat") == pytest.approx((20 + 10 - 25) / 3)            # 1.6667
    assert delta(vals, "per_task") == pytest.approx((20 + (10 - 25) / 2) / 2)  # 6.25


def test_etr_nlp_table6_gradnorm_row_by_hand():
    # ETR-NLP Table 6, GradNorm vs hard sharing: mIoU 56.77 vs 56.57 (↑), abs 0.0199 vs 0.0170 (↓),
    # rel 68.13 vs 43.99 (↓): gains +0.3535, -17.0588, -54.8761; flat mean -23.86 (printed -23.9 %)
    vals = [MetricValue("segmentation", 56.77, 56.57, True), MetricValue("depth", 0.0199, 0.0170, False),
            MetricValue("depth", 68.13, 43.99, False)]
    assert delta(vals, "flat") == pytest.approx(-23.8605, abs=1e-3)
    # per task: (0.3535 + (-17.0588 - 54.8761) / 2) / 2 = -17.8069
    assert delta(vals, "per_task") == pytest.approx(-17.8069, abs=1e-3)


def test_unknown_convention():
    with pytest.raises(ValueError):
        delta([MetricValue("a", 1, 1, True)], "median")


def test_ranks_with_ties():
    # values 3, 1, 3 (higher better): the two 3s tie for ranks 1-2
    assert rank_values([3, 1, 3], True, "average") == [1.5, 3, 1.5]
    assert rank_values([3, 1, 3], True, "min") == [1, 3, 1]
    # lower is better: 0.2 best
    assert rank_values([0.5, 0.2, 0.9], False) == [2, 1, 3]


def test_mean_rank_over_metrics():
    # rows A, B; metric 1 higher-better (A 10, B 20), metric 2 lower-better (A 1, B 2)
    # A ranks (2, 1) -> 1.5; B ranks (1, 2) -> 1.5
    assert mean_rank([[10, 1], [20, 2]], [True, False]) == [1.5, 1.5]
    assert mean_rank([[10, 1], [20, 0.5]], [True, False]) == [2.0, 1.0]


def test_overall_and_rounding_bound():
    assert overall([97.5, 86.02, 93.0]) == pytest.approx(92.1733, abs=1e-4)
    # f(x) = mean of 2 inputs rounded to ±0.005: bound = 0.0025 + 0.0025
    assert rounding_bound(overall, [1.0, 2.0], [0.005, 0.005]) == pytest.approx(0.005)


def test_relative_gain_divides_by_the_magnitude_of_a_negative_baseline():
    # higher is better, baseline −2.0, value −1.0: an improvement of 1.0 = +50 % of |−2.0|
    # (dividing by B itself would report −50 %, i.e. a degradation)
    assert relative_gain(MetricValue("x", -1.0, -2.0, True)) == pytest.approx(50.0)
    # lower is better, baseline −2.0, value −1.0: worse by 50 %
    assert relative_gain(MetricValue("x", -1.0, -2.0, False)) == pytest.approx(-50.0)
    vals = [MetricValue("a", -1.0, -2.0, True), MetricValue("b", 60.0, 50.0, True)]   # +50, +20
    assert delta(vals, "flat") == pytest.approx(35.0)


def test_docstring_states_the_formula_the_code_computes():
    import doctest

    import mtlrepro.delta as delta_module
    assert "/ |b_m|" in delta_module.__doc__ and "/ b_m " not in delta_module.__doc__
    assert doctest.testmod(delta_module).failed == 0
