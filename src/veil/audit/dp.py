"""DP auditing: empirical lower bounds on epsilon, to set next to the claimed epsilon.

A DP claim is a statement about *every* pair of neighbouring inputs, so one pair on which an
attacker tells the two apart too well refutes it. Each audit here turns an attack's successes into
a lower bound on epsilon that holds with a stated confidence: if the mechanism really were
``(epsilon, delta)``-DP, a bound above ``epsilon`` would appear with probability at most
``1 - confidence`` (or ``significance``). A bound above the claim is evidence of a bug; a bound
well below it says only that this attack did not find more.

**Distinguishing audit** (Jagielski, Ullman and Oprea 2020), :func:`distinguishing_audit`. Run the
mechanism ``trials`` times on each of two neighbouring inputs ``D0`` and ``D1`` and apply a
threshold test "output >= t means D1" (or <=). For an ``(ε, δ)``-DP mechanism every test obeys
``FPR + e^ε FNR >= 1 - δ`` and ``FNR + e^ε FPR >= 1 - δ``, hence

    ε >= max( ln((1 - δ - FPR) / FNR), ln((1 - δ - FNR) / FPR) ).

Plugging in one-sided Clopper-Pearson upper bounds on FPR and FNR (each at level
``(1 - confidence) / 2``) gives a bound valid with probability ``confidence`` -- provided the
threshold was not chosen on the same runs. Here the first half of the runs on each input chooses
the threshold and direction (the one whose bound is largest on that half), and only the second
half, never seen by the choice, is used for the reported bound.

**One-run audit** (Steinke, Nasr and Jagielski 2023), :func:`one_run_audit`. ``m`` canaries are
each included independently with probability 1/2 in a single run; the attacker scores each canary
and guesses "in" for the ``k+`` highest scores and "out" for the ``k-`` lowest. Under
``(ε, δ)``-DP the number ``W`` of correct guesses among ``r = k+ + k-`` satisfies (their Theorem
3.1 with the δ term of their Proposition 5.7)

    P[W >= v] <= P[Binomial(r, q) >= v] + 2 m δ · max_{1<=i<=v} P[v-i <= Binomial(r, q) < v] / i,

with ``q = e^ε / (1 + e^ε)``. The empirical epsilon is the largest ε this test rejects at
``significance`` (:func:`one_run_epsilon`, by bisection). The guess counts are taken from a fixed
grid with a Bonferroni correction (``significance / len(grid)`` for each), so looking at the
scores to pick the best count keeps the bound valid. One run cannot reach the claim: the bound is
capped by the number of guesses (about 4.5 when 500 guesses are all right), and for the Gaussian
mechanism at epsilon 1 it reached 25-53% of the claim with 10,000 canaries over 20 seeds (37% on
average). The f-DP refinement (:attr:`OneRunTest.GAUSSIAN_FDP`, one guess count fixed in
advance) reached 40-69% (58% on average).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from scipy import optimize, special, stats

from veil.errors import ConfigurationError, DataError

__all__ = [
    "AuditMethod",
    "EpsilonAudit",
    "OneRunTest",
    "distinguishing_audit",
    "epsilon_from_rates",
    "gaussian_dp_mu",
    "one_run_audit",
    "one_run_epsilon",
    "one_run_fdp_epsilon",
    "one_run_p_value",
]

T = TypeVar("T")
FloatArray = npt.NDArray[np.float64]

# At most this many candidate thresholds are tried on the selection half.
_MAX_THRESHOLDS = 2000


class AuditMethod(enum.Enum):
    """How an empirical epsilon was obtained."""

    DISTINGUISHING = "distinguishing"
    ONE_RUN = "one-run"
    ONE_RUN_FDP = "one-run f-DP"


class OneRunTest(enum.Enum):
    """The hypothesis a one-run audit tests.

    * ``APPROXIMATE_DP``: the run is ``(ε, δ)``-DP (Steinke et al. 2023); valid for any mechanism.
    * ``GAUSSIAN_FDP``: the run has the trade-off curve of the Gaussian mechanism that is exactly
      ``(ε, δ)``-DP, i.e. is μ-GDP with that μ (Mahloujifar, Melis and Chaudhuri 2024). A
      stronger hypothesis, so the same guesses refute more of it; it is the right one for the
      Gaussian mechanism, whose claim comes from that curve, and not for others (Laplace, or
      DP-SGD with subsampling, whose trade-off curves are not Gaussian: the test could refute
      a correct claim).
    """

    APPROXIMATE_DP = "approximate-dp"
    GAUSSIAN_FDP = "gaussian-fdp"


@dataclasses.dataclass(frozen=True)
class EpsilonAudit:
    """An empirical lower bound on epsilon next to the claim.

    ``epsilon_lower`` holds with probability at least ``confidence`` if the mechanism is
    ``(claimed_epsilon, delta)``-DP; ``exceeds_claim`` is the verdict a build may fail on.
    ``details`` holds the method's own figures (counts, threshold, guesses).
    """

    method: AuditMethod
    claimed_epsilon: float | None
    delta: float
    epsilon_lower: float
    confidence: float
    details: Mapping[str, float]

    @property
    def exceeds_claim(self) -> bool:
        """True when the lower bound is above the claimed epsilon: the claim is refuted."""
        return self.claimed_epsilon is not None and self.epsilon_lower > self.claimed_epsilon

    @property
    def fraction_of_claim(self) -> float | None:
        """``epsilon_lower / claimed_epsilon`` (None without a claim)."""
        if not self.claimed_epsilon:
            return None
        return self.epsilon_lower / self.claimed_epsilon

    def describe(self) -> str:
        """One line, e.g. ``distinguishing audit: ε ≥ 0.962 (95%), claimed 1 (96%)``."""
        text = (
            f"{self.method.value} audit: ε ≥ {self.epsilon_lower:.4g} "
            f"({self.confidence:.0%} confidence, δ = {self.delta:g})"
        )
        if self.claimed_epsilon is not None:
            verdict = "REFUTES the claim" if self.exceeds_claim else "consistent with the claim"
            text += (
                f"; claimed ε = {self.claimed_epsilon:g} "
                f"({self.fraction_of_claim:.0%} of it): {verdict}"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method.value,
            "claimed_epsilon": self.claimed_epsilon,
            "delta": self.delta,
            "epsilon_lower": self.epsilon_lower,
            "confidence": self.confidence,
            "exceeds_claim": self.exceeds_claim,
            "details": dict(self.details),
        }


def _check_delta(delta: float) -> float:
    if not isinstance(delta, int | float) or not 0 <= delta < 1:
        raise ConfigurationError(f"delta must be in [0, 1), got {delta!r}")
    return float(delta)


def _check_claim(claimed: float | None) -> float | None:
    if claimed is None:
        return None
    if not isinstance(claimed, int | float) or not claimed >= 0 or math.isnan(claimed):
        raise ConfigurationError(f"claimed_epsilon must be a number >= 0, got {claimed!r}")
    return float(claimed)


def _check_level(name: str, value: float) -> float:
    if not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigurationError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def _upper_rate(errors: FloatArray, n: int, level: float) -> FloatArray:
    """One-sided Clopper-Pearson upper bounds at ``1 - level`` for ``errors`` out of ``n``."""
    with np.errstate(invalid="ignore"):
        upper = stats.beta.ppf(1.0 - level, errors + 1.0, n - errors)
    return np.where(errors >= n, 1.0, np.asarray(upper, dtype=np.float64))


def epsilon_from_rates(fpr: npt.ArrayLike, fnr: npt.ArrayLike, *, delta: float) -> FloatArray:
    """``max(ln((1 - δ - FPR) / FNR), ln((1 - δ - FNR) / FPR), 0)`` element-wise: the least
    epsilon any ``(ε, δ)``-DP mechanism must have for a test with these error rates."""
    a = np.asarray(fpr, dtype=np.float64)
    b = np.asarray(fnr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        one = np.where(1.0 - delta - a > 0, np.log(np.maximum(1.0 - delta - a, 1e-300) / b), 0.0)
        two = np.where(1.0 - delta - b > 0, np.log(np.maximum(1.0 - delta - b, 1e-300) / a), 0.0)
    return np.asarray(np.maximum(np.maximum(one, two), 0.0), dtype=np.float64)


def _bounds_for_thresholds(
    out0: FloatArray,
    out1: FloatArray,
    thresholds: FloatArray,
    *,
    delta: float,
    level: float,
) -> tuple[FloatArray, FloatArray]:
    """The epsilon bound of each threshold, for "output >= t means D1" and for "<= t"."""
    s0 = np.sort(out0)
    s1 = np.sort(out1)
    n0, n1 = s0.size, s1.size
    # "output >= t means D1": false positives are D0 runs at or above t, false negatives D1 runs
    # below t.
    fp_ge = (n0 - np.searchsorted(s0, thresholds, side="left")).astype(np.float64)
    fn_ge = np.searchsorted(s1, thresholds, side="left").astype(np.float64)
    # "output <= t means D1"
    fp_le = np.searchsorted(s0, thresholds, side="right").astype(np.float64)
    fn_le = (n1 - np.searchsorted(s1, thresholds, side="right")).astype(np.float64)
    eps_ge = epsilon_from_rates(
        _upper_rate(fp_ge, n0, level), _upper_rate(fn_ge, n1, level), delta=delta
    )
    eps_le = epsilon_from_rates(
        _upper_rate(fp_le, n0, level), _upper_rate(fn_le, n1, level), delta=delta
    )
    return eps_ge, eps_le


def _outputs(mechanism: Callable[[T, int], npt.ArrayLike], data: T, n: int) -> FloatArray:
    out = np.asarray(mechanism(data, n), dtype=np.float64).reshape(-1)
    if out.size != n:
        raise DataError(f"the mechanism returned {out.size} outputs where {n} were asked for")
    if not np.all(np.isfinite(out)):
        raise DataError("the mechanism returned a non-finite output")
    return out


def distinguishing_audit(
    mechanism: Callable[[T, int], npt.ArrayLike],
    neighbours: tuple[T, T],
    *,
    trials: int,
    claimed_epsilon: float | None = None,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> EpsilonAudit:
    """Jagielski et al.'s audit of ``mechanism`` on the two neighbouring inputs (module docstring).

    ``mechanism(data, n)`` runs the mechanism ``n`` times, independently, on ``data`` and returns
    the ``n`` scalar outputs (or a statistic of each output; for a vector-valued mechanism, reduce
    it to the coordinate or the projection that the neighbours change). ``trials`` runs are made
    on each input: half choose the threshold, half bound epsilon.
    """
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 4:
        raise ConfigurationError(f"trials must be an integer >= 4, got {trials!r}")
    d = _check_delta(delta)
    claim = _check_claim(claimed_epsilon)
    conf = _check_level("confidence", confidence)
    d0, d1 = neighbours
    out0 = _outputs(mechanism, d0, trials)
    out1 = _outputs(mechanism, d1, trials)
    half = trials // 2
    level = (1.0 - conf) / 2.0
    # choose on the first half
    pooled = np.unique(np.concatenate([out0[:half], out1[:half]]))
    if pooled.size > _MAX_THRESHOLDS:
        pooled = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, _MAX_THRESHOLDS)))
    eps_ge, eps_le = _bounds_for_thresholds(out0[:half], out1[:half], pooled, delta=d, level=level)
    upward = bool(eps_ge.max() >= eps_le.max())
    best = int(np.argmax(eps_ge if upward else eps_le))
    threshold = float(pooled[best])
    # bound on the second half
    e0, e1 = out0[half:], out1[half:]
    n0, n1 = e0.size, e1.size
    if upward:
        fp, fn = float(np.sum(e0 >= threshold)), float(np.sum(e1 < threshold))
    else:
        fp, fn = float(np.sum(e0 <= threshold)), float(np.sum(e1 > threshold))
    fpr_hi = float(_upper_rate(np.array([fp]), n0, level)[0])
    fnr_hi = float(_upper_rate(np.array([fn]), n1, level)[0])
    bound = float(epsilon_from_rates(fpr_hi, fnr_hi, delta=d))
    estimate = float(epsilon_from_rates(fp / n0, fn / n1, delta=d))
    return EpsilonAudit(
        method=AuditMethod.DISTINGUISHING,
        claimed_epsilon=claim,
        delta=d,
        epsilon_lower=bound,
        confidence=conf,
        details={
            "trials": float(trials),
            "threshold": threshold,
            "upward": float(upward),
            "false_positives": fp,
            "false_negatives": fn,
            "evaluation_runs": float(n0),
            "fpr": fp / n0,
            "fnr": fn / n1,
            "epsilon_estimate": estimate,
        },
    )


# ---------------------------------------------------------------------------------------------
# One-run audit


def _check_counts(canaries: int, guesses: int, correct: int) -> None:
    for name, value in (("canaries", canaries), ("guesses", guesses), ("correct", correct)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
            raise ConfigurationError(f"{name} must be an integer >= 0, got {value!r}")
    if not correct <= guesses <= canaries:
        raise ConfigurationError(
            f"need correct <= guesses <= canaries, got {correct}, {guesses}, {canaries}"
        )


def one_run_p_value(
    *, epsilon: float, delta: float, canaries: int, guesses: int, correct: int
) -> float:
    """The p-value of ``correct`` right guesses out of ``guesses`` (among ``canaries``) under the
    hypothesis that the run is ``(epsilon, delta)``-DP (module docstring)."""
    _check_counts(canaries, guesses, correct)
    if correct == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(correct - 1, guesses, q))
    if delta == 0:
        return min(1.0, beta)
    # P[v - i <= Bin < v] for i = 1..v is the running sum of the pmf at v-1, v-2, ..., 0
    below = stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, q)
    alpha = float(np.max(np.cumsum(below) / np.arange(1, correct + 1)))
    return min(1.0, beta + alpha * 2.0 * canaries * delta)


def one_run_epsilon(
    *,
    canaries: int,
    guesses: int,
    correct: int,
    delta: float,
    significance: float = 0.05,
    tolerance: float = 1e-6,
) -> float:
    """The largest epsilon whose ``(epsilon, delta)``-DP hypothesis is rejected at
    ``significance`` by ``correct`` right guesses out of ``guesses`` (0 if none is)."""
    _check_counts(canaries, guesses, correct)
    d = _check_delta(delta)
    sig = _check_level("significance", significance)

    def rejected(eps: float) -> bool:
        p = one_run_p_value(
            epsilon=eps, delta=d, canaries=canaries, guesses=guesses, correct=correct
        )
        return p <= sig

    if not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(hi):
        lo, hi = hi, 2.0 * hi
        if hi > 1e3:
            return math.inf  # pragma: no cover - needs astronomically many guesses
    while hi - lo > tolerance:
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if rejected(mid) else (lo, mid)
    return lo


def gaussian_dp_mu(*, epsilon: float, delta: float) -> float:
    """The μ of the Gaussian mechanism (sensitivity / σ) that is exactly ``(epsilon, delta)``-DP:
    the root of ``Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2) = δ`` (Balle and Wang 2018)."""
    if not epsilon >= 0 or not 0 < delta < 1:
        raise ConfigurationError(f"need epsilon >= 0 and delta in (0, 1), got {epsilon}, {delta}")

    def excess(mu: float) -> float:
        a = float(special.ndtr(-epsilon / mu + mu / 2.0))
        b = float(special.ndtr(-epsilon / mu - mu / 2.0))
        return a - math.exp(epsilon) * b - delta

    hi = 1.0
    while excess(hi) < 0:
        hi *= 2.0
    lo = hi / 2.0
    while excess(lo) > 0 and lo > 1e-12:
        lo /= 2.0
    return float(optimize.brentq(excess, lo, hi, xtol=1e-12, rtol=1e-12))


def _fdp_rejects(mu: float, *, canaries: int, guesses: int, correct: int, level: float) -> bool:
    """Whether ``correct`` right guesses out of ``guesses`` refute μ-GDP at ``level``.

    Mahloujifar et al. bound, for a mechanism with trade-off curve ``f``, the chance of each
    number of correct guesses by walking down from ``correct``: start from the mass ``level``
    spread over the correct (``r``) and wrong (``h``) guesses in proportion, and at each step
    raise ``h`` to ``f̄(r) = Φ(Φ⁻¹(r) - μ)`` (what the curve forces the wrong guesses to be),
    moving mass to ``r`` in the ratio of right to wrong guesses left; if the total ever exceeds
    ``guesses / canaries``, no μ-GDP mechanism makes this outcome as likely as ``level``.
    """
    k, c, m = guesses, correct, canaries
    right = level * c / m
    wrong = level * (k - c) / m
    for i in range(c - 1, -1, -1):
        forced = float(special.ndtr(special.ndtri(right) - mu))
        if forced <= wrong:
            break  # nothing moves any more
        right = min(right + (i / (k - i)) * (forced - wrong), 1.0)
        wrong = forced
    return right + wrong > k / m


def one_run_fdp_epsilon(
    *,
    canaries: int,
    guesses: int,
    correct: int,
    delta: float,
    significance: float = 0.05,
    tolerance: float = 1e-5,
) -> float:
    """The largest epsilon whose Gaussian trade-off curve (:class:`OneRunTest`) is refuted at
    ``significance`` by ``correct`` right guesses out of ``guesses`` (0 if none is)."""
    _check_counts(canaries, guesses, correct)
    sig = _check_level("significance", significance)
    if not 0 < delta < 1:
        raise ConfigurationError(f"the f-DP test needs delta in (0, 1), got {delta!r}")
    if correct == 0:
        return 0.0

    def rejected(eps: float) -> bool:
        mu = gaussian_dp_mu(epsilon=eps, delta=delta)
        return _fdp_rejects(mu, canaries=canaries, guesses=guesses, correct=correct, level=sig)

    lo = 0.0
    if not rejected(1e-9):  # (the Gaussian curve at epsilon 0 is the diagonal: μ = 0)
        return 0.0
    hi = 1.0
    while rejected(hi):
        lo, hi = hi, 2.0 * hi
        if hi > 1e3:
            return math.inf  # pragma: no cover
    while hi - lo > tolerance:
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if rejected(mid) else (lo, mid)
    return lo


def _default_guess_grid(m: int) -> list[int]:
    grid = sorted(
        {
            k
            for k in (10, 20, 50, 100, 200, 300, 500, 1000, 2000, 3000, 5000, 10_000, 20_000)
            if k <= m
        }
    )
    return grid or [m]


def one_run_audit(
    scores: npt.ArrayLike,
    included: npt.ArrayLike,
    *,
    claimed_epsilon: float | None = None,
    delta: float,
    significance: float = 0.05,
    guess_counts: Sequence[int] | None = None,
    two_sided: bool = True,
    test: OneRunTest = OneRunTest.APPROXIMATE_DP,
) -> EpsilonAudit:
    """Steinke et al.'s one-run audit from each canary's ``score`` (higher means "included") and
    whether it was ``included`` (drawn independently with probability 1/2 before the run).

    For each ``k`` in ``guess_counts``, the attacker guesses "in" for the ``k/2`` highest scores
    and "out" for the ``k/2`` lowest (``two_sided=True``, which gave higher bounds on the Gaussian
    mechanism), or "in" for the ``k`` highest (``two_sided=False``, the paper's main variant);
    it abstains on the other canaries. Each ``k`` is tested at ``significance / len(guess_counts)``
    (Bonferroni), and the best bound is reported. ``test`` chooses the hypothesis
    (:class:`OneRunTest`). The default ``guess_counts`` is a fixed grid from 10 to 20,000 guesses
    for :attr:`OneRunTest.APPROXIMATE_DP`, and one count fixed in advance, a tenth of the canaries,
    for :attr:`OneRunTest.GAUSSIAN_FDP`: the f-DP bound changes little with ``k`` around there,
    so it gains more from the full ``significance`` than from choosing ``k`` after looking.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    inc = np.asarray(included).reshape(-1).astype(bool)
    if s.size != inc.size or s.size == 0:
        raise DataError(f"need one score per canary: {s.size} scores, {inc.size} flags")
    if not np.all(np.isfinite(s)):
        raise DataError("canary scores must be finite")
    d = _check_delta(delta)
    claim = _check_claim(claimed_epsilon)
    sig = _check_level("significance", significance)
    m = int(s.size)
    if guess_counts is not None:
        grid = list(guess_counts)
    elif test is OneRunTest.GAUSSIAN_FDP:
        grid = [max(1, m // 10)]
    else:
        grid = _default_guess_grid(m)
    if not grid or any(not 1 <= k <= m for k in grid):
        raise ConfigurationError(f"guess counts must be between 1 and {m} (the canaries)")
    order = np.argsort(-s, kind="stable")
    ranked = inc[order]
    per_test = sig / len(grid)
    best = (0.0, 0, 0)
    for k in grid:
        if two_sided:
            top, bottom = (k + 1) // 2, k // 2
            correct = int(ranked[:top].sum()) + int((~ranked[m - bottom :]).sum())
        else:
            correct = int(ranked[:k].sum())
        bound = one_run_fdp_epsilon if test is OneRunTest.GAUSSIAN_FDP else one_run_epsilon
        eps = bound(canaries=m, guesses=k, correct=correct, delta=d, significance=per_test)
        if eps > best[0] or best[1] == 0:
            best = (eps, k, correct)
    eps, k, correct = best
    fdp = test is OneRunTest.GAUSSIAN_FDP
    return EpsilonAudit(
        method=AuditMethod.ONE_RUN_FDP if fdp else AuditMethod.ONE_RUN,
        claimed_epsilon=claim,
        delta=d,
        epsilon_lower=eps,
        confidence=1.0 - sig,
        details={
            "canaries": float(m),
            "included": float(inc.sum()),
            "guesses": float(k),
            "correct": float(correct),
            "grid_size": float(len(grid)),
        },
    )
