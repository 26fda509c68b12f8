"""The verdict on one cell: a declared tolerance, then Welch's t-test on the two means.

Rule (in this order), for a published cell (mean m₁, std s₁ over n₁ seeds) and the measured
runs (mean m₂, sample std s₂ over n₂ seeds), difference d = m₂ − m₁:

1. ``match``        |d| ≤ the declared tolerance (absolute, or a fraction of the printed value);
2. Welch's two-sample t-test on the means, when s₁, s₂ are known and n₁, n₂ ≥ 2::

       t  = (m₂ − m₁) / √(s₁²/n₁ + s₂²/n₂)
       df = (s₁²/n₁ + s₂²/n₂)² / ( (s₁²/n₁)²/(n₁−1) + (s₂²/n₂)²/(n₂−1) )   (Welch–Satterthwaite)
       p  = P(|T_df| ≥ |t|)  (two-sided)

   ``within noise`` when p ≥ α (default α = 0.05); else ``better`` / ``worse`` by the metric's
   direction (``differs`` when the column has none);
3. ``untested``     the test is impossible (no published ±, the paper's n not stated, or fewer
   than two seeds on a side): the raw difference is shown, nothing is guessed.

The published ± is read as the sample standard deviation over the paper's seeds (ETR-NLP:
"mean ± std over five runs"). Reference: B. L. Welch, "The generalization of Student's problem
when several different population variances are involved", Biometrika 34 (1947).

The Student-t tail comes from the regularized incomplete beta function,
P(|T_ν| ≥ |t|) = I_{ν/(ν+t²)}(ν/2, 1/2), evaluated by its continued fraction (Lentz's method;
Press et al., Numerical Recipes, 3rd ed., §6.4): no scipy needed.

Example:
    >>> r = welch_test(10.0, 1.0, 2, 12.0, 1.0, 2)     # se = 1, t = 2, df = 2
    >>> round(r.t, 6), round(r.df, 6), round(r.p, 6)    # p = 1 − 2/√6 for df = 2
    (2.0, 2.0, 0.183503)
    >>> judge(10.0, 1.0, 2, 12.0, 1.0, 2, True, Tolerance(0.5)).verdict
    'within noise'
"""
from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA = 0.05
TEST_NAME = "Welch's t-test"
VERDICTS = ("match", "within noise", "better", "worse", "differs", "untested", "fitted", "incomparable",
            "missing", "failed", "not implemented", "ambiguous")


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x = {x} outside [0, 1]")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T_df| ≥ |t|) for Student's t with df > 0 degrees of freedom (df = ∞: the normal)."""
    if math.isnan(t) or math.isnan(df):
        return math.nan
    if math.isinf(t):
        return 0.0
    if math.isinf(df):
        return math.erfc(abs(t) / math.sqrt(2.0))
    return betainc(df / 2.0, 0.5, df / (df + t * t))


@dataclass(frozen=True)
class TestResult:
    """Welch's test of measured mean vs published mean (t > 0: measured is higher)."""

    t: float
    df: float
    p_two_sided: float
    se: float
    direction: str               # "better" / "worse" (by the metric's direction), else "higher" / "lower" / "equal"
    name: str = TEST_NAME

    @property
    def p(self) -> float:
        return self.p_two_sided


def _direction(diff: float, higher_is_better: bool | None) -> str:
    if diff == 0:
        return "equal"
    if higher_is_better is None:
        return "higher" if diff > 0 else "lower"
    return "better" if (diff > 0) == higher_is_better else "worse"


def welch_test(pub_mean: float, pub_std: float, pub_n: int, meas_mean: float, meas_std: float,
               meas_n: int, higher_is_better: bool | None = None) -> TestResult:
    """Welch's two-sample t-test from summary statistics (formula in the module docstring).

    Zero spread on both sides leaves no noise: any non-zero difference gets p = 0.
    """
    if pub_n < 2 or meas_n < 2:
        raise ValueError(f"Welch's test needs n ≥ 2 on both sides (published {pub_n}, measured {meas_n})")
    v1, v2 = pub_std ** 2 / pub_n, meas_std ** 2 / meas_n
    se = math.sqrt(v1 + v2)
    diff = meas_mean - pub_mean
    way = _direction(diff, higher_is_better)
    if se == 0.0:
        return TestResult(0.0 if diff == 0 else math.copysign(math.inf, diff), math.inf,
                          1.0 if diff == 0 else 0.0, 0.0, way)
    df = (v1 + v2) ** 2 / (v1 ** 2 / (pub_n - 1) + v2 ** 2 / (meas_n - 1))
    t = diff / se
    return TestResult(t, df, t_two_sided_p(t, df), se, way)


@dataclass(frozen=True)
class Tolerance:
    """A declared tolerance: ``value`` in printed units, or a fraction of the printed value."""

    value: float
    relative: bool = False
    source: str = ""              # where it was declared ("rounding": half a unit of the last digit)

    @classmethod
    def parse(cls, spec: float | int | str, source: str = "") -> "Tolerance":
        """``0.5`` → ±0.5; ``"1%"`` → ±1 % of the printed value."""
        if isinstance(spec, str) and spec.strip().endswith("%"):
            return cls(float(spec.strip()[:-1]) / 100.0, True, source)
        return cls(float(spec), False, source)

    def absolute(self, published: float) -> float:
        return abs(published) * self.value if self.relative else self.value

    def text(self) -> str:
        return f"±{self.value * 100:g}% of the printed value" if self.relative else f"±{self.value:g}"


@dataclass(frozen=True)
class Judgement:
    verdict: str
    difference: float
    tolerance: float
    test: TestResult | None = None
    reason: str = ""              # why no test was run, when it was not


def untested_reason(pub_std: float | None, pub_n: int | None, meas_std: float | None, meas_n: int) -> str:
    """Why Welch's test cannot be run on these summaries ("" when it can)."""
    if pub_std is None:
        return "no published ± to test against"
    if pub_n is None:
        return "the paper does not state its number of seeds"
    if pub_n < 2:
        return f"published n = {pub_n}"
    if meas_n < 2 or meas_std is None:
        return f"measured n = {meas_n}"
    return ""


def judge(pub_mean: float, pub_std: float | None, pub_n: int | None, meas_mean: float,
          meas_std: float | None, meas_n: int, higher_is_better: bool | None, tolerance: Tolerance,
          alpha: float = ALPHA) -> Judgement:
    """The verdict of one cell by the rule of the module docstring."""
    diff = meas_mean - pub_mean
    tol = tolerance.absolute(pub_mean)
    if abs(diff) <= tol + 1e-12:
        return Judgement("match", diff, tol)
    reason = untested_reason(pub_std, pub_n, meas_std, meas_n)
    if reason:
        return Judgement("untested", diff, tol, None, reason)
    res = welch_test(pub_mean, pub_std, pub_n, meas_mean, meas_std, meas_n, higher_is_better)  # type: ignore[arg-type]
    if res.p_two_sided >= alpha:
        return Judgement("within noise", diff, tol, res)
    return Judgement(res.direction if res.direction in ("better", "worse") else "differs", diff, tol, res)
