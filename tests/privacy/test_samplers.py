"""Tests for the exact discrete samplers in :mod:`veil.privacy.samplers`.

Statistical tests draw from :class:`InsecureSeededRandom` with fixed seeds, so every run is
deterministic; the false-alarm rate stated for each test is the probability that it would fail
on a correct sampler for a seed chosen at random. Goodness-of-fit tests are checked from both
sides: the same test must reject a sampler whose scale is 5% too large or too small.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Iterator
from fractions import Fraction

import mpmath
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from veil.errors import ConfigurationError
from veil.privacy import _exact, _kernel, _staircase, samplers
from veil.privacy.random import InsecureSeededRandom, SecureRandom
from veil.privacy.samplers import (
    bernoulli_exp,
    bernoulli_rational,
    discrete_gaussian,
    discrete_laplace,
    rational_upper_bound,
    uniform_below,
)

# False-alarm rate of each goodness-of-fit and binomial test.
ALPHA = 1e-4
# Moment checks allow this many standard errors: false-alarm rate about 6e-7 each.
MOMENT_SIGMAS = 5.0
SAMPLES = 200_000


def seed_for(*parts: object) -> int:
    """A fixed seed per test case, so cases do not share random streams."""
    return zlib.crc32(repr(parts).encode())


class ScriptedRandom:
    """A RandomSource that hands out the given words in order, to steer the samplers."""

    def __init__(self, words: list[int]) -> None:
        self._words: Iterator[int] = iter(words)
        self.remaining = len(words)

    @property
    def is_secure(self) -> bool:
        return False

    def words(self, n: int) -> npt.NDArray[np.uint64]:
        self.remaining -= n
        if self.remaining < 0:
            raise AssertionError("the sampler drew more words than the script holds")
        return np.array([next(self._words) for _ in range(n)], dtype=np.uint64)


def compiled_or_skip() -> None:
    if not _kernel.available():
        message = f"the compiled sampler pass is not built ({_kernel.LIBRARY})"
        if os.environ.get("VEIL_REQUIRE_ALL") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(params=["compiled", "numpy"])
def sampler_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a staircase test through the compiled candidate pass and through numpy's."""
    if request.param == "numpy":
        with _kernel.disabled():
            yield "numpy"
        return
    compiled_or_skip()
    yield "compiled"


def half_word(low: int, high: int = 0) -> int:
    """A 64-bit word whose first 32-bit draw (its low half, little-endian) is ``low``."""
    return low | (high << 32)


# --------------------------------------------------------------------------------------------
# Exact reference distributions
# --------------------------------------------------------------------------------------------

mpmath.mp.dps = 40


def laplace_pmf(scale: float | Fraction) -> tuple[int, npt.NDArray[np.float64]]:
    """(offset, p) with p[i] = P(X = i - offset) for the discrete Laplace; tails below 1e-25."""
    s = mpmath.mpf(Fraction(scale).numerator) / Fraction(scale).denominator
    radius = int(60 * float(s)) + 30
    q = mpmath.exp(-1 / s)
    norm = (1 - q) / (1 + q)
    probs = [norm * q ** abs(x) for x in range(-radius, radius + 1)]
    return radius, np.array([float(p) for p in probs])


def gaussian_pmf(sigma: float) -> tuple[int, npt.NDArray[np.float64]]:
    """(offset, p) with p[i] = P(X = i - offset) for the discrete Gaussian; tails below 1e-25."""
    s2 = mpmath.mpf(sigma) ** 2
    radius = int(12 * sigma) + 12
    weights = [mpmath.exp(-mpmath.mpf(x * x) / (2 * s2)) for x in range(-radius, radius + 1)]
    total = mpmath.fsum(weights)
    return radius, np.array([float(w / total) for w in weights])


def chi_square_pvalue(
    samples: npt.NDArray[np.int64], reference: tuple[int, npt.NDArray[np.float64]]
) -> float:
    """Pearson's chi-square p-value of ``samples`` against ``reference``.

    Bins are the single values whose expected count is at least 5, plus one pooled bin for each
    tail (merged into its neighbour if its own expected count is below 5).
    """
    offset, probs = reference
    n = samples.shape[0]
    expected_all = probs * n
    central = np.flatnonzero(expected_all >= 5)
    lo, hi = int(central[0]), int(central[-1])
    assert np.all(expected_all[lo : hi + 1] >= 5), "reference must be unimodal"
    counts = np.bincount(np.clip(samples + offset, 0, len(probs) - 1), minlength=len(probs))
    observed = counts[lo : hi + 1].astype(np.float64)
    expected = expected_all[lo : hi + 1].copy()
    low_obs, low_exp = float(counts[:lo].sum()), float(expected_all[:lo].sum())
    high_obs, high_exp = float(counts[hi + 1 :].sum()), float(expected_all[hi + 1 :].sum())
    if low_exp >= 5:
        observed, expected = np.append(low_obs, observed), np.append(low_exp, expected)
    else:
        observed[0] += low_obs
        expected[0] += low_exp
    if high_exp >= 5:
        observed, expected = np.append(observed, high_obs), np.append(expected, high_exp)
    else:
        observed[-1] += high_obs
        expected[-1] += high_exp
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    return float(stats.chi2.sf(statistic, df=len(observed) - 1))


def moments(reference: tuple[int, npt.NDArray[np.float64]]) -> tuple[float, float, float]:
    """Mean, variance and fourth central moment of a reference pmf."""
    offset, probs = reference
    x = np.arange(len(probs), dtype=np.float64) - offset
    mean = float(np.sum(x * probs))
    var = float(np.sum((x - mean) ** 2 * probs))
    mu4 = float(np.sum((x - mean) ** 4 * probs))
    return mean, var, mu4


# Drawn scale = nominal scale x factor; only factor 1 may pass the test against the nominal pmf.
FACTORS = [Fraction(1), Fraction(21, 20), Fraction(19, 20)]


def check_fit(
    sampled: npt.NDArray[np.int64], reference: tuple[int, npt.NDArray[np.float64]], factor: Fraction
) -> None:
    p_value = chi_square_pvalue(sampled, reference)
    if factor == 1:
        assert p_value > ALPHA, f"a correct sampler failed the fit (p = {p_value:.3g})"
    else:
        assert p_value < ALPHA, (
            f"the test did not notice a scale off by {factor} (p = {p_value:.3g})"
        )


# --------------------------------------------------------------------------------------------
# Discrete Laplace
# --------------------------------------------------------------------------------------------

LAPLACE_SCALES: list[float | Fraction] = [0.5, 1.0, 3.7, 100.0, Fraction(7, 3)]


@pytest.mark.parametrize("factor", FACTORS, ids=["exact", "5%-wider", "5%-narrower"])
@pytest.mark.parametrize("scale", LAPLACE_SCALES, ids=str)
def test_discrete_laplace_fits_its_pmf(scale: float | Fraction, factor: Fraction) -> None:
    """Chi-square fit at false-alarm rate 1e-4; a 5% error in the scale must be rejected."""
    rng = InsecureSeededRandom(seed_for("laplace-fit", scale, factor))
    drawn = discrete_laplace(rng, SAMPLES, scale=scale * factor)
    check_fit(drawn, laplace_pmf(scale), factor)


