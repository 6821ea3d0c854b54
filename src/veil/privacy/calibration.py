"""Calibration: the least noise that meets a target (epsilon, delta).

Every function returns a noise parameter whose accounted epsilon is *at most* the target (never
slightly above it): the search keeps the upper end of its bracket.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from veil.errors import ConfigurationError
from veil.privacy.accountants import (
    AccountingMethod,
    NeighboringRelation,
    make_accountant,
)
from veil.privacy.accountants._dpa import dpa
from veil.privacy.accountants.pld import gaussian_delta
from veil.privacy.events import (
    DiscreteGaussianEvent,
    Event,
    GaussianEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
)

__all__ = [
    "calibrate",
    "discrete_gaussian_sigma",
    "dpsgd_noise_multiplier",
    "gaussian_noise_multiplier",
    "laplace_scale",
]


def _check_target(epsilon: float, delta: float) -> None:
    if not isinstance(epsilon, int | float) or not math.isfinite(epsilon) or epsilon <= 0:
        raise ConfigurationError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    if not isinstance(delta, int | float) or not 0 <= delta < 1:
        raise ConfigurationError(f"delta must be a number in [0, 1), got {delta!r}")


def calibrate(
    make_event: Callable[[float], Event],
    *,
    epsilon: float,
    delta: float,
    method: AccountingMethod = AccountingMethod.PLD,
    neighboring_relation: NeighboringRelation = NeighboringRelation.ADD_OR_REMOVE_ONE,
    guess: float = 1.0,
    relative_tolerance: float = 1e-4,
) -> float:
    """The smallest noise parameter ``p`` (to ``relative_tolerance``) such that the event
    ``make_event(p)`` is ``(epsilon, delta)``-DP according to ``method``.

    ``make_event`` must be monotone: more noise never costs more privacy. The search doubles or
    halves from ``guess`` until it brackets the target, then bisects geometrically.
    """
    _check_target(epsilon, delta)
    if not 0 < relative_tolerance < 1:
        raise ConfigurationError(f"relative_tolerance must be in (0, 1), got {relative_tolerance}")

    def eps_of(p: float) -> float:
        acct = make_accountant(method, neighboring_relation=neighboring_relation)
        return acct.compose(make_event(p)).epsilon(delta)

    lo, hi = guess, guess
    if eps_of(hi) > epsilon:
        while eps_of(hi) > epsilon:
            lo, hi = hi, hi * 2.0
            if hi > 1e12:
                raise ConfigurationError(
                    f"no noise level up to 1e12 reaches epsilon {epsilon} at delta {delta}; "
                    "is delta 0 for a mechanism that needs delta > 0?"
                )
    else:
        while eps_of(lo) <= epsilon:
            lo, hi = lo / 2.0, lo
            if lo < 1e-12:
                return hi
    while hi / lo - 1.0 > relative_tolerance:
        mid = math.sqrt(lo * hi)
        if eps_of(mid) <= epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def laplace_scale(*, epsilon: float, sensitivity: float) -> float:
    """The Laplace scale ``sensitivity / epsilon`` that makes one release epsilon-DP."""
    _check_target(epsilon, 0.0)
    if (
        not isinstance(sensitivity, int | float)
        or not math.isfinite(sensitivity)
        or sensitivity <= 0
    ):
        raise ConfigurationError(f"sensitivity must be a finite number > 0, got {sensitivity!r}")
    return sensitivity / epsilon


def gaussian_noise_multiplier(*, epsilon: float, delta: float) -> float:
    """The exact noise multiplier of one continuous Gaussian release at (epsilon, delta)
    (the analytic Gaussian mechanism of Balle and Wang 2018)."""
    _check_target(epsilon, delta)
    if delta == 0:
        raise ConfigurationError("the Gaussian mechanism needs delta > 0")
    # dp-accounting's root finder can land a hair on the unsafe side: check, and pad.
    sigma = float(dpa().get_sigma_gaussian(epsilon, delta))
    step = 1e-12 * sigma
    while gaussian_delta(1.0 / sigma, epsilon) > delta:
        sigma += step
        step *= 2
    return sigma * (1 + 1e-12)


def discrete_gaussian_sigma(*, epsilon: float, delta: float, sensitivity: int = 1) -> float:
    """The smallest sigma for which one discrete Gaussian release of an integer query with the
    given (integer) sensitivity is (epsilon, delta)-DP, from its exact privacy loss distribution.

    At small sigma the discrete Gaussian is slightly *less* private than the continuous one with
    the same sigma, so the continuous formula must not be reused.
    """
    _check_target(epsilon, delta)
    if delta == 0:
        raise ConfigurationError("the discrete Gaussian mechanism needs delta > 0")
    if not isinstance(sensitivity, int) or sensitivity < 1:
        raise ConfigurationError(f"sensitivity must be an integer >= 1, got {sensitivity!r}")
    guess = gaussian_noise_multiplier(epsilon=epsilon, delta=delta) * sensitivity
    return calibrate(
        lambda s: DiscreteGaussianEvent(sigma=s, sensitivity=sensitivity),
        epsilon=epsilon,
        delta=delta,
        method=AccountingMethod.PLD,
        guess=guess,
    )


def dpsgd_noise_multiplier(
    *,
    epsilon: float,
    delta: float,
    sampling_probability: float,
    steps: int,
    method: AccountingMethod = AccountingMethod.PLD,
    relative_tolerance: float = 1e-3,
) -> float:
    """The noise multiplier for ``steps`` Poisson-subsampled Gaussian steps (DP-SGD, DP-FedAvg)
    to meet (epsilon, delta). The RDP answer seeds the PLD search (RDP needs more noise)."""

    def make(sigma: float) -> Event:
        return SelfComposedEvent(
            PoissonSampledEvent(sampling_probability, GaussianEvent(sigma)), steps
        )

    guess = calibrate(
        make, epsilon=epsilon, delta=delta, method=AccountingMethod.RDP, relative_tolerance=1e-2
    )
    return calibrate(
        make,
        epsilon=epsilon,
        delta=delta,
        method=method,
        guess=guess,
        relative_tolerance=relative_tolerance,
    )
