"""From float updates to the ring ``Z_2^32`` that secure aggregation sums in, and back.

Each client clips every coordinate of its update to ``[-clip, clip]``, scales it by ``scale``
and rounds it *stochastically* to an integer (up with probability equal to the fractional
part, so the rounding is unbiased: ``E[round(y)] = y``), then stores it in two's complement
modulo ``2^32``. The masked vectors, and so their sum, live in ``Z_2^32``; the sum of the
integers is read back as a signed 32-bit number and divided by ``scale``.

Overflow is impossible by construction: ``scale`` is chosen from ``clip`` and the largest
number of summands ``clients`` so that ``clients · (clip · scale + 1) < 2^31``; each rounded
coordinate is at most ``clip · scale + 1`` in magnitude, so the true integer sum always lies
in the signed range and the wrap-around of the ring never changes its value. Parameters for
which no scale of at least 1 exists are refused.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError, DataError
from veil.privacy.random import RandomSource, default_random

__all__ = ["Quantizer", "from_ring", "stochastic_round", "to_ring"]

_BITS = 32
_HALF = 2 ** (_BITS - 1)


def stochastic_round(
    values: npt.NDArray[np.float64], *, rng: RandomSource | None = None
) -> npt.NDArray[np.int64]:
    """Each value rounded down or up at random, up with probability equal to its fractional
    part (53 random bits per value), so that ``E[result] = values``."""
    low = np.floor(values)
    source = default_random(rng)
    u = (source.words(values.size) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return low.astype(np.int64) + (u < (values - low)).astype(np.int64)


def to_ring(values: npt.NDArray[np.int64]) -> npt.NDArray[np.uint32]:
    """Signed integers as words of ``Z_2^32`` (two's complement)."""
    return np.asarray(values & (2**_BITS - 1)).astype(np.uint32)


def from_ring(words: npt.NDArray[np.uint32]) -> npt.NDArray[np.int64]:
    """Words of ``Z_2^32`` read back as signed 32-bit integers."""
    return np.asarray(words, dtype=np.uint32).view(np.int32).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """Encode float vectors into ``Z_2^32`` for a sum over at most ``clients`` summands."""

    clip: float
    clients: int

    def __post_init__(self) -> None:
        if (
            not isinstance(self.clip, int | float)
            or isinstance(self.clip, bool)
            or not math.isfinite(self.clip)
            or self.clip <= 0
        ):
            raise ConfigurationError(f"clip must be a finite number > 0, got {self.clip!r}")
        if not isinstance(self.clients, int) or self.clients < 1:
            raise ConfigurationError(f"clients must be an integer >= 1, got {self.clients!r}")
        if self.scale < 1:
            raise ConfigurationError(
                f"{self.clients} clients cannot share a 32-bit ring at any useful resolution; "
                "aggregate fewer clients per round"
            )

    @property
    def scale(self) -> float:
        """Integer steps per unit: the largest with ``clients · (clip · scale + 1) < 2^31``."""
        room = (_HALF - 1) // self.clients - 1  # the largest |rounded coordinate| allowed
        return room / self.clip if room > 0 else 0.0

    @property
    def resolution(self) -> float:
        """The quantisation step, ``1 / scale``."""
        return 1.0 / self.scale

    def encode(self, values: npt.ArrayLike, *, rng: RandomSource | None = None) -> Any:
        """``values`` clipped, scaled and stochastically rounded, as ``uint32`` words."""
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(x)):
            raise DataError("values to aggregate must be finite (no NaN or infinity)")
        rounded = stochastic_round(np.clip(x, -self.clip, self.clip) * self.scale, rng=rng)
        return to_ring(rounded)

    def decode(self, total: npt.NDArray[np.uint32]) -> npt.NDArray[np.float64]:
        """The float sum from the ring sum of at most ``clients`` encoded vectors."""
        words = np.asarray(total, dtype=np.uint32)
        return words.view(np.int32).astype(np.float64) / self.scale