@pytest.mark.parametrize("scale", [1.0, 3.7, 100.0])
def test_discrete_laplace_mean_and_variance(scale: float) -> None:
    """Mean 0 and variance 2e^{-1/s}/(1 - e^{-1/s})², each within 5 standard errors."""
    rng = InsecureSeededRandom(seed_for("laplace-moments", scale))
    drawn = discrete_laplace(rng, SAMPLES, scale=scale).astype(np.float64)
    q = math.exp(-1.0 / scale)
    variance = 2 * q / (1 - q) ** 2
    _, exact_variance, mu4 = moments(laplace_pmf(scale))
    assert variance == pytest.approx(exact_variance, rel=1e-9)
    assert abs(drawn.mean()) < MOMENT_SIGMAS * math.sqrt(variance / SAMPLES)
    standard_error = math.sqrt((mu4 - variance**2) / SAMPLES)
    assert abs(drawn.var() - variance) < MOMENT_SIGMAS * standard_error


# --------------------------------------------------------------------------------------------
# Discrete Gaussian
# --------------------------------------------------------------------------------------------

GAUSSIAN_SIGMAS = [0.3, 0.6, 1.0, 2.5, 40.0]


@pytest.mark.parametrize("factor", FACTORS, ids=["exact", "5%-wider", "5%-narrower"])
@pytest.mark.parametrize("sigma", GAUSSIAN_SIGMAS, ids=str)
def test_discrete_gaussian_fits_its_pmf(sigma: float, factor: Fraction) -> None:
    """Chi-square fit at false-alarm rate 1e-4; a 5% error in sigma must be rejected."""
    rng = InsecureSeededRandom(seed_for("gaussian-fit", sigma, factor))
    drawn = discrete_gaussian(rng, SAMPLES, sigma=float(sigma * factor))
    check_fit(drawn, gaussian_pmf(sigma), factor)


@pytest.mark.parametrize("sigma", [0.6, 2.5, 40.0])
def test_discrete_gaussian_mean_and_variance(sigma: float) -> None:
    """Mean 0 and the exact variance (from the pmf), each within 5 standard errors."""
    rng = InsecureSeededRandom(seed_for("gaussian-moments", sigma))
    drawn = discrete_gaussian(rng, SAMPLES, sigma=sigma).astype(np.float64)
    _, variance, mu4 = moments(gaussian_pmf(sigma))
    if sigma >= 2:  # the discrete Gaussian's variance is within 1e-30 of σ² here
        assert variance == pytest.approx(sigma**2, rel=1e-12)
    assert abs(drawn.mean()) < MOMENT_SIGMAS * math.sqrt(variance / SAMPLES)
    standard_error = math.sqrt((mu4 - variance**2) / SAMPLES)
    assert abs(drawn.var() - variance) < MOMENT_SIGMAS * standard_error


def test_discrete_gaussian_with_tiny_sigma_is_zero() -> None:
    """At σ = 0.01, P(X != 0) is about 2e^{-5000}."""
    drawn = discrete_gaussian(InsecureSeededRandom(5), 10_000, sigma=0.01)
    assert not drawn.any()


def test_far_gaussian_proposals_are_rejected_without_overflow() -> None:
    """Proposals whose γ does not fit int64 go through the exact lower-bound path."""
    n, d = rational_upper_bound(Fraction(3.0) ** 2)
    plan = samplers._gaussian_plan(n, d)
    far = np.array([2**62, -(2**62), 10**9, -(10**9), 3, 0], dtype=np.int64)
    kept = samplers._gaussian_accept(InsecureSeededRandom(11), far, plan)
    assert not kept[:4].any()  # each kept with probability below e^{-1000}


