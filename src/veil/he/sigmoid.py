"""Polynomial approximations of the logistic sigmoid on a model's observed logit range.

CKKS evaluates additions and multiplications only, so a server that must return a probability
evaluates a polynomial ``p(z) ~ sigma(z) = 1 / (1 + e^-z)``. A polynomial can follow the sigmoid
only on a bounded interval, and the textbook cubic ``0.5 + 0.197 z - 0.004 z^3`` (fitted to
``[-8, 8]``) is wrong by up to 86 in probability once logits reach 28. veil fits the polynomial to
``[-R, R]`` where ``R`` covers the logits the model produced on its training data, in the
variable ``u = z / R`` (so the coefficients stay of order one), and reports the degree and the
largest error on the interval, measured on a dense grid. Outside ``[-R, R]`` the polynomial
diverges: the client is told the range it holds for.

Two fits: Chebyshev interpolation (near-minimax; the error is spread evenly over the interval)
and least squares on a uniform grid (smaller average error, larger at the ends). The sigmoid
minus one half is odd, so both keep only odd powers of ``u`` and the constant one half.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError

__all__ = ["FitMethod", "SigmoidPolynomial", "fit_sigmoid", "sigmoid"]

_GRID = 20001


class FitMethod(enum.Enum):
    CHEBYSHEV = "chebyshev"
    LEAST_SQUARES = "least_squares"


def sigmoid(z: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The logistic function, computed without overflow."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


@dataclasses.dataclass(frozen=True)
class SigmoidPolynomial:
    """``p(z) = sum_k coefficients[k] (z / radius)^k``, valid on ``[-radius, radius]`` with
    ``max |p(z) - sigma(z)| <= max_error`` there (measured on a grid of 20,001 points)."""

    coefficients: tuple[float, ...]
    radius: float
    method: FitMethod
    max_error: float

    @property
    def degree(self) -> int:
        return len(self.coefficients) - 1

    def __call__(self, z: npt.ArrayLike) -> npt.NDArray[np.float64]:
        u = np.asarray(z, dtype=np.float64) / self.radius
        return np.asarray(np.polynomial.polynomial.polyval(u, self.coefficients))

    def to_dict(self) -> dict[str, object]:
        return {
            "coefficients": list(self.coefficients),
            "radius": self.radius,
            "method": self.method.value,
            "max_error": self.max_error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> SigmoidPolynomial:
        coefficients = data["coefficients"]
        assert isinstance(coefficients, list)
        return cls(
            coefficients=tuple(float(c) for c in coefficients),
            radius=float(data["radius"]),  # type: ignore[arg-type]
            method=FitMethod(data["method"]),
            max_error=float(data["max_error"]),  # type: ignore[arg-type]
        )


def fit_sigmoid(
    *, radius: float, degree: int, method: FitMethod = FitMethod.CHEBYSHEV
) -> SigmoidPolynomial:
    """Fit ``sigma`` on ``[-radius, radius]`` with an odd polynomial of ``degree`` (odd, 1..15)."""
    if not (np.isfinite(radius) and radius > 0):
        raise ConfigurationError(f"the sigmoid's range must be positive and finite; got {radius}")
    if degree < 1 or degree > 15 or degree % 2 == 0:
        raise ConfigurationError(
            f"the sigmoid polynomial's degree must be odd, between 1 and 15; got {degree}"
        )
    if method is FitMethod.CHEBYSHEV:
        # Interpolation at the Chebyshev points of the first kind.
        k = np.arange(degree + 1)
        nodes = np.cos(np.pi * (k + 0.5) / (degree + 1))
        cheb = np.polynomial.chebyshev.chebfit(nodes, sigmoid(radius * nodes), degree)
        coefficients = np.polynomial.chebyshev.cheb2poly(cheb)
    else:
        u = np.linspace(-1.0, 1.0, _GRID)
        coefficients = np.polynomial.polynomial.polyfit(u, sigmoid(radius * u), degree)
    coefficients = np.asarray(coefficients, dtype=np.float64)
    coefficients[0] = 0.5  # sigma - 1/2 is odd: the even terms are zero up to rounding
    coefficients[2::2] = 0.0
    grid = np.linspace(-radius, radius, _GRID)
    values = np.polynomial.polynomial.polyval(grid / radius, coefficients)
    error = float(np.max(np.abs(values - sigmoid(grid))))
    return SigmoidPolynomial(
        coefficients=tuple(float(c) for c in coefficients),
        radius=float(radius),
        method=method,
        max_error=error,
    )
