"""DP auditing: the bounds hold for correct mechanisms and refute deliberately broken ones."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from veil.audit import (
    AuditMethod,
    OneRunTest,
    Roc,
    clopper_pearson,
    distinguishing_audit,
    dp_tpr_limit,
    epsilon_from_rates,
    gaussian_dp_mu,
    limit_violations,
    one_run_audit,
    one_run_epsilon,
    one_run_fdp_epsilon,
    one_run_p_value,
)
from veil.errors import ConfigurationError, DataError
from veil.privacy import (
    Domain,
    GaussianMechanism,
    InsecureSeededRandom,
    LaplaceMechanism,
    gaussian_noise_multiplier,
)

DELTA = 1e-5


def laplace_runs(sensitivity: float, seed: int) -> Callable[[float, int], npt.NDArray[np.float64]]:
    """veil's Laplace mechanism claimed at epsilon 1 for a query of the given sensitivity, run
    ``n`` times at once (``n`` coordinates of independent noise of the one-value scale)."""
    rng = InsecureSeededRandom(seed)

    def run(value: float, n: int) -> npt.NDArray[np.float64]:
        mech = LaplaceMechanism(sensitivity=sensitivity, epsilon=1.0, dimension=n, max_changed=1)
        assert mech.epsilon == 1.0
        return np.asarray(mech.release(np.full(n, value), rng=rng))

    return run


# ---------------------------------------------------------------------------------------------
# statistics


def test_clopper_pearson_known_values() -> None:
    # 0 successes in 10: the upper bound solves (1 - p)^10 = 0.025
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-9)
    lo, hi = clopper_pearson(10, 10)
    assert hi == 1.0
    assert lo == pytest.approx(0.025 ** (1 / 10), rel=1e-9)
    lo, hi = clopper_pearson(50, 100)
    assert lo < 0.5 < hi
    assert hi - lo == pytest.approx(0.2034, abs=2e-3)


def test_clopper_pearson_covers_at_least_its_level() -> None:
    rng = np.random.default_rng(5)
    p, n = 0.03, 200
    k = rng.binomial(n, p, size=4000)
    lo, hi = clopper_pearson(k, np.full_like(k, n), confidence=0.9)
    coverage = np.mean((lo <= p) & (p <= hi))
    assert coverage >= 0.9


def test_roc_auc_is_the_mann_whitney_statistic_with_ties() -> None:
    rng = np.random.default_rng(1)
    pos = rng.integers(0, 20, 300).astype(float) + 2
    neg = rng.integers(0, 20, 400).astype(float)
    roc = Roc.from_scores(pos, neg)
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    assert roc.auc == pytest.approx(greater + ties / 2, abs=1e-12)
    assert roc.fpr[0] == roc.tpr[0] == 0.0
    assert roc.fpr[-1] == roc.tpr[-1] == 1.0
    assert np.all(np.diff(roc.fpr) >= 0)
    assert np.all(np.diff(roc.tpr) >= 0)


def test_tpr_at_low_fpr_never_interpolates() -> None:
    pos = np.array([10.0, 9.0, 8.0, 1.0])
    neg = np.array([9.5, 0.0, -1.0, -2.0])
    point = Roc.from_scores(pos, neg).tpr_at(0.01)
    # the only threshold with no false positive above 9.5 catches one member
    assert point.fpr == 0.0
    assert point.tpr == 0.25
    assert point.tpr_lower < 0.25 < point.tpr_upper
    assert Roc.from_scores(pos, neg).tpr_at(0.25).tpr == 1.0  # one false positive (9.5)


def test_roc_refuses_non_finite_scores() -> None:
    with pytest.raises(DataError, match="finite"):
        Roc.from_scores([1.0, math.inf], [0.0])


def test_epsilon_from_rates() -> None:
    fpr, fnr = 0.1, 0.1 * math.e
    assert float(epsilon_from_rates(fpr, fnr, delta=0.0)) == pytest.approx(
        max(math.log((1 - fpr) / fnr), math.log((1 - fnr) / fpr))
    )
    assert float(epsilon_from_rates(fpr, fnr, delta=0.05)) == pytest.approx(
        math.log((1 - 0.05 - fnr) / fpr)
    )
    assert float(epsilon_from_rates(0.5, 0.5, delta=0.0)) == 0.0


# ---------------------------------------------------------------------------------------------
# Jagielski et al.'s distinguishing audit


def test_laplace_at_claimed_epsilon_one_is_audited_tightly() -> None:
    audit = distinguishing_audit(
        laplace_runs(1.0, seed=11), (0.0, 1.0), trials=100_000, claimed_epsilon=1.0
    )
    assert audit.method is AuditMethod.DISTINGUISHING
    assert 0.9 <= audit.epsilon_lower <= 1.0
    assert not audit.exceeds_claim
    assert audit.details["evaluation_runs"] == 50_000


def test_laplace_with_the_sensitivity_halved_is_caught() -> None:
    # The bug: noise calibrated for sensitivity 1/2 on a query whose sensitivity is 1.
    audit = distinguishing_audit(
        laplace_runs(0.5, seed=11), (0.0, 1.0), trials=100_000, claimed_epsilon=1.0
    )
    assert audit.epsilon_lower > 1.0
    assert audit.exceeds_claim
    assert "REFUTES" in audit.describe()


def test_the_audit_finds_the_downward_direction_too() -> None:
    # the neighbour moves the output down: the test "output <= t" must be found
    audit = distinguishing_audit(
        laplace_runs(0.5, seed=3), (1.0, 0.0), trials=20_000, claimed_epsilon=1.0
    )
    assert audit.details["upward"] == 0.0
    assert audit.exceeds_claim


def test_a_laplace_attack_stays_under_the_pure_dp_curve_unless_the_noise_is_wrong() -> None:
    def roc(sensitivity: float) -> Roc:
        run = laplace_runs(sensitivity, seed=21)
        return Roc.from_scores(run(1.0, 100_000), run(0.0, 100_000))

    def limit(fpr: float) -> float:
        return float(dp_tpr_limit(fpr, epsilon=1.0, delta=0.0))

    fprs = (0.001, 0.01, 0.1, 0.3)
    assert limit_violations(roc(1.0), limit, fprs=fprs) == []
    assert limit_violations(roc(0.5), limit, fprs=fprs) != []
    assert dp_tpr_limit([0.0, 0.5, 1.0], epsilon=1.0, delta=0.0) == pytest.approx(
        [0.0, 1 - math.exp(-1) * 0.5, 1.0]
    )


def test_identical_inputs_give_no_evidence() -> None:
    audit = distinguishing_audit(
        laplace_runs(1.0, seed=4), (0.0, 0.0), trials=20_000, claimed_epsilon=1.0
    )
    assert audit.epsilon_lower < 0.1


def test_distinguishing_audit_checks_its_inputs() -> None:
    with pytest.raises(ConfigurationError, match="trials"):
        distinguishing_audit(laplace_runs(1.0, 0), (0.0, 1.0), trials=2)
    with pytest.raises(DataError, match="outputs"):
        distinguishing_audit(lambda d, n: np.zeros(n + 1), (0.0, 1.0), trials=100)
    with pytest.raises(ConfigurationError, match="delta"):
        distinguishing_audit(laplace_runs(1.0, 0), (0.0, 1.0), trials=100, delta=1.5)


# ---------------------------------------------------------------------------------------------
# Steinke et al.'s one-run audit


@pytest.mark.parametrize(
    ("m", "r", "v", "expected"),
    [
        (1000, 100, 80, 0.9553),
        (1000, 50, 50, 2.7562),
        (10000, 500, 400, 1.1917),
        (1000, 200, 120, 0.1579),
    ],
)
def test_one_run_epsilon_golden_values(m: int, r: int, v: int, expected: float) -> None:
    # values from the study of the method (notes/audit.md §4.3), delta 1e-5, significance 0.05
    eps = one_run_epsilon(canaries=m, guesses=r, correct=v, delta=DELTA)
    assert eps == pytest.approx(expected, abs=5e-5)


def test_one_run_p_value_is_monotone_and_pure_dp_is_binomial() -> None:
    ps = [
        one_run_p_value(epsilon=e, delta=DELTA, canaries=1000, guesses=100, correct=80)
        for e in (0.5, 1.0, 1.5, 2.0)
    ]
    assert ps == sorted(ps)
    # with delta = 0 the test is the binomial tail P[Bin(r, q) >= v]
    p = one_run_p_value(epsilon=0.0, delta=0.0, canaries=10, guesses=10, correct=10)
    assert p == pytest.approx(0.5**10)


@functools.cache
def gaussian_claim(epsilon: float) -> tuple[float, float]:
    """The sigma of the (epsilon, 1e-5) Gaussian mechanism of sensitivity 1 (analytic
    calibration) and the epsilon veil's discrete Gaussian claims for it (its exact PLD)."""
    sigma = gaussian_noise_multiplier(epsilon=epsilon, delta=DELTA)
    mech = GaussianMechanism(sensitivity=1, sigma=sigma, domain=Domain.INTEGERS)
    return sigma, mech.epsilon(DELTA)