def test_far_proposal_survivors_finish_with_python_integers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Force the (probability e^-1000) survivors of the lower bound onto the exact path."""
    n, d = rational_upper_bound(Fraction(3.0) ** 2)
    plan = samplers._gaussian_plan(n, d)
    monkeypatch.setattr(
        samplers, "_survive_exp_minus_one", lambda rng, counts: np.ones(len(counts), dtype=bool)
    )
    far = np.array([2**62, -(10**9)], dtype=np.int64)
    assert not samplers._gaussian_accept(InsecureSeededRandom(12), far, plan).any()


def test_laplace_values_beyond_int64_intermediates_are_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """U + num V would overflow int64 only for V > 2**11 (probability e^-2048); force it."""
    monkeypatch.setattr(
        samplers, "_geometric_exp_minus_one", lambda rng, n: np.full(n, 2**40, dtype=np.int64)
    )
    num, den = 2**51 + 1, 2**51
    drawn = samplers._laplace_candidates(InsecureSeededRandom(13), 64, num, den)
    assert drawn.size > 0
    # Every |Y| is (U + num 2**40) // den for some U < num: between 2**40 and 2**40 + 2.
    assert np.all((np.abs(drawn) >= 2**40) & (np.abs(drawn) <= 2**40 + 2))


# --------------------------------------------------------------------------------------------
# Bernoulli(a / b)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [(1, 3), (2, 3), (1, 2), (999, 1000), (1, 7), (2**61, 3 * 2**60 + 1), (5, 2**40)],
)
def test_bernoulli_rational_frequency(a: int, b: int) -> None:
    """Two-sided exact binomial test at false-alarm rate 1e-4."""
    rng = InsecureSeededRandom(seed_for("bernoulli-rational", a, b))
    drawn = bernoulli_rational(rng, np.full(SAMPLES, a), b)
    assert drawn.dtype == np.bool_
    assert drawn.shape == (SAMPLES,)
    p_value = stats.binomtest(int(drawn.sum()), SAMPLES, a / b).pvalue
    assert p_value > ALPHA


def test_bernoulli_rational_certain_outcomes_draw_nothing() -> None:
    drawn = bernoulli_rational(ScriptedRandom([]), [0, 5, 0, 2**61], [1, 5, 9, 2**61])
    assert drawn.tolist() == [False, True, False, True]


def test_bernoulli_rational_broadcasts() -> None:
    drawn = bernoulli_rational(InsecureSeededRandom(1), np.zeros((3, 1), dtype=np.int64), [1, 2])
    assert drawn.shape == (3, 2)
    assert not drawn.any()
    mixed = bernoulli_rational(InsecureSeededRandom(2), np.array([[0], [4]]), np.array([4, 4]))
    assert mixed.tolist() == [[False, False], [True, True]]


# floor(2**32 / 3) and floor(2**64 / 3): a word at one of these ties with the threshold of 1/3.
T32_THIRD = (1 << 32) // 3
T64_THIRD = (1 << 64) // 3


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        # The first 32-bit draw decides when it is not the threshold, even inside the margin.
        ([half_word(T32_THIRD - 1)], True),
        ([half_word(T32_THIRD + 1)], False),
        ([half_word(0)], True),
        ([half_word(2**32 - 1)], False),
        # A tie continues with Bernoulli(((1 << 32) mod 3) / 3) = Bernoulli(1/3) on 64-bit words;
        # float64 alone would say True here (the draw is 1/3 below the threshold).
        ([half_word(T32_THIRD), 2**64 - 1], False),
        ([half_word(T32_THIRD), 0], True),
        ([half_word(T32_THIRD), T64_THIRD - 1], True),
        ([half_word(T32_THIRD), T64_THIRD + 1], False),
        # A second tie continues again.
        ([half_word(T32_THIRD), T64_THIRD, T64_THIRD, 2**64 - 1], False),
        ([half_word(T32_THIRD), T64_THIRD, 5], True),
    ],
)
def test_bernoulli_rational_undecided_entries_are_settled_exactly(
    script: list[int], expected: bool
) -> None:
    rng = ScriptedRandom(script)
    assert bernoulli_rational(rng, [1], [3]).tolist() == [expected]
    assert rng.remaining == 0


def reference_bernoulli(a: int, b: int, bits: list[int], widths: list[int]) -> bool | None:
    """U < a/b for U read from ``bits`` (of the given widths); None if they do not decide it."""
    position = 0
    value = 0
    for word, width in zip(bits, widths, strict=True):
        value = (value << width) | word
        position += width
        # U lies in [value, value + 1) / 2**position
        if (value + 1) * b <= a << position:
            return True
        if value * b >= a << position:
            return False
    return None


@settings(max_examples=300, deadline=None)
@given(
    b=st.integers(min_value=2, max_value=2**62 - 1),
    fraction=st.floats(min_value=0.0, max_value=1.0),
    offset=st.integers(min_value=-3, max_value=3),
    follow_up=st.lists(st.integers(min_value=0, max_value=2**64 - 1), min_size=3, max_size=3),
)
def test_bernoulli_rational_agrees_with_exact_reference_near_the_threshold(
    b: int, fraction: float, offset: int, follow_up: list[int]
) -> None:
    """Draws placed right at floor(a 2**32 / b) + offset, the float path's blind spot."""
    a = min(b - 1, max(1, int(fraction * b)))
    first = min(2**32 - 1, max(0, (a << 32) // b + offset))
    expected = reference_bernoulli(a, b, [first, *follow_up], [32, 64, 64, 64])
    if expected is None:  # needs more than 224 bits: probability 2**-192
        return
    rng = ScriptedRandom([half_word(first), *follow_up])
    assert bernoulli_rational(rng, [a], [b]).tolist() == [expected]


@pytest.mark.parametrize(
    ("script", "expected"),
    [([84], True), ([86], False), ([85, 0], True), ([85, 255], False), ([85, 85, 84], True)],
)
def test_bernoulli_constant_ties_continue_exactly(script: list[int], expected: bool) -> None:
    """A fixed ratio uses 8-bit draws (the low byte of each word here); a byte at
    floor(256/3) = 85 continues with Bernoulli((256 mod 3) / 3) = Bernoulli(1/3)."""
    rng = ScriptedRandom(script)
    assert _exact._bernoulli_constant(rng, 1, 1, 3).tolist() == [expected]
    assert rng.remaining == 0


# --------------------------------------------------------------------------------------------
# Bernoulli(exp(-γ))
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [(3, 10), (1, 1), (5, 2), (7, 1), (1, 3 * 2**58 + 7)])
def test_bernoulli_exp_frequency(a: int, b: int) -> None:
    """Two-sided exact binomial test against exp(-a/b) at false-alarm rate 1e-4."""
    rng = InsecureSeededRandom(seed_for("bernoulli-exp", a, b))
    drawn = bernoulli_exp(rng, np.full(SAMPLES, a), b)
    p_value = stats.binomtest(int(drawn.sum()), SAMPLES, math.exp(-a / b)).pvalue
    assert p_value > ALPHA


def test_bernoulli_exp_of_zero_is_certain() -> None:
    assert bernoulli_exp(InsecureSeededRandom(3), np.zeros(1000, dtype=np.int64), 7).all()


def test_bernoulli_exp_mixed_entries() -> None:
    """Different γ per entry, each frequency within a binomial test at false-alarm rate 1e-4."""
    gammas = [(0, 1), (3, 10), (1, 1), (5, 2), (7, 1)]
    a = np.tile([g[0] for g in gammas], 40_000)
    b = np.tile([g[1] for g in gammas], 40_000)
    drawn = bernoulli_exp(InsecureSeededRandom(4), a, b).reshape(40_000, len(gammas))
    for column, (num, den) in enumerate(gammas):
        hits = int(drawn[:, column].sum())
        assert stats.binomtest(hits, 40_000, math.exp(-num / den)).pvalue > ALPHA


def test_bernoulli_exp_of_a_huge_exponent_is_false() -> None:
    drawn = bernoulli_exp(InsecureSeededRandom(6), np.full(1000, 2**63 - 1), 1)
    assert not drawn.any()


@pytest.mark.parametrize(("a", "b"), [(3, 10), (5, 2)])
def test_exact_python_integer_path_frequency(a: int, b: int) -> None:
    """The per-entry Python path used for overflowing entries; binomial test at 1e-4."""
    rng = InsecureSeededRandom(seed_for("exact-path", a, b))
    hits = sum(_exact._bernoulli_exp_exact(rng, a, b) for _ in range(20_000))
    assert stats.binomtest(hits, 20_000, math.exp(-a / b)).pvalue > ALPHA


# --------------------------------------------------------------------------------------------
# Uniform integers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bound", [3, 7, 1000])
def test_uniform_below_small_bounds(bound: int) -> None:
    """Chi-square uniformity at false-alarm rate 1e-4."""
    drawn = uniform_below(InsecureSeededRandom(seed_for("uniform", bound)), SAMPLES, bound)
    assert drawn.dtype == np.int64
    assert drawn.min() >= 0
    assert drawn.max() < bound
    counts = np.bincount(drawn, minlength=bound)
    assert stats.chisquare(counts).pvalue > ALPHA


@pytest.mark.parametrize("bound", [2**62, 2**62 - 1, 3 * 2**60 + 1])
def test_uniform_below_large_bounds(bound: int) -> None:
    """64 equal-width buckets (widths differ by at most 1 in 2**56), chi-square at 1e-4."""
    drawn = uniform_below(InsecureSeededRandom(seed_for("uniform", bound)), SAMPLES, bound)
    assert drawn.min() >= 0
    assert int(drawn.max()) < bound
    buckets = [int(x) * 64 // bound for x in drawn.tolist()]
    assert stats.chisquare(np.bincount(buckets, minlength=64)).pvalue > ALPHA


def test_uniform_below_rejects_the_top_partial_block() -> None:
    bound = 3 * 2**60 + 1  # 2**64 mod bound = 2**60 - 5: words at or above 2**64 - that retry
    limit = 2**64 - (2**64 % bound)
    rng = ScriptedRandom([limit, 2**64 - 1, limit - 1])
    assert uniform_below(rng, 1, bound).tolist() == [(limit - 1) % bound]
    assert rng.remaining == 0


def test_uniform_below_bound_one_and_empty() -> None:
    assert uniform_below(ScriptedRandom([]), 5, 1).tolist() == [0] * 5
    assert uniform_below(ScriptedRandom([]), 0, 10).shape == (0,)


# --------------------------------------------------------------------------------------------
# Rational scales
# --------------------------------------------------------------------------------------------


def test_rational_upper_bound_is_exact_for_dyadic_values() -> None:
    assert rational_upper_bound(0.5) == (1, 2)
    assert rational_upper_bound(10.0) == (10, 1)
    assert rational_upper_bound(Fraction(3, 4)) == (3, 4)


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=1e-3, max_value=1e9))
def test_rational_upper_bound_rounds_up_by_less_than_1e_9(x: float) -> None:
    num, den = rational_upper_bound(x)
    assert num < 2**52
    assert den & (den - 1) == 0
    excess = Fraction(num, den) - Fraction(x)
    assert 0 <= excess < Fraction(x) * Fraction(1, 2**51)


def test_rational_upper_bound_of_a_fraction_rounds_up() -> None:
    num, den = rational_upper_bound(Fraction(1, 3))
    assert Fraction(num, den) >= Fraction(1, 3)
    assert Fraction(num, den) - Fraction(1, 3) < Fraction(1, 2**52)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, -math.inf, 2.0**60, 1e-12])
