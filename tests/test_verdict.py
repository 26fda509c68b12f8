"""Welch's t-test and the verdict rule, against hand-computed values.

Closed forms of the Student-t tail used as hand values:
  df = 1 (Cauchy):  P(|T| ≥ t) = 1 − (2/π)·atan(t)
  df = 2:           P(|T| ≥ t) = 1 − t/√(2 + t²)
  df = 3:           F(t) = 1/2 + (1/π)·( t/(√3·(1 + t²/3)) + atan(t/√3) )
and the printed 97.5 % quantiles of Student's t (t-tables): 12.7062 (1), 2.7764 (4), 2.2281 (10).
"""
from __future__ import annotations

import doctest
import math

import pytest

import mtlrepro.verdict as verdict_module
from mtlrepro.verdict import Tolerance, betainc, judge, t_two_sided_p, welch_test


@pytest.mark.parametrize("t", [0.1, 0.7, 1.0, 2.1213, 5.0, 40.0])
def test_t_tail_closed_forms(t):
    assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-10)
    assert t_two_sided_p(-t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)
    cdf3 = 0.5 + (t / (math.sqrt(3) * (1 + t * t / 3)) + math.atan(t / math.sqrt(3))) / math.pi
    assert t_two_sided_p(t, 3) == pytest.approx(2 * (1 - cdf3), rel=1e-9)


@pytest.mark.parametrize("q, df", [(12.7062047362, 1), (2.7764451052, 4), (2.2281388520, 10),
                                   (1.9599639845, math.inf)])
def test_t_quantiles_from_tables(q, df):
    assert t_two_sided_p(q, df) == pytest.approx(0.05, abs=1e-9)


def test_t_tail_non_integer_df_by_numerical_integration():
    """df = 5.8824 (Welch's df of the 'better' case below): Simpson's rule on the t density."""
    df, t = 5.882352941176471, 2.0
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    pdf = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    n, h = 20000, t / 20000
    inner = pdf(0) + pdf(t) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, n))
    assert t_two_sided_p(t, df) == pytest.approx(1 - 2 * inner * h / 3, abs=1e-9)


def test_betainc_edges_and_symmetry():
    assert betainc(2.0, 3.0, 0.0) == 0.0 and betainc(2.0, 3.0, 1.0) == 1.0
    # I_x(1, 1) = x; I_x(a, b) = 1 − I_{1−x}(b, a)
    assert betainc(1.0, 1.0, 0.3) == pytest.approx(0.3, rel=1e-12)
    assert betainc(2.5, 0.5, 0.8) == pytest.approx(1 - betainc(0.5, 2.5, 0.2), rel=1e-12)
    # I_x(2, 1) = x²
    assert betainc(2.0, 1.0, 0.6) == pytest.approx(0.36, rel=1e-12)


def test_welch_by_hand():
    # published 10 ± 1 (n 2), measured 12 ± 1 (n 2): se = √(1/2 + 1/2) = 1, t = 2, df = 2
    r = welch_test(10.0, 1.0, 2, 12.0, 1.0, 2)
    assert (r.t, r.df, r.se) == pytest.approx((2.0, 2.0, 1.0))
    assert r.direction == "higher" and welch_test(10.0, 1.0, 2, 12.0, 1.0, 2, False).direction == "worse"
    assert welch_test(10.0, 1.0, 2, 12.0, 1.0, 2, True).direction == "better"
    assert r.p == pytest.approx(1 - 2 / math.sqrt(6), rel=1e-10)          # 0.183503
    # unequal spreads: 71.1 ± 0.3 (n 5) vs 70.3 ± 1.0 (n 5): v = 0.018, 0.2
    r = welch_test(71.1, 0.3, 5, 70.3, 1.0, 5)
    assert r.se == pytest.approx(math.sqrt(0.218))
    assert r.t == pytest.approx(-0.8 / math.sqrt(0.218))                   # −1.7134
    assert r.df == pytest.approx(0.218 ** 2 / (0.018 ** 2 / 4 + 0.2 ** 2 / 4))   # 4.7142
    # one side without spread: df = n_other − 1 = 1 (Cauchy), t = 3/√2
    r = welch_test(5.0, 0.0, 5, 8.0, 2.0, 2)
    assert r.df == pytest.approx(1.0)
    assert r.p == pytest.approx(1 - 2 / math.pi * math.atan(3 / math.sqrt(2)), rel=1e-10)   # 0.2800
    # no spread anywhere: any difference is significant
    assert welch_test(1.0, 0.0, 3, 1.5, 0.0, 3).p == 0.0
    with pytest.raises(ValueError):
        welch_test(1.0, 0.1, 1, 1.0, 0.1, 5)