def gaussian_one_run(
    m: int, seed: int, *, sigma: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """m canaries, each in with probability 1/2, each changing its own coordinate by 1, released
    through veil's Gaussian mechanism with noise ``sigma``."""
    included = np.random.default_rng(seed).random(m) < 0.5
    mech = GaussianMechanism(
        sensitivity=1, sigma=sigma, domain=Domain.INTEGERS, dimension=m, max_changed=1
    )
    noisy = np.asarray(mech.release(included.astype(np.int64), rng=InsecureSeededRandom(seed)))
    return noisy.astype(np.float64), included


@pytest.fixture(scope="module")
def gaussian_audits() -> dict[tuple[float, OneRunTest], list[tuple[float, float]]]:
    """``(bound, claim)`` of both one-run tests on 10,000 canaries, seeds 0 to 4, at claimed
    epsilon 1 and 2 (the same scores for both tests)."""
    out: dict[tuple[float, OneRunTest], list[tuple[float, float]]] = {}
    for epsilon in (1.0, 2.0):
        sigma, claim = gaussian_claim(epsilon)
        assert claim == pytest.approx(epsilon, rel=0.01)
        for seed in range(5):
            scores, included = gaussian_one_run(10_000, seed, sigma=sigma)
            for test in OneRunTest:
                audit = one_run_audit(
                    scores, included, claimed_epsilon=claim, delta=DELTA, test=test
                )
                out.setdefault((epsilon, test), []).append((audit.epsilon_lower, claim))
    return out


# A one-run bound is a random variable: over seeds 0-19 of veil's sampler (as of its staircase
# update) the (epsilon, delta) test gave 25-53% of the claim at epsilon 1 (30% or more on 18 of
# 20 seeds, 37% on average) and the f-DP test 40-69% (45% or more on 18 of 20, 58% on average).
# Seed 4 is one of the two low ones at epsilon 1. So the 30% and 45% are held on the mean
# of the five seeds, with every seed above a floor and never above the claim.


@pytest.mark.parametrize("epsilon", [1.0, 2.0])
def test_one_run_gaussian_never_above_the_claim_and_thirty_percent_on_average(
    gaussian_audits: dict[tuple[float, OneRunTest], list[tuple[float, float]]], epsilon: float
) -> None:
    plain = gaussian_audits[(epsilon, OneRunTest.APPROXIMATE_DP)]
    for bound, claim in plain:
        assert 0.2 * claim <= bound <= claim
    assert np.mean([bound / claim for bound, claim in plain]) >= 0.3


@pytest.mark.parametrize("epsilon", [1.0, 2.0])
def test_one_run_fdp_never_above_the_claim_and_forty_five_percent_on_average(
    gaussian_audits: dict[tuple[float, OneRunTest], list[tuple[float, float]]], epsilon: float
) -> None:
    fdp = gaussian_audits[(epsilon, OneRunTest.GAUSSIAN_FDP)]
    for bound, claim in fdp:
        assert 0.35 * claim <= bound <= claim
    assert np.mean([bound / claim for bound, claim in fdp]) >= 0.45
    # the Gaussian curve is a stronger hypothesis than the (epsilon, delta) box around it
    plain = gaussian_audits[(epsilon, OneRunTest.APPROXIMATE_DP)]
    assert np.mean([b for b, _ in fdp]) > np.mean([b for b, _ in plain])


def test_gaussian_dp_mu_matches_the_analytic_gaussian() -> None:
    for epsilon in (0.5, 1.0, 4.0):
        sigma = gaussian_noise_multiplier(epsilon=epsilon, delta=DELTA)
        assert gaussian_dp_mu(epsilon=epsilon, delta=DELTA) == pytest.approx(1 / sigma, rel=1e-6)


def test_one_run_catches_noise_four_times_too_small() -> None:
    # The bug: the claim of sigma, the noise of sigma / 4.
    sigma, claim = gaussian_claim(1.0)
    scores, included = gaussian_one_run(1000, 5, sigma=sigma / 4)
    for test in OneRunTest:
        audit = one_run_audit(scores, included, claimed_epsilon=claim, delta=DELTA, test=test)
        assert audit.epsilon_lower > claim, test
        assert audit.exceeds_claim


def test_one_run_without_signal_finds_nothing() -> None:
    rng = np.random.default_rng(2)
    audit = one_run_audit(
        rng.normal(size=5000), rng.random(5000) < 0.5, claimed_epsilon=1.0, delta=DELTA
    )
    assert audit.epsilon_lower < 0.2


def test_one_run_checks_its_inputs() -> None:
    with pytest.raises(DataError, match="one score per canary"):
        one_run_audit([1.0, 2.0], [True], delta=DELTA)
    with pytest.raises(ConfigurationError, match="guess counts"):
        one_run_audit([1.0, 2.0], [True, False], delta=DELTA, guess_counts=[3])
    with pytest.raises(ConfigurationError, match="correct <= guesses"):
        one_run_epsilon(canaries=10, guesses=5, correct=6, delta=DELTA)
    with pytest.raises(ConfigurationError, match="delta in"):
        one_run_fdp_epsilon(canaries=10, guesses=5, correct=5, delta=0.0)