def test_rational_upper_bound_rejects(bad: float) -> None:
    with pytest.raises(ConfigurationError):
        rational_upper_bound(bad)


# --------------------------------------------------------------------------------------------
# Secure generator, sizes and parameter checks
# --------------------------------------------------------------------------------------------

Sampler = Callable[[int], npt.NDArray[np.int64]]


@pytest.mark.parametrize(
    ("name", "sample", "spread"),
    [
        ("laplace", lambda n: discrete_laplace(SecureRandom(), n, scale=10.0), 14.1),
        ("gaussian", lambda n: discrete_gaussian(SecureRandom(), n, sigma=10.0), 10.0),
    ],
)
def test_samplers_run_on_the_secure_generator(name: str, sample: Sampler, spread: float) -> None:
    drawn = sample(50_000)
    assert drawn.dtype == np.int64
    assert drawn.shape == (50_000,)
    # Standard deviation within 5%: a failure rate far below 1e-6 for 50,000 draws.
    assert abs(float(drawn.std()) / spread - 1) < 0.05, name
    assert abs(float(drawn.mean())) < 1.0


@pytest.mark.parametrize("size", [0, 1, 2, 999, 1001])
def test_exact_sizes(size: int) -> None:
    for drawn in (
        discrete_laplace(InsecureSeededRandom(size), size, scale=2.0),
        discrete_gaussian(InsecureSeededRandom(size), size, sigma=2.0),
    ):
        assert drawn.shape == (size,)
        assert drawn.dtype == np.int64


def test_seeded_draws_are_reproducible() -> None:
    first = discrete_gaussian(InsecureSeededRandom(9), 1000, sigma=3.0)
    again = discrete_gaussian(InsecureSeededRandom(9), 1000, sigma=3.0)
    assert np.array_equal(first, again)


@pytest.mark.parametrize(
    "call",
    [
        lambda: discrete_laplace(SecureRandom(), 10, scale=0.0),
        lambda: discrete_laplace(SecureRandom(), 10, scale=-1.0),
        lambda: discrete_laplace(SecureRandom(), 10, scale=math.nan),
        lambda: discrete_laplace(SecureRandom(), 10, scale=math.inf),
        lambda: discrete_laplace(SecureRandom(), 10, scale=Fraction(-1, 2)),
        lambda: discrete_laplace(SecureRandom(), 10, scale="1"),
        lambda: discrete_laplace(SecureRandom(), -1, scale=1.0),
        lambda: discrete_laplace(SecureRandom(), 2.5, scale=1.0),
        lambda: discrete_laplace(SecureRandom(), True, scale=1.0),
        lambda: discrete_gaussian(SecureRandom(), 10, sigma=0.0),
        lambda: discrete_gaussian(SecureRandom(), 10, sigma=-2.0),
        lambda: discrete_gaussian(SecureRandom(), 10, sigma=math.nan),
        lambda: discrete_gaussian(SecureRandom(), 10, sigma=math.inf),
        lambda: discrete_gaussian(SecureRandom(), 10, sigma=1e9),
        lambda: discrete_gaussian(SecureRandom(), 10, sigma=1e-6),
        lambda: discrete_gaussian(SecureRandom(), -3, sigma=1.0),
        lambda: bernoulli_rational(SecureRandom(), 4, 3),
        lambda: bernoulli_rational(SecureRandom(), -1, 3),
        lambda: bernoulli_rational(SecureRandom(), 1, 0),
        lambda: bernoulli_rational(SecureRandom(), 1, 2**62),
        lambda: bernoulli_rational(SecureRandom(), 0.5, 1),
        lambda: bernoulli_rational(SecureRandom(), [1, 2], [3, 4, 5]),
        lambda: bernoulli_rational(SecureRandom(), 2**70, 2**71),
        lambda: bernoulli_exp(SecureRandom(), -1, 3),
        lambda: bernoulli_exp(SecureRandom(), 1, 0),
        lambda: bernoulli_exp(SecureRandom(), [1.5], 2),
        lambda: uniform_below(SecureRandom(), 3, 0),
        lambda: uniform_below(SecureRandom(), 3, 2**62 + 1),
        lambda: uniform_below(SecureRandom(), -1, 5),
    ],
)
def test_bad_parameters_raise_configuration_error(call: Callable[[], object]) -> None:
    with pytest.raises(ConfigurationError):
        call()


# --------------------------------------------------------------------------------------------
# The staircase sampler (sigma >= 16) and its exact building blocks
# --------------------------------------------------------------------------------------------

STAIRCASE_SIGMAS = [16.0, 23.9, 100.5]


@pytest.mark.parametrize("factor", FACTORS, ids=["exact", "5%-wider", "5%-narrower"])
@pytest.mark.parametrize("sigma", STAIRCASE_SIGMAS, ids=str)
def test_staircase_gaussian_fits_its_pmf(sigma: float, factor: Fraction) -> None:
    """Chi-square fit at false-alarm rate 1e-4 (K = 1, 1 and 6); a 5% error must be rejected."""
    rng = InsecureSeededRandom(seed_for("staircase-fit", sigma, factor))
    drawn = discrete_gaussian(rng, SAMPLES, sigma=float(sigma * factor))
    check_fit(drawn, gaussian_pmf(sigma), factor)


