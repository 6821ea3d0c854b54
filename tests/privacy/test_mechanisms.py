"""Mechanisms: the event they spend, the noise they add, and the inputs they refuse.

The statistical tests use fixed seeds and a false-alarm rate of 1e-4 each; each is run against a
deliberately broken mechanism (noise too small, or sensitivity taken too small) and must reject it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

from veil.errors import ConfigurationError, DataError
from veil.privacy import events as ev
from veil.privacy import samplers
from veil.privacy.accountants import PldAccountant, ZCdpAccountant
from veil.privacy.mechanisms import Domain, GaussianMechanism, LaplaceMechanism
from veil.privacy.random import InsecureSeededRandom, RandomSource

ALPHA = 1e-4
N = 100_000


def _chi_square_p(noise: npt.NDArray[np.int64], pmf: Any) -> float:
    """p-value of a chi-square goodness-of-fit test of integer ``noise`` against ``pmf``
    (bins with an expected count below 20 are pooled into the tails)."""
    lo, hi = int(noise.min()), int(noise.max())
    support = np.arange(lo - 1, hi + 2)
    expected = pmf(support) * noise.size
    keep = expected >= 20
    edges = support[keep]
    observed = np.array([(noise == k).sum() for k in edges], dtype=float)
    exp_kept = expected[keep]
    observed = np.append(observed, noise.size - observed.sum())
    exp_kept = np.append(exp_kept, noise.size - exp_kept.sum())
    return float(stats.chisquare(observed, exp_kept).pvalue)


def _laplace_pmf(t: float) -> Any:
    def pmf(k: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        p = math.exp(-1 / t)
        return (1 - p) / (1 + p) * np.exp(-np.abs(k) / t)

    return pmf


def _gauss_pmf(sigma: float) -> Any:
    ks = np.arange(-int(60 * sigma) - 5, int(60 * sigma) + 6)
    z = np.exp(-(ks.astype(float) ** 2) / (2 * sigma**2)).sum()

    def pmf(k: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        return np.exp(-(k.astype(float) ** 2) / (2 * sigma**2)) / z

    return pmf


class HalfNoiseLaplace(LaplaceMechanism):
    """A bug: draws noise at half the scale its event claims."""

    def _noise(self, rng: RandomSource, size: int) -> npt.NDArray[np.int64]:
        return samplers.discrete_laplace(rng, size, scale=self._grid_scale / 2)


class WrongSensitivityGaussian(GaussianMechanism):
    """A bug: calibrates as if the sensitivity were 1 when it was declared 2."""

    def _noise(self, rng: RandomSource, size: int) -> npt.NDArray[np.int64]:
        return samplers.discrete_gaussian(rng, size, sigma=self._grid_sigma / 2)


def _laplace_noise_p(mech: LaplaceMechanism, epsilon: float, sensitivity: int) -> float:
    """Release zeros; test the noise against the scale the *declared* epsilon requires."""
    out = mech.release(np.zeros(mech.dimension, dtype=np.int64), rng=InsecureSeededRandom(7))
    return _chi_square_p(out, _laplace_pmf(sensitivity / epsilon))


def test_integer_laplace_noise_has_the_declared_scale() -> None:
    good = LaplaceMechanism(epsilon=0.7, sensitivity=3, domain=Domain.INTEGERS, dimension=N)
    assert good.event == ev.DiscreteLaplaceEvent(scale=3 / 0.7, sensitivity=3.0, dimension=N)
    assert _laplace_noise_p(good, 0.7, 3) > ALPHA
    bad = HalfNoiseLaplace(epsilon=0.7, sensitivity=3, domain=Domain.INTEGERS, dimension=N)
    assert _laplace_noise_p(bad, 0.7, 3) < ALPHA


@pytest.mark.parametrize("sensitivity", [1.0, 2.0])
def test_integer_gaussian_noise_has_the_calibrated_sigma(sensitivity: float) -> None:
    mech = GaussianMechanism(
        sigma=4.5, sensitivity=sensitivity, domain=Domain.INTEGERS, dimension=N
    )
    out = mech.release(np.zeros(N, dtype=np.int64), rng=InsecureSeededRandom(11))
    assert _chi_square_p(out, _gauss_pmf(4.5)) > ALPHA
    bad = WrongSensitivityGaussian(
        sigma=4.5, sensitivity=sensitivity, domain=Domain.INTEGERS, dimension=N
    )
    out = bad.release(np.zeros(N, dtype=np.int64), rng=InsecureSeededRandom(11))
    assert _chi_square_p(out, _gauss_pmf(4.5)) < ALPHA


def test_real_values_land_on_the_grid_whatever_their_low_bits() -> None:
    mech = LaplaceMechanism(epsilon=1.0, sensitivity=1.0)
    g = mech.granularity
    assert g == 2.0**-10  # the largest power of two at most 1/1024
    rng = InsecureSeededRandom(3)
    for x in (0.1, 0.1 + 2**-50, math.pi, -1e6 / 3):
        out = np.array([mech.release(x, rng=rng) for _ in range(200)])
        assert np.all(out / g == np.round(out / g))  # exact multiples of the grid
    # the rounding is covered: grid sensitivity floor(1/g) + 1
    assert mech.event.sensitivity == 1025.0
    assert mech.epsilon == pytest.approx(1.0)
    assert mech.scale == pytest.approx(1025 / 1024)


def _mean_abs_noise_matches(mech: LaplaceMechanism, epsilon: float, sensitivity: float) -> bool:
    """Continuous Laplace of scale b has E|X| = b; the grid changes that by under 0.2 %. The
    standard error of the mean of N draws is b/sqrt(N) (0.3 % here); 1.5 % is five of them."""
    out = mech.release(np.zeros(mech.dimension), rng=InsecureSeededRandom(5))
    return bool(abs(np.mean(np.abs(out)) / (sensitivity / epsilon) - 1) < 0.015)


def test_real_laplace_noise_scale_in_data_units() -> None:
    mech = LaplaceMechanism(epsilon=0.5, sensitivity=4.0, dimension=N)
    assert _mean_abs_noise_matches(mech, 0.5, 4.0)
    assert not _mean_abs_noise_matches(
        HalfNoiseLaplace(epsilon=0.5, sensitivity=4.0, dimension=N), 0.5, 4.0
    )
    # at most 0.1 % more noise than the textbook scale 4 / 0.5, for the grid
    assert 8.0 <= mech.scale <= 8.0 * (1 + 1e-3) * (1 + 1e-6)
    out = mech.release(np.zeros(N), rng=InsecureSeededRandom(6))
    assert np.std(out) == pytest.approx(mech.noise_std, rel=0.02)


def test_laplace_from_scale_and_from_epsilon_agree() -> None:
    a = LaplaceMechanism(epsilon=0.25, sensitivity=2, domain=Domain.INTEGERS)
    b = LaplaceMechanism(scale=8.0, sensitivity=2, domain=Domain.INTEGERS)
    assert a.event == b.event
    assert a.epsilon == b.epsilon == 0.25


def test_gaussian_calibration_is_tight_from_both_sides() -> None:
    mech = GaussianMechanism(epsilon=1.0, delta=1e-6, sensitivity=1, domain=Domain.INTEGERS)
    event = mech.event
    assert PldAccountant().compose(event).epsilon(1e-6) <= 1.0
    slightly_less = ev.DiscreteGaussianEvent(sigma=event.sigma * (1 - 1e-3), sensitivity=1)
    assert PldAccountant().compose(slightly_less).epsilon(1e-6) > 1.0
    assert mech.epsilon(1e-6) == pytest.approx(1.0, abs=2e-3)


def test_vector_gaussian_is_calibrated_in_zcdp() -> None:
    mech = GaussianMechanism(epsilon=2.0, delta=1e-7, sensitivity=1.0, dimension=50)
    assert mech.event.dimension == 50
    eps = ZCdpAccountant().compose(mech.event).epsilon(1e-7)
    assert 2.0 * (1 - 1e-3) <= eps <= 2.0


def test_error_bound_covers_the_noise_as_promised() -> None:
    for mech in (
        LaplaceMechanism(epsilon=0.3, sensitivity=1, domain=Domain.INTEGERS, dimension=N),
        GaussianMechanism(sigma=3.0, sensitivity=1, domain=Domain.INTEGERS, dimension=N),
        GaussianMechanism(sigma=0.7, sensitivity=1, domain=Domain.INTEGERS, dimension=N),
    ):
        bound = mech.error_bound(alpha=0.05)
        noise = np.abs(mech.release(np.zeros(N, dtype=np.int64), rng=InsecureSeededRandom(2)))
        coverage = float(np.mean(noise <= bound))
        assert coverage >= 0.95 - 4 * math.sqrt(0.05 * 0.95 / N)
        # and it is the smallest such bound: one step less covers too little
        assert float(np.mean(noise <= bound - 1)) < 0.95 + 4 * math.sqrt(0.05 * 0.95 / N)


def test_noise_std_is_the_standard_deviation() -> None:
    for mech in (
        LaplaceMechanism(epsilon=0.2, sensitivity=1, domain=Domain.INTEGERS, dimension=N),
        GaussianMechanism(sigma=0.8, sensitivity=1, domain=Domain.INTEGERS, dimension=N),
    ):
        noise = mech.release(np.zeros(N, dtype=np.int64), rng=InsecureSeededRandom(4))
        assert float(np.std(noise)) == pytest.approx(mech.noise_std, rel=0.02)


def test_shapes_are_preserved() -> None:
    mech = LaplaceMechanism(epsilon=1, sensitivity=1, domain=Domain.INTEGERS, dimension=6)
    out = mech.release(np.arange(6).reshape(2, 3), rng=InsecureSeededRandom(1))
    assert out.shape == (2, 3)
    assert out.dtype == np.int64
    scalar = LaplaceMechanism(epsilon=1, sensitivity=1).release(2.5, rng=InsecureSeededRandom(1))
    assert isinstance(scalar, float)


def test_default_generator_is_secure(monkeypatch: pytest.MonkeyPatch) -> None:
    from veil.privacy import random as random_module

    seen: list[object] = []
    original = random_module.SecureRandom.words

    def spy(self: object, n: int) -> Any:
        seen.append(self)
        return original(self, n)  # type: ignore[arg-type]

    monkeypatch.setattr(random_module.SecureRandom, "words", spy)
    LaplaceMechanism(epsilon=1, sensitivity=1).release(1.0)
    assert seen
    assert all(isinstance(s, random_module.SecureRandom) for s in seen)


@pytest.mark.parametrize(
    "values",
    [float("nan"), float("inf"), "12", None, [1.0, 2.0], True, np.array([object()]), 2.0**70],
)
def test_bad_values_are_data_errors(values: object) -> None:
    mech = LaplaceMechanism(epsilon=1, sensitivity=1)
    with pytest.raises(DataError):
        mech.release(values)


def test_integer_domain_refuses_fractions() -> None:
    mech = LaplaceMechanism(epsilon=1, sensitivity=1, domain=Domain.INTEGERS)
    with pytest.raises(DataError, match="integer"):
        mech.release(1.5)
    assert isinstance(mech.release(3.0, rng=InsecureSeededRandom(0)), int)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LaplaceMechanism(sensitivity=1),
        lambda: LaplaceMechanism(sensitivity=1, epsilon=1, scale=1),
        lambda: LaplaceMechanism(sensitivity=0, epsilon=1),
        lambda: LaplaceMechanism(sensitivity=1, epsilon=-1),
        lambda: LaplaceMechanism(sensitivity=1, epsilon=1, granularity=0.3),
        lambda: LaplaceMechanism(sensitivity=1, epsilon=1, domain="reals"),
        lambda: LaplaceMechanism(sensitivity=1, epsilon=1, dimension=0),
        lambda: GaussianMechanism(sensitivity=1, epsilon=1),
        lambda: GaussianMechanism(sensitivity=1, epsilon=1, delta=0),
        lambda: GaussianMechanism(sensitivity=1, sigma=1, epsilon=1, delta=1e-5),
        lambda: GaussianMechanism(sensitivity=1, sigma=1e9, domain=Domain.INTEGERS),
    ],
)
def test_bad_parameters_are_configuration_errors(make: Any) -> None:
    with pytest.raises(ConfigurationError):
        make()


def test_enormous_gaussian_noise_coarsens_the_grid_instead_of_failing() -> None:
    mech = GaussianMechanism(sigma=1e6, sensitivity=1.0, dimension=1000)
    assert mech.event.sigma < 2**26
    out = mech.release(np.zeros(1000), rng=InsecureSeededRandom(0))
    assert 0.9e6 < float(np.std(out)) < 1.1e6


def test_mechanisms_are_immutable() -> None:
    mech = LaplaceMechanism(epsilon=1.0, sensitivity=1.0)
    for name, value in (("granularity", 2.0**-30), ("sensitivity", 0.001), ("dimension", 5)):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(mech, name, value)
    assert mech.event.sensitivity == 1025.0
    with pytest.raises(AttributeError):
        GaussianMechanism(sigma=1, sensitivity=1)._grid_sigma = 0.01
