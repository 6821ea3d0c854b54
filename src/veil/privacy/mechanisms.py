"""Mechanisms that release noisy values: Laplace and Gaussian, on integers and on reals.

A mechanism is built without data. It knows the privacy event it will spend (``.event``) before
it sees any value, so a ledger can reserve the cost first; ``release(values, rng=...)`` then adds
the noise. Noise never touches floating point:

* **integers** get exact discrete Laplace or discrete Gaussian noise (Canonne, Kamath, Steinke
  2020) drawn from a cryptographically secure generator;
* **reals** are first rounded to a grid of spacing ``granularity`` (a power of two, so the
  rounding is exact in binary floating point), the integer grid index gets discrete noise, and
  the result is scaled back. Rounding can move a value by half a grid step, so the sensitivity in
  grid units is widened to cover it: ``floor(Δ₁/g) + d`` for L1 and ``Δ₂/g + √d`` for L2, where
  ``d`` (``max_changed``) is the number of coordinates one unit can change (by default all of
  them; a per-group statistic in which a unit appears in one group has ``d = 1``). The default
  grid is fine enough that this costs at most 0.1 % more noise. This is the defence against
  Mironov's (2012) attack on textbook floating-point Laplace noise: the set of possible outputs
  no longer depends on the input's low-order bits.

The conversion back to float64 is post-processing of an integer and cannot leak.
"""

from __future__ import annotations

import abc
import enum
import math
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from scipy import special

from veil.errors import ConfigurationError, DataError
from veil.privacy import samplers
from veil.privacy.accountants import AccountingMethod, TightestAccountant
from veil.privacy.calibration import calibrate, discrete_gaussian_sigma
from veil.privacy.events import DiscreteGaussianEvent, DiscreteLaplaceEvent, Event
from veil.privacy.random import RandomSource, default_random

__all__ = ["Domain", "GaussianMechanism", "LaplaceMechanism", "Mechanism"]

# A real value is rounded to a grid; its index must stay well inside int64.
_MAX_GRID_INDEX = 2.0**62
# The discrete Gaussian sampler takes sigma below 2**26 grid steps; stay well inside.
_MAX_GRID_SIGMA = 2.0**24
# Grid steps per unit of sensitivity (per coordinate): rounding then costs at most 1/1024 extra.
_GRID_STEPS = 1024


class Domain(enum.Enum):
    """What the released values are."""

    INTEGERS = "integers"
    REALS = "reals"