def binned_gaussian(
    sigma: float, width: float, radius: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Integer bin edges ``[e_i, e_{i+1})`` and each bin's probability under the discrete
    Gaussian, for a large sigma: by Euler-Maclaurin the sum over the integers of a bin is the
    normal integral over ``[e_i - 1/2, e_{i+1} - 1/2)`` within a relative 1e-10."""
    edges = np.round(np.arange(-radius, radius + width / 2, width)).astype(np.float64)
    cdf = stats.norm.cdf((edges - 0.5) / sigma)
    probs = np.diff(cdf)
    return edges, probs


@pytest.mark.parametrize("factor", FACTORS, ids=["exact", "5%-wider", "5%-narrower"])
def test_staircase_gaussian_with_a_large_sigma(factor: Fraction) -> None:
    """σ = 524,739 (the DP-SGD grid noise of a 203,530-parameter MLP) in 48 bins of σ/8 plus
    the two tails: chi-square at false-alarm rate 1e-4, and a 5% error in σ rejected."""
    sigma = 524_739.142
    rng = InsecureSeededRandom(seed_for("staircase-large", factor))
    drawn = discrete_gaussian(rng, SAMPLES, sigma=float(sigma * float(factor)))
    edges, probs = binned_gaussian(sigma, sigma / 8, 3 * sigma)
    inner = np.histogram(drawn, bins=edges)[0].astype(np.float64)
    low, high = float((drawn < edges[0]).sum()), float((drawn >= edges[-1]).sum())
    observed = np.concatenate([[low], inner, [high]])
    tail = float(stats.norm.cdf((edges[0] - 0.5) / sigma))
    expected = np.concatenate([[tail], probs, [tail]]) * SAMPLES
    p_value = float(stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue)
    if factor == 1:
        assert p_value > ALPHA
    else:
        assert p_value < ALPHA


def test_exp_thresholds_are_the_exact_floors() -> None:
    table = _exact._exp_thresholds()
    assert table[0] == 2**32 - 1
    assert table[-1] == 0
    assert len(table) % 4 == 1
    with mpmath.workdps(60):
        for j in range(1, len(table)):
            exact = int(mpmath.floor(mpmath.ldexp(mpmath.exp(-mpmath.mpf(j) / 64), 32)))
            assert table[j] == exact, j
    assert table[-2] > 0 or (len(table) - 2) % 4 != 0


@pytest.mark.parametrize(
    "x", [Fraction(0), Fraction(1, 64), Fraction(1, 3), Fraction(7, 2), Fraction(10**6, 7)]
)
@pytest.mark.parametrize("prec", [32, 64, 200])
def test_exp_minus_bounds_bracket_the_value(x: Fraction, prec: int) -> None:
    lo, hi = _exact._exp_minus_bounds(x, prec)
    with mpmath.workdps(prec // 3 + 40):
        value = mpmath.ldexp(mpmath.exp(-mpmath.mpf(x.numerator) / x.denominator), prec)
        assert lo <= value <= hi
    assert hi - lo <= 4


def test_lazy_uniform_draws_more_bits_only_when_needed() -> None:
    x = Fraction(3, 16)
    threshold = _exact._exp_thresholds()[12]  # floor(2**32 exp(-3/16))
    below = _exact._LazyUniform(ScriptedRandom([0]), threshold, 32)
    assert below.below_exp(x)  # U = T/2**32 + 0 < exp(-3/16)
    above = _exact._LazyUniform(ScriptedRandom([2**64 - 1]), threshold, 32)
    assert not above.below_exp(x)  # U just under (T + 1)/2**32 > exp(-3/16)
    assert _exact._LazyUniform(ScriptedRandom([]), threshold - 1, 32).below_exp(x)
    assert not _exact._LazyUniform(ScriptedRandom([]), threshold + 1, 32).below_exp(x)


def staircase_script(v: int, r_sign: int, first: int, residual: int) -> list[int]:
    """Two words whose four 32-bit halves are the draws of one staircase candidate."""
    return [v | (r_sign << 32), first | (residual << 32)]


@pytest.mark.usefixtures("sampler_path")
def test_staircase_settles_a_tie_of_v_exactly() -> None:
    """A V draw equal to the threshold of v = 3 is settled by more bits (σ = 16: K = 1)."""
    n, d = rational_upper_bound(Fraction(16) ** 2)
    plan = _staircase._StaircasePlan(n, d)
    assert plan.k == 1
    tie = int(_exact._exp_thresholds()[12])
    kept = staircase_script(tie, 0, 0, 2**32 - 1)  # positive, first factor and residual pass
    draw = _staircase._staircase_candidates
    assert draw(ScriptedRandom([*kept, 0]), 1, plan).tolist() == [3]
    assert draw(ScriptedRandom([*kept, 2**64 - 1]), 1, plan).tolist() == [2]


@pytest.mark.usefixtures("sampler_path")
def test_staircase_settles_a_tie_of_the_first_factor_exactly() -> None:
    """A draw equal to T[j] is settled by more bits: below exp(-j/64) keeps, above drops."""
    n, d = rational_upper_bound(Fraction(16) ** 2)
    plan = _staircase._StaircasePlan(n, d)
    table = _exact._exp_thresholds()
    v_draw = int(table[4 * 41]) - 5  # V = 41 (U just below exp(-41/16))
    gamma = plan.gamma(41, 0)
    j = math.floor(64 * gamma)
    assert 64 * gamma - j > 1e-6  # far from a boundary: the float j is exact
    first = int(table[j])
    script = staircase_script(v_draw, 0, first, 2**32 - 1)
    draw = _staircase._staircase_candidates
    assert draw(ScriptedRandom([*script, 0]), 1, plan).tolist() == [41]
    assert draw(ScriptedRandom([*script, 2**64 - 1]), 1, plan).tolist() == []


@pytest.mark.usefixtures("sampler_path")
def test_staircase_rejects_negative_zero_and_signs_the_rest() -> None:
    n, d = rational_upper_bound(Fraction(16) ** 2)
    plan = _staircase._StaircasePlan(n, d)
    v_zero = 2**32 - 2  # U close to 1: V = 0
    negative = 1 << 31
    v_one = int(_exact._exp_thresholds()[4]) - 1  # V = 1
    assert (
        _staircase._staircase_candidates(
            ScriptedRandom(staircase_script(v_zero, negative, 0, 2**32 - 1)), 1, plan
        ).tolist()
        == []
    )
    assert _staircase._staircase_candidates(
        ScriptedRandom(staircase_script(v_one, negative, 0, 2**32 - 1)), 1, plan
    ).tolist() == [-1]
    assert _staircase._staircase_candidates(
        ScriptedRandom(staircase_script(v_zero, 0, 0, 2**32 - 1)), 1, plan
    ).tolist() == [0]


def test_word_pool_hands_out_each_word_once_in_order() -> None:
    reference = InsecureSeededRandom(21).words(2 * _exact._POOL_WORDS)
    pool = _exact._WordPool(InsecureSeededRandom(21))
    first = pool.words(3).copy()
    second = pool.words(5).copy()
    assert first.tolist() == reference[:3].tolist()
    assert second.tolist() == reference[3:8].tolist()
    # a request that does not fit in the rest of the block starts a fresh block
    big = pool.words(_exact._POOL_WORDS - 4)
    assert big.tolist() == reference[_exact._POOL_WORDS : 2 * _exact._POOL_WORDS - 4].tolist()
    assert pool.is_secure is False
    assert _exact._WordPool(SecureRandom()).is_secure is True


@pytest.mark.usefixtures("sampler_path")
@pytest.mark.parametrize(
    ("residual_offset", "extra", "expected"),
    [
        (0, [], [41]),  # w = δ 2**32 exactly: not below it, Bernoulli(δ) fails, K = 1 keeps
        (-1, [2**64 - 1], []),  # Bernoulli(δ) succeeds, Bernoulli(δ/2) fails: K = 2 drops
        (-1, [0, 2**64 - 1], [41]),  # succeeds twice, then fails: K = 3 keeps
    ],
)
def test_staircase_residual_inside_the_float_margin_is_settled_exactly(
    residual_offset: int, extra: list[int], expected: list[int]
) -> None:
    """σ = 16, |Y| = 41: γ = 625/512, j = 78, δ = 1/512, so δ 2**32 = 2**23 exactly; draws
    next to it fall inside the float margin and take the exact path (and later rounds)."""
    n, d = rational_upper_bound(Fraction(16) ** 2)
    plan = _staircase._StaircasePlan(n, d)
    assert plan.gamma(41, 0) == Fraction(625, 512)
    v_draw = int(_exact._exp_thresholds()[4 * 41]) - 5
    script = staircase_script(v_draw, 0, 0, 2**23 + residual_offset)
    rng = ScriptedRandom([*script, *extra])
    assert _staircase._staircase_candidates(rng, 1, plan).tolist() == expected
    assert rng.remaining == 0


# --------------------------------------------------------------------------------------------
# The staircase against an exact reference, candidate by candidate (second review)
#
# A candidate's fate is fixed by its four 32-bit draws (and, rarely, more words). The tests
# below put each draw on the far sides of the exact boundary that decides it (a value of V, a
# value of R, the threshold T[j] of exp(-j/64), the residual threshold δ 2**32) and check the
# sampler's verdict, with γ, j and δ computed here from Fractions alone. Together with the
# exact table (test_exp_thresholds_are_the_exact_floors) this pins down P(candidate = y and
# kept) for every y with γ below the last threshold, not just a histogram of it.
# --------------------------------------------------------------------------------------------


def staircase_plan(sigma: float | Fraction) -> _staircase._StaircasePlan:
    n, d = rational_upper_bound(Fraction(sigma) ** 2)
    return _staircase._StaircasePlan(n, d)


def lemire_draw(r: int, k: int) -> int:
    """31 bits ``x`` with ``(x k) >> 31 == r`` that Lemire's rejection keeps."""
    x = ((r << 31) + (1 << 30)) // k
    assert (x * k) >> 31 == r and (x * k) % (1 << 31) >= (1 << 31) % k
    return x


def exact_gamma(sigma: float | Fraction, magnitude: int, r: int) -> tuple[Fraction, int]:
    """γ = (|y| - τ)²/(2σ²) + R/t from σ² = n/d alone, and K."""
    n, d = rational_upper_bound(Fraction(sigma) ** 2)
    variance = Fraction(n, d)
    k = max(1, round(math.sqrt(n / d) / 16))
    t = 16 * k
    tau = variance / t
    return (magnitude - tau) ** 2 / (2 * variance) + Fraction(r, t), k


STAIRCASE_REFERENCE_SIGMAS: list[float | Fraction] = [
    16.0,
    23.9,
    100.5,
    Fraction(100_001, 3),
    524_739.142,
    float(2**26 - 1),
]


@pytest.mark.usefixtures("sampler_path")
@pytest.mark.parametrize("sigma", STAIRCASE_REFERENCE_SIGMAS, ids=str)
def test_staircase_verdicts_match_the_exact_acceptance(sigma: float | Fraction) -> None:
    """For candidates across the whole range with γ < 1420/64: V and R come out as scripted,
    a first draw just below T[j] with a failing Bernoulli(δ) keeps, one just above T[j] drops,
    and a Bernoulli(δ) that succeeds followed by a failing Bernoulli(δ/2) drops, with
    ``j = ceil(64 γ) - 1`` and ``δ = γ - j/64`` exact."""
    plan = staircase_plan(sigma)
    table = [int(x) for x in _exact._exp_thresholds()]
    j_max = len(table) - 1
    rng = np.random.default_rng(seed_for("staircase-reference", sigma))
    checked = 0
    for v in range(354):
        rs = {0, plan.k - 1, int(rng.integers(plan.k))}
        for r in sorted(rs):
            gamma, k = exact_gamma(sigma, v * plan.k + r, r)
            assert k == plan.k
            assert gamma == plan.gamma(v * plan.k + r, r)
            if 64 * gamma >= j_max:
                continue  # beyond the table: exp(-γ) < 2**-32, settled by the tie path
            j = max(0, math.ceil(64 * gamma) - 1)
            frac = 64 * gamma - math.floor(64 * gamma)
            if 0 < frac < Fraction(1, 2**30):
                continue  # the float γ may (legitimately) take j - 1 here
            delta = gamma - Fraction(j, 64)
            assert 0 <= delta <= Fraction(1, 64)
            y = v * plan.k + r
            v_draw = table[4 * v] - 1
            r_sign = lemire_draw(r, plan.k)
            residual_fail = math.floor(delta * 2**32) + 3
            kept = staircase_script(v_draw, r_sign, table[j] - 1, residual_fail)
            assert _staircase._staircase_candidates(ScriptedRandom(kept), 1, plan).tolist() == [y]
            negative = staircase_script(v_draw, r_sign | 1 << 31, table[j] - 1, residual_fail)
            expected = [] if y == 0 else [-y]
            drawn = _staircase._staircase_candidates(ScriptedRandom(negative), 1, plan).tolist()
            assert drawn == expected
            if table[j] + 1 < 2**32:
                dropped = staircase_script(v_draw, r_sign, table[j] + 1, residual_fail)
                assert _staircase._staircase_candidates(ScriptedRandom(dropped), 1, plan).size == 0
            if delta * 2**32 >= 3:
                residual_pass = math.floor(delta * 2**32) - 3
                script = [*staircase_script(v_draw, r_sign, 0, residual_pass), 2**64 - 1]
                words = ScriptedRandom(script)
                assert _staircase._staircase_candidates(words, 1, plan).size == 0
                assert words.remaining == 0
            checked += 1
    assert checked > 100


@pytest.mark.usefixtures("sampler_path")
def test_staircase_decodes_v_exactly_at_every_threshold() -> None:
    """σ = 16 (K = 1, R = 0): a V draw one below T[4v], one above T[4v + 4], or equal to T[4v]
    (settled by the next word) gives exactly the V of the lazily read uniform, for every v
    whose candidate passes the first factor at a zero draw."""
    plan = staircase_plan(16.0)
    table = [int(x) for x in _exact._exp_thresholds()]
    keep = (0, 2**32 - 1)  # first factor passes (T[j] >= 1), Bernoulli(δ) fails
    for v in range(122):
        assert exact_gamma(16.0, v, 0)[0] < Fraction(len(table) - 1, 64)
        for w in {table[4 * v] - 1, table[4 * v + 4] + 1}:
            script = staircase_script(w, 0, *keep)
            assert _staircase._staircase_candidates(ScriptedRandom(script), 1, plan).tolist() == [v]
        if v:
            tie = staircase_script(table[4 * v], 0, *keep)
            below = _staircase._staircase_candidates(ScriptedRandom([*tie, 0]), 1, plan)
            above = _staircase._staircase_candidates(ScriptedRandom([*tie, 2**64 - 1]), 1, plan)
            assert below.tolist() == [v]
            assert above.tolist() == [v - 1]


@pytest.mark.parametrize("k", [1, 3, 6, 1000, 2**21 + 1])
def test_staircase_lemire_rejects_exactly_the_biased_low_parts(k: int) -> None:
    """Every value r < K has the same number of kept 31-bit draws: counted exactly from the
    multiply-and-shift rule the sampler uses (a check of reject_below, not a sample)."""
    plan = staircase_plan(Fraction(16 * k))
    assert plan.k == k
    total = 1 << 31
    # x is kept with R = r exactly when r 2**31 + reject_below <= x K < (r + 1) 2**31
    counts = {
        -(-((r << 31) + plan.reject_below) // k) - -(-(r << 31) // k) for r in (0, 1, k // 2, k - 1)
    }
    kept_per_value = {
        -(-((r + 1) << 31) // k) - -(-((r << 31) + plan.reject_below) // k)
        for r in (0, 1, k // 2, k - 1)
    }
    assert len(kept_per_value) == 1
    assert kept_per_value.pop() * k == total - total % k
    assert counts <= {0, 1}


HIGH_POWER_SAMPLES = 2_000_000


def binned_fit_pvalue(drawn: npt.NDArray[np.int64], sigma: float) -> float:
    """Chi-square p-value in bins a quarter of sigma wide out to 5 sigma, plus the two tails,
    with each bin's probability summed from the exact pmf."""
    offset, probs = gaussian_pmf(sigma)
    width = max(1, round(sigma / 4))
    inner = np.arange(-20 * width, 20 * width + 1, width)  # bin edges, integers
    edges = np.concatenate([[-offset], inner, [offset + 1]])
    cumulative = np.concatenate([[0.0], np.cumsum(probs)])
    expected = np.diff(cumulative[edges + offset]) * drawn.shape[0]
    observed = np.histogram(np.clip(drawn, -offset, offset), bins=edges)[0]
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    return float(stats.chi2.sf(statistic, df=len(expected) - 1))


@pytest.mark.parametrize(
    "factor",
    [Fraction(1), Fraction(201, 200), Fraction(199, 200)],
    ids=["exact", "0.5%-wider", "0.5%-narrower"],
)
@pytest.mark.parametrize("sigma", [16.0, 23.9, 100.5], ids=str)
def test_staircase_gaussian_detects_half_a_percent(sigma: float, factor: Fraction) -> None:
    """Two million draws (a fraction of a second) in 42 bins against the exact pmf at
    false-alarm rate 1e-4: a sigma off by 0.5% either way is rejected (noncentrality about
    2 N 0.005**2 = 100 on 41 degrees of freedom), ten times finer than the 5% above."""
    rng = InsecureSeededRandom(seed_for("staircase-power", sigma, factor))
    drawn = discrete_gaussian(rng, HIGH_POWER_SAMPLES, sigma=float(sigma * factor))
    p_value = binned_fit_pvalue(drawn, sigma)
    if factor == 1:
        assert p_value > ALPHA, f"a correct sampler failed the fit (p = {p_value:.3g})"
    else:
        assert p_value < ALPHA, f"a sigma off by {factor} was not noticed (p = {p_value:.3g})"


def test_staircase_outputs_are_uncorrelated() -> None:
    """Consecutive outputs (within and across batches) are independent: lag-1 and lag-2
    correlations of values, signs and magnitudes within 5 standard errors of 0."""
    drawn = discrete_gaussian(InsecureSeededRandom(77), HIGH_POWER_SAMPLES, sigma=16.0)
    x = drawn.astype(np.float64)
    bound = MOMENT_SIGMAS / math.sqrt(x.size)
    for series in (x, np.sign(x), np.abs(x)):
        centred = series - series.mean()
        for lag in (1, 2):
            corr = float(np.dot(centred[:-lag], centred[lag:]) / np.dot(centred, centred))
            assert abs(corr) < bound


@pytest.mark.usefixtures("sampler_path")
def test_staircase_far_candidates_are_tested_against_their_own_gamma() -> None:
    """σ = 16, |Y| = 130: γ = 114²/512 ≈ 25.4 is past the table (j = J), so a first draw of 0
    is settled against exp(-γ) itself, not exp(-J/64): a next word of 2**63 puts U' at 2**-33,
    below exp(-J/64) ≈ 2**-32.02 but above exp(-γ) ≈ 2**-36.6, and must drop."""
    plan = staircase_plan(16.0)
    table = [int(x) for x in _exact._exp_thresholds()]
    gamma = plan.gamma(130, 0)
    assert gamma > Fraction(len(table) - 1, 64)
    script = staircase_script(table[4 * 130] - 1, 0, 0, 2**32 - 1)
    assert _staircase._staircase_candidates(ScriptedRandom([*script, 0]), 1, plan).tolist() == [130]
    for word in (2**63, 2**64 - 1):
        drawn = _staircase._staircase_candidates(ScriptedRandom([*script, word]), 1, plan)
        assert drawn.size == 0
    nonzero = staircase_script(table[4 * 130] - 1, 0, 1, 2**32 - 1)
    assert _staircase._staircase_candidates(ScriptedRandom(nonzero), 1, plan).size == 0


@pytest.mark.usefixtures("sampler_path")
def test_staircase_v_beyond_the_table_is_read_from_more_bits() -> None:
    """A V draw of 0 (U < 2**-32) is past the last threshold: V is settled from the next words,
    here U = 0.95 2**-32, so exp(-356/16) < U < exp(-355/16) and V = 355; the candidate
    (γ = 339²/512 ≈ 224) is then kept only if its first uniform is below exp(-224)."""
    plan = staircase_plan(16.0)
    v_word = int(0.95 * 2**64)
    script = [*staircase_script(0, 0, 0, 2**32 - 1), v_word]
    rng = ScriptedRandom([*script, 0, 0, 0, 0, 0])  # U' = 0 to 352 bits: below exp(-224)
    assert _staircase._staircase_candidates(rng, 1, plan).tolist() == [355]
    assert rng.remaining == 0
    dropped = ScriptedRandom([*script, 0, 1])  # U' = 2**-160: above exp(-224)
    assert _staircase._staircase_candidates(dropped, 1, plan).size == 0


# --------------------------------------------------------------------------------------------
# The compiled candidate pass (_staircase.c) against the numpy one
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sigma", [16.0, 23.9, 40.1, 1000.5, Fraction(100_001, 3), 524_739.142, 2.0**25.9], ids=str
)
def test_compiled_pass_gives_the_numpy_values_from_the_same_draws(sigma: float) -> None:
    """Both paths read the same words in the same order and decide every candidate alike, so a
    seeded stream gives the same array, value for value, over several batches."""
    compiled_or_skip()
    for seed in range(3):
        size = 70_000 + 997 * seed
        compiled = discrete_gaussian(InsecureSeededRandom(seed), size, sigma=sigma)
        with _kernel.disabled():
            numpy = discrete_gaussian(InsecureSeededRandom(seed), size, sigma=sigma)
        assert np.array_equal(compiled, numpy)


def exact_v(w: int, v_thresholds: npt.NDArray[np.uint32]) -> int:
    """V of a 32-bit draw that ties no threshold: the number of v >= 1 with w < T[4v]."""
    return int(np.count_nonzero(v_thresholds[1:].astype(np.int64) > w))


def test_v_start_table_is_the_smallest_v_of_each_bucket() -> None:
    """For every bucket of draws, the table holds V of the bucket's largest draw, and no draw of
    the bucket has a smaller V (V decreases with the draw); buckets of one V or two."""
    _, v_thresholds, v_start = _staircase._staircase_tables()
    steps = 0
    for zeros in range(24):
        for bits in range(256):
            low = (256 + bits) << (23 - zeros)
            high = ((257 + bits) << (23 - zeros)) - 1
            start = int(v_start[zeros * 256 + bits])
            assert start == exact_v(high, v_thresholds)
            steps = max(steps, exact_v(low, v_thresholds) - start)
    for w in range(1, 256):
        zeros = 32 - w.bit_length()
        assert int(v_start[zeros * 256 + (((w << zeros) >> 23) & 0xFF)]) == exact_v(w, v_thresholds)
    assert steps == 1


def scripted_batch(
    plan: _staircase._StaircasePlan, draws: list[int], later: list[int] | None = None
) -> _kernel.StaircasePass | None:
    table32, v_thresholds, v_start = _staircase._staircase_tables()
    return _kernel.staircase_pass(
        np.array(draws, dtype=np.uint32),
        len(draws) // 4,
        k=plan.k,
        reject_below=plan.reject_below,
        tau=plan.tau,
        half_inverse_variance=plan.half_inverse_variance,
        inverse_t=plan.inverse_t,
        j_scale=64.0 * (1.0 - _staircase._GAMMA_SLACK),
        j_offset=64.0 * _staircase._GAMMA_SLACK,
        table=table32,
        v_thresholds=v_thresholds,
        v_start=v_start,
        later=None if later is None else np.array(later, dtype=np.uint64),
    )


def test_compiled_pass_leaves_every_exact_case_to_numpy() -> None:
    """A batch of two candidates, the first ordinary, is passed back (None) when the second has
    a V draw on a threshold, a first draw on T[j], a residual draw within the float margin, or
    a V draw of 0 (past the table); otherwise the kernel decides it."""
    compiled_or_skip()
    plan = staircase_plan(16.0)
    table = [int(x) for x in _exact._exp_thresholds()]
    ordinary = (table[4 * 3] - 7, 0, 0, 2**32 - 1)  # V = 3, kept
    gamma = plan.gamma(41, 0)
    j = math.floor(64 * gamma)
    v41 = table[4 * 41] - 5

    def batch(second: tuple[int, int, int, int]) -> list[int]:
        return [x for pair in zip(ordinary, second, strict=True) for x in pair]

    decided = scripted_batch(plan, batch((v41, 0, 0, 2**32 - 1)))
    assert decided is not None and decided.values.tolist() == [3, 41]
    for second in [
        (table[4 * 41], 0, 0, 2**32 - 1),  # V's draw ties T[4 * 41]
        (v41, 0, table[j], 2**32 - 1),  # the first factor's draw ties T[j]
        (v41, 0, 0, 2**23 + 1),  # δ 2**32 = 2**23 exactly: inside the margin
        (0, 0, 0, 2**32 - 1),  # U < 2**-32: V past the table
    ]:
        assert scripted_batch(plan, batch(second)) is None


def test_compiled_pass_hands_on_the_candidates_that_continue() -> None:
    """σ = 16, |Y| = 41, δ = 1/512: a residual draw well below δ 2**32 passes round 1, so the
    candidate is pending with its exact j, R and δ; a rejected candidate is not pending."""
    compiled_or_skip()
    plan = staircase_plan(16.0)
    table = [int(x) for x in _exact._exp_thresholds()]
    v41 = table[4 * 41] - 5
    passed = scripted_batch(plan, [v41, v41, 0, 0, 0, 2**32 - 1, 2**22, 2**22])
    assert passed is not None
    assert passed.values.tolist() == [41]  # the second candidate's first factor failed
    assert passed.index.tolist() == [0]
    assert passed.j.tolist() == [78] and passed.r.tolist() == [0]
    assert passed.delta.tolist() == [1 / 512]


def test_compiled_pass_runs_the_later_rounds_from_the_words_after_the_batch() -> None:
    """The candidate of the test above (δ = 1/512) goes on to round K = 2, where it goes on when
    its draw is below δ 2**32 / 2 = 2**22, then to K = 3 (below 2**23 / 3), and is kept when
    K ends odd: one word a round (one candidate), read from ``later``. A draw within the float
    margin, words that run out, or no ``later`` leave the rounds to the caller (-1), with the
    candidate pending as before."""
    compiled_or_skip()
    plan = staircase_plan(16.0)
    table = [int(x) for x in _exact._exp_thresholds()]
    v41 = table[4 * 41] - 5
    draws = [v41, v41, 0, 0, 0, 2**32 - 1, 2**22, 2**22]

    def run(later: list[int] | None) -> tuple[list[int], int]:
        passed = scripted_batch(plan, draws, later)
        assert passed is not None
        return passed.values.tolist(), passed.later_used

    never = half_word(2**32 - 1)
    assert run([never, 0]) == ([], 1)  # stops at K = 2: rejected
    assert run([half_word(2**22 - 3), never, 0]) == ([41], 2)  # stops at K = 3: kept
    assert run([0, half_word(2**23 // 3 - 3), never]) == ([], 3)  # stops at K = 4
    assert run([half_word(2**22 + 2)]) == ([41], -1)  # within the margin of 2**22
    assert run([0]) == ([41], -1)  # K = 3 finds no word left
    assert run(None) == ([41], -1)
    # Round by round as _staircase._residual_exp draws them from the same words.
    for later in ([never], [half_word(2**22 - 3), never], [0, half_word(2**23 // 3 - 3), never]):
        kept = _staircase._residual_exp(
            ScriptedRandom(later), np.array([1 / 512]), lambda i: (1, 512), start=2
        )
        assert bool(kept[0]) == (run(later)[0] == [41])


def test_discrete_gaussian_settles_the_later_rounds_compiled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Drawn through the word pool, the later rounds of exp(-δ) run in the compiled pass (no
    batch goes back to Python for them here) and give numpy's values."""
    compiled_or_skip()
    finished = []
    real = _staircase._finish_compiled

    def counting(*args: object) -> npt.NDArray[np.int64]:
        finished.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(_staircase, "_finish_compiled", counting)
    drawn = discrete_gaussian(InsecureSeededRandom(11), 200_000, sigma=524_739.142)
    assert not finished
    with _kernel.disabled():
        reference = discrete_gaussian(InsecureSeededRandom(11), 200_000, sigma=524_739.142)
    assert np.array_equal(drawn, reference)


def test_a_broken_compiled_pass_fails_the_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fit that checks the sampler (two million draws at false-alarm rate 1e-4) rejects a
    compiled pass given a τ 20% off, which keeps candidates by the wrong acceptance."""
    compiled_or_skip()
    real = _kernel.staircase_pass

    def broken(*args: object, tau: float, **kwargs: object) -> _kernel.StaircasePass | None:
        return real(*args, tau=tau * 1.2, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_kernel, "staircase_pass", broken)
    drawn = discrete_gaussian(InsecureSeededRandom(5), HIGH_POWER_SAMPLES, sigma=100.5)
    assert binned_fit_pvalue(drawn, 100.5) < ALPHA


@pytest.mark.parametrize("sigma", [3.0, 524_739.142], ids=str)
def test_discrete_gaussian_writes_into_out(sigma: float) -> None:
    """``out`` receives the values a new array would hold, and a bad ``out`` is refused."""
    out = np.full(5000, -1, dtype=np.int64)
    returned = discrete_gaussian(InsecureSeededRandom(8), 5000, sigma=sigma, out=out)
    assert returned is out
    assert np.array_equal(out, discrete_gaussian(InsecureSeededRandom(8), 5000, sigma=sigma))
    strided = np.zeros((5000, 2), dtype=np.int64)[:, 0]
    for bad in (np.zeros(4999, dtype=np.int64), np.zeros(5000), strided):
        with pytest.raises(ConfigurationError, match="out must be"):
            discrete_gaussian(InsecureSeededRandom(8), 5000, sigma=sigma, out=bad)


def test_a_compiled_pass_that_disagrees_with_numpy_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before its first use the compiled pass is run against numpy on a fixed seeded run; one
    whose arithmetic differs (here: τ off by 0.1%) is refused with a warning, and
    the samplers then give numpy's values."""
    compiled_or_skip()
    real = _kernel.staircase_pass

    def off(*args: object, tau: float, **kwargs: object) -> _kernel.StaircasePass | None:
        return real(*args, tau=tau * 1.001, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_kernel, "staircase_pass", off)
    _staircase._compiled_pass_agrees.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="disagrees with numpy"):
            drawn = discrete_gaussian(InsecureSeededRandom(3), 20_000, sigma=524_739.142)
        with _kernel.disabled():
            reference = discrete_gaussian(InsecureSeededRandom(3), 20_000, sigma=524_739.142)
        assert np.array_equal(drawn, reference)
    finally:
        _staircase._compiled_pass_agrees.cache_clear()
    monkeypatch.undo()
    assert _staircase._compiled_pass_agrees()  # the real pass agrees


def test_a_compiled_pass_with_wrong_later_rounds_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check before first use covers the later rounds of exp(-δ) too: a pass whose later
    rounds read each draw inverted (so most candidates go on) is refused."""
    compiled_or_skip()
    real = _kernel.staircase_pass

    def inverted(
        *args: object, later: npt.NDArray[np.uint64] | None = None, **kwargs: object
    ) -> _kernel.StaircasePass | None:
        flipped = None if later is None else np.ascontiguousarray(~later)
        return real(*args, later=flipped, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_kernel, "staircase_pass", inverted)
    _staircase._compiled_pass_agrees.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="disagrees with numpy"):
            assert not _staircase._compiled_pass_agrees()
    finally:
        _staircase._compiled_pass_agrees.cache_clear()