def test_welch_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for args in [(70.4, 0.1, 5, 72.0, 0.2, 5), (71.1, 0.3, 5, 70.3, 1.0, 5), (1.0, 2.0, 3, 4.0, 0.5, 7)]:
        m1, s1, n1, m2, s2, n2 = args
        ref = stats.ttest_ind_from_stats(m2, s2, n2, m1, s1, n1, equal_var=False)
        r = welch_test(*args)
        assert (r.t, r.p) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-9)


def test_verdict_rule_by_hand():
    tol = Tolerance(0.5)
    # |d| = 0.3 ≤ 0.5: match, no test
    j = judge(67.7, 0.8, 5, 68.0, 0.5, 5, True, tol)
    assert j.verdict == "match" and j.test is None
    # d = +1.6, se = 0.1, t = 16, df = 5.88: p ≈ 4e-6 < 0.05 -> better (higher is better) ...
    j = judge(70.4, 0.1, 5, 72.0, 0.2, 5, True, tol)
    assert j.verdict == "better" and j.test.t == pytest.approx(16.0) and j.test.p < 1e-4
    # ... and worse when lower is better
    assert judge(70.4, 0.1, 5, 72.0, 0.2, 5, False, tol).verdict == "worse"
    assert judge(70.4, 0.1, 5, 72.0, 0.2, 5, None, tol).verdict == "differs"
    # d = −0.8, t = −1.71, df = 4.71: p = 0.15 ≥ 0.05 -> within noise; at α = 0.2 it is worse
    assert judge(71.1, 0.3, 5, 70.3, 1.0, 5, True, tol).verdict == "within noise"
    assert judge(71.1, 0.3, 5, 70.3, 1.0, 5, True, tol, alpha=0.2).verdict == "worse"
    # d = 1.3 with σ = 0.5 on both sides: the old rule |d| ≤ 2·√(σp² + σm²) = 1.41 called it noise;
    # Welch with n = 5 each: t = 1.3/√(0.05 + 0.05) = 4.11, df = 8 -> p = 0.0034: better
    j = judge(60.0, 0.5, 5, 61.3, 0.5, 5, True, tol)
    assert j.test.df == pytest.approx(8.0) and j.verdict == "better"


def test_untested_when_no_test_is_possible():
    tol = Tolerance(0.5)
    j = judge(64.5, None, 5, 66.0, 0.2, 5, True, tol)
    assert j.verdict == "untested" and "no published ±" in j.reason and j.difference == pytest.approx(1.5)
    assert judge(64.5, 0.2, None, 66.0, 0.2, 5, True, tol).reason == "the paper does not state its number of seeds"
    assert judge(64.5, 0.2, 5, 66.0, None, 1, True, tol).reason == "measured n = 1"


def test_tolerance_parse():
    assert Tolerance.parse(0.5).absolute(67.7) == 0.5
    rel = Tolerance.parse("1%")
    assert rel.relative and rel.absolute(11.2) == pytest.approx(0.112)
    # 11.2M published, 11.31M measured: d = 0.11 ≤ 0.112 -> match; 11.33M does not
    assert judge(11.2, None, None, 11.31, None, 1, None, rel).verdict == "match"
    assert judge(11.2, None, None, 11.33, None, 1, None, rel).verdict == "untested"


def test_docstring_examples_run():
    assert doctest.testmod(verdict_module).failed == 0