def _finite_positive(name: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_alpha(alpha: float) -> None:
    if not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise ConfigurationError(f"alpha must be in (0, 1), got {alpha!r}")


def _power_of_two_at_most(x: float) -> float:
    return 2.0 ** math.floor(math.log2(x))


class Mechanism(abc.ABC):
    """A noise-adding mechanism over a fixed number of coordinates (``dimension``).

    Mechanisms are immutable once built: their event was derived from their parameters, and
    changing one afterwards (say, the grid) would make the event a lie.
    """

    _frozen = False

    def __setattr__(self, name: str, value: object) -> None:
        if self._frozen:
            raise AttributeError(
                f"{type(self).__name__} is immutable; build a new mechanism to change {name!r}"
            )
        super().__setattr__(name, value)

    def _freeze(self) -> None:
        object.__setattr__(self, "_frozen", True)

    def __init__(
        self,
        *,
        domain: Domain,
        dimension: int,
        granularity: float | None,
        max_changed: int | None = None,
    ) -> None:
        if not isinstance(domain, Domain):
            raise ConfigurationError(f"domain must be a Domain, got {domain!r}")
        if not isinstance(dimension, int) or isinstance(dimension, bool) or dimension < 1:
            raise ConfigurationError(f"dimension must be an integer >= 1, got {dimension!r}")
        if max_changed is None:
            max_changed = dimension
        if not isinstance(max_changed, int) or isinstance(max_changed, bool) or max_changed < 1:
            raise ConfigurationError(f"max_changed must be an integer >= 1, got {max_changed!r}")
        self.domain = domain
        self.dimension = dimension
        # How many coordinates one unit can change: bounds the rounding added to the
        # sensitivity, and is the dimension of the event.
        self.max_changed = min(max_changed, dimension)
        if domain is Domain.INTEGERS:
            if granularity not in (None, 1, 1.0):
                raise ConfigurationError("granularity applies to Domain.REALS only")
            self.granularity = 1.0
        elif granularity is None:
            self.granularity = self._default_granularity()
        else:
            g = _finite_positive("granularity", granularity)
            if _power_of_two_at_most(g) != g:
                raise ConfigurationError(f"granularity must be a power of two, got {g!r}")
            self.granularity = g

    @abc.abstractmethod
    def _default_granularity(self) -> float: ...

    @property
    @abc.abstractmethod
    def event(self) -> Event:
        """The privacy event one release spends."""

    @abc.abstractmethod
    def _noise(self, rng: RandomSource, size: int) -> npt.NDArray[np.int64]: ...

    @abc.abstractmethod
    def error_bound(self, *, alpha: float = 0.05) -> float:
        """With probability at least ``1 - alpha``, the noise on one coordinate is at most this
        (in data units)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short description in data units."""

    @property
    @abc.abstractmethod
    def noise_std(self) -> float:
        """The standard deviation of the noise on one coordinate, in data units."""

    def validate(self, values: object) -> npt.NDArray[Any]:
        """Check ``values`` (a number, or ``dimension`` numbers) before anything is spent.

        Returns them as a flat array; raises :class:`~veil.errors.DataError` for values of the
        wrong size, non-numeric or non-finite values, non-integers for ``Domain.INTEGERS``, or
        values too large for the grid.
        """
        try:
            arr = np.asarray(values)
        except Exception as exc:
            raise DataError(f"cannot read the values to release: {exc}") from None
        if arr.dtype == np.bool_ or not (
            np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
        ):
            raise DataError(f"values must be numbers, got an array of {arr.dtype}")
        flat = arr.reshape(-1)
        if flat.size != self.dimension:
            raise DataError(
                f"expected {self.dimension} value(s) (the mechanism's dimension), got {flat.size}"
            )
        if np.issubdtype(flat.dtype, np.floating):
            if not np.all(np.isfinite(flat)):
                raise DataError("values must be finite (no NaN or infinity)")
            if self.domain is Domain.INTEGERS and not np.all(flat == np.floor(flat)):
                raise DataError("Domain.INTEGERS needs integer values; use Domain.REALS")
        index = flat.astype(np.float64) / self.granularity
        if np.any(np.abs(index) >= _MAX_GRID_INDEX):
            raise DataError(
                f"a value is too large for the grid of spacing {self.granularity}; "
                "clamp the values or choose a coarser granularity"
            )
        return flat

    def release(self, values: object, *, rng: RandomSource | None = None) -> Any:
        """Add noise to ``values`` and return the noisy values (same shape; a scalar in, a scalar
        out). ``rng`` defaults to a fresh cryptographically secure generator."""
        flat = self.validate(values)
        shape = np.asarray(cast(Any, values)).shape
        source = default_random(rng)
        if self.domain is Domain.INTEGERS:
            out_int = flat.astype(np.int64) + self._noise(source, flat.size)
            result: npt.NDArray[Any] = out_int
        else:
            index = np.rint(flat.astype(np.float64) / self.granularity).astype(np.int64)
            noisy = index + self._noise(source, flat.size)
            result = noisy.astype(np.float64) * self.granularity
        if shape == ():
            return result[0].item()
        return result.reshape(shape)


class LaplaceMechanism(Mechanism):
    """Pure epsilon-DP: discrete Laplace noise, ``P(k) ∝ exp(-|k| / t)`` on the grid.

    Give exactly one of ``epsilon`` (the scale is then ``Δ₁ / epsilon`` in grid units) or
    ``scale`` (in data units). ``sensitivity`` is the L1 sensitivity of the query in data units:
    how far, in L1 norm, the ``dimension`` values can move when one privacy unit is added or
    removed; ``max_changed`` is how many of them it can move at most (default: all).
    """

    def __init__(
        self,
        *,
        sensitivity: float,
        epsilon: float | None = None,
        scale: float | None = None,
        domain: Domain = Domain.REALS,
        dimension: int = 1,
        granularity: float | None = None,
        max_changed: int | None = None,
    ) -> None:
        self.sensitivity = _finite_positive("sensitivity", sensitivity)
        super().__init__(
            domain=domain, dimension=dimension, granularity=granularity, max_changed=max_changed
        )
        g = self.granularity
        if domain is Domain.INTEGERS:
            # integer-valued queries move by integers: only floor(Δ) is reachable
            grid_sensitivity = float(max(1, math.floor(self.sensitivity)))
        else:
            grid_sensitivity = float(math.floor(self.sensitivity / g) + self.max_changed)
        self._grid_sensitivity = grid_sensitivity
        if (epsilon is None) == (scale is None):
            raise ConfigurationError("give exactly one of epsilon= or scale=")
        if epsilon is not None:
            eps = _finite_positive("epsilon", epsilon)
            self._grid_scale = grid_sensitivity / eps
        else:
            self._grid_scale = _finite_positive("scale", scale) / g
        self._freeze()

    def _default_granularity(self) -> float:
        return _power_of_two_at_most(self.sensitivity / (_GRID_STEPS * self.max_changed))

    @property
    def event(self) -> DiscreteLaplaceEvent:
        return DiscreteLaplaceEvent(
            scale=self._grid_scale, sensitivity=self._grid_sensitivity, dimension=self.max_changed
        )

    @property
    def epsilon(self) -> float:
        """The pure-DP epsilon of one release."""
        return self._grid_sensitivity / self._grid_scale

    @property
    def scale(self) -> float:
        """The noise scale in data units."""
        return self._grid_scale * self.granularity

    @property
    def noise_std(self) -> float:
        p = math.exp(-1.0 / self._grid_scale)
        return math.sqrt(2.0 * p) / (1.0 - p) * self.granularity

    def error_bound(self, *, alpha: float = 0.05) -> float:
        _check_alpha(alpha)
        # P(|K| >= k) = 2 p^k / (1 + p) for k >= 1, with p = exp(-1/t)
        log_p = -1.0 / self._grid_scale
        p = math.exp(log_p)
        k = max(0, math.ceil(math.log(alpha * (1.0 + p) / 2.0) / log_p) - 1)
        return k * self.granularity

    def _noise(self, rng: RandomSource, size: int) -> npt.NDArray[np.int64]:
        return samplers.discrete_laplace(rng, size, scale=self._grid_scale)

    def describe(self) -> str:
        """A short description in data units, e.g. ``Laplace(ε=0.1, scale 10)``."""
        dim = f", {self.dimension} values" if self.dimension > 1 else ""
        return f"Laplace(ε={self.epsilon:.4g}, scale {self.scale:.4g}{dim})"

    def __repr__(self) -> str:
        return (
            f"LaplaceMechanism(epsilon={self.epsilon:.6g}, sensitivity={self.sensitivity:.6g}, "
            f"scale={self.scale:.6g}, domain={self.domain.name}, dimension={self.dimension})"
        )


class GaussianMechanism(Mechanism):
    """(epsilon, delta)-DP or rho-zCDP: discrete Gaussian noise, ``P(k) ∝ exp(-k² / (2σ²))``.

    Give ``sigma`` (standard deviation parameter in data units), or ``epsilon`` and ``delta``: then
    sigma is calibrated to the least that meets them, from the exact privacy loss distribution of
    the discrete Gaussian when one unit changes one value (``max_changed == 1``) and from zCDP
    otherwise. ``sensitivity`` is the L2 sensitivity in data units.
    """

    def __init__(
        self,
        *,
        sensitivity: float,
        sigma: float | None = None,
        epsilon: float | None = None,
        delta: float | None = None,
        domain: Domain = Domain.REALS,
        dimension: int = 1,
        granularity: float | None = None,
        max_changed: int | None = None,
    ) -> None:
        self.sensitivity = _finite_positive("sensitivity", sensitivity)
        super().__init__(
            domain=domain, dimension=dimension, granularity=granularity, max_changed=max_changed
        )
        if sigma is not None:
            if epsilon is not None or delta is not None:
                raise ConfigurationError("give either sigma= or epsilon= and delta=, not both")
            target = _finite_positive("sigma", sigma)
        else:
            if epsilon is None or delta is None:
                raise ConfigurationError("give sigma=, or both epsilon= and delta=")
            eps = _finite_positive("epsilon", epsilon)
            if not isinstance(delta, int | float) or not 0 < delta < 1:
                raise ConfigurationError(f"delta must be in (0, 1), got {delta!r}")
            target_delta = float(delta)
        while True:
            self._grid_sensitivity = self._grid_sensitivity_for(self.granularity)
            if sigma is not None:
                self._grid_sigma = target / self.granularity
            else:
                self._grid_sigma = self._calibrate(eps, target_delta)
            if self._grid_sigma < _MAX_GRID_SIGMA:
                break
            # So much noise that the grid index would leave the sampler's range: a coarser grid
            # (relative to the noise, still far finer than it) keeps it in range.
            if domain is Domain.INTEGERS or granularity is not None:
                raise ConfigurationError(
                    f"sigma is {self._grid_sigma:.3g} grid steps, above the sampler's limit of "
                    f"{_MAX_GRID_SIGMA:.3g}; use Domain.REALS with a coarser granularity"
                )
            self.granularity *= 2.0 ** math.ceil(math.log2(self._grid_sigma / _MAX_GRID_SIGMA) + 1)
        self._freeze()

    def _grid_sensitivity_for(self, g: float) -> float:
        if self.domain is Domain.INTEGERS:
            if self.max_changed == 1:
                return float(max(1, math.floor(self.sensitivity)))
            return self.sensitivity
        if self.max_changed == 1:
            return float(math.floor(self.sensitivity / g) + 1)
        return self.sensitivity / g + math.sqrt(self.max_changed)

    def _calibrate(self, epsilon: float, delta: float) -> float:
        sens = self._grid_sensitivity
        if self.max_changed == 1 and float(sens).is_integer():
            return discrete_gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=int(sens))

        def make(sigma: float) -> Event:
            return DiscreteGaussianEvent(sigma=sigma, sensitivity=sens, dimension=self.max_changed)

        return calibrate(
            make, epsilon=epsilon, delta=delta, method=AccountingMethod.ZCDP, guess=sens
        )

    def _default_granularity(self) -> float:
        return _power_of_two_at_most(self.sensitivity / (_GRID_STEPS * math.sqrt(self.max_changed)))

    @property
    def event(self) -> DiscreteGaussianEvent:
        return DiscreteGaussianEvent(
            sigma=self._grid_sigma, sensitivity=self._grid_sensitivity, dimension=self.max_changed
        )

    @property
    def sigma(self) -> float:
        """The discrete Gaussian's sigma in data units (its standard deviation is at most this)."""
        return self._grid_sigma * self.granularity

    @property
    def rho(self) -> float:
        """The zCDP parameter of one release."""
        return self.event.rho

    def epsilon(self, delta: float) -> float:
        """The epsilon of one release at ``delta`` (tightest accountant that applies)."""
        return TightestAccountant().compose(self.event).epsilon(delta)

    @property
    def noise_std(self) -> float:
        # For sigma >= 2 the discrete Gaussian's variance equals sigma² to within 1e-30.
        s = self._grid_sigma
        if s >= 2:
            return s * self.granularity
        k = np.arange(-int(40 * s) - 2, int(40 * s) + 3, dtype=np.float64)
        w = np.exp(-(k**2) / (2 * s * s))
        return float(math.sqrt(float(np.sum(w * k**2) / np.sum(w))) * self.granularity)

    def error_bound(self, *, alpha: float = 0.05) -> float:
        _check_alpha(alpha)
        s = self._grid_sigma
        if s >= 2:
            # P(|K| <= k) = P(|N(0, s²)| <= k + 1/2) up to e^(-2π²s²) (Poisson summation)
            z = float(special.ndtri(1.0 - alpha / 2.0))
            return max(0, math.ceil(z * s - 0.5)) * self.granularity
        k = np.arange(0, int(40 * s) + 3)
        w = np.exp(-(k.astype(np.float64) ** 2) / (2 * s * s))
        mass = np.where(k == 0, w, 2 * w)
        tail = 1.0 - np.cumsum(mass) / mass.sum()  # P(|K| > k)
        return float(k[np.argmax(tail <= alpha)]) * self.granularity

    def _noise(self, rng: RandomSource, size: int) -> npt.NDArray[np.int64]:
        return samplers.discrete_gaussian(rng, size, sigma=self._grid_sigma)

    def describe(self) -> str:
        """A short description in data units, e.g. ``Gaussian(σ=18.3, ρ=0.0015)``."""
        dim = f", {self.dimension} values" if self.dimension > 1 else ""
        return f"Gaussian(σ={self.sigma:.4g}, ρ={self.rho:.3g}{dim})"

    def __repr__(self) -> str:
        return (
            f"GaussianMechanism(sigma={self.sigma:.6g}, sensitivity={self.sensitivity:.6g}, "
            f"rho={self.rho:.6g}, domain={self.domain.name}, dimension={self.dimension})"
        )
