"""Estimators: from exact bounded aggregates per group to released values with intervals.

Each statistic is released as one or more noisy vectors (one entry per group, or per group and
node/bin); a unit moves at most ``K`` groups, by at most ``k`` rows in each, which gives each
vector's sensitivity:

=============  ======================  ==============================  ===================
statistic      noisy vectors           per-group change by one unit    estimate
=============  ======================  ==============================  ===================
COUNT          rows                    k                               max(0, N)
COUNT_UNITS    units                   1                               max(0, U)
SUM            Σ x                     k max(|L|, |U|)                 Σ
MEAN           Σ (x - m), count        k R, k                          m + S/N, in [L, U]
VARIANCE       Σ (x-m)², Σ (x-m), n    k R², k R, k                    Q/N - (S/N)², [0, R²]
QUANTILE       counts in a tree of     k per level                     from noisy prefixes
               1024 leaves on [L, U]
HISTOGRAM      counts per bin          k                               max(0, count)
=============  ======================  ==============================  ===================

(``m`` the midpoint and ``R`` the half-width of the bounds [L, U].) Laplace noise gets the L1
sensitivity ``K x`` the per-group change, Gaussian noise the L2 sensitivity ``√K x`` it. Every
released value is post-processed into its range, so no NaN, infinity or impossible value is
released; each carries a confidence interval that covers the noise with probability at least
1 - alpha (it does not cover the bias of clamping or of dropping a unit's extra rows).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError
from veil.privacy.events import Event
from veil.privacy.mechanisms import Domain, GaussianMechanism, LaplaceMechanism, Mechanism
from veil.privacy.random import RandomSource

__all__ = ["TREE_LEAVES", "NoiseKind", "NoisyVector", "quantile_tree"]

FloatArray = npt.NDArray[np.float64]

# Quantiles are read from a tree of counts over 2**10 equal leaves on the value's bounds.
TREE_DEPTH = 10
TREE_LEAVES = 2**TREE_DEPTH
TREE_LEVELS = TREE_DEPTH + 1  # root included


class NoiseKind(enum.Enum):
    """Laplace (pure epsilon-DP) or Gaussian ((epsilon, delta)-DP; better when a unit touches
    many groups or tree nodes)."""

    LAPLACE = "laplace"
    GAUSSIAN = "gaussian"


@dataclasses.dataclass(frozen=True)
class NoisyVector:
    """One vector to be released with noise, at a share of the budget.

    ``l1`` and ``l2`` bound how far the whole vector can move when one unit is added or removed,
    ``touched`` how many coordinates it can move; ``integer`` says whether the values are
    integers (counts). The vector may be longer than ``touched``: the event does not depend on
    its length.
    """

    label: str
    l1: float
    l2: float
    touched: int
    integer: bool
    epsilon: float
    delta: float
    noise: NoiseKind

    def mechanism(self, dimension: int) -> Mechanism:
        """The mechanism for a vector of ``dimension`` coordinates."""
        domain = Domain.INTEGERS if self.integer else Domain.REALS
        dim = max(dimension, self.touched)
        if self.noise is NoiseKind.LAPLACE:
            return LaplaceMechanism(
                epsilon=self.epsilon,
                sensitivity=self.l1,
                domain=domain,
                dimension=dim,
                max_changed=self.touched,
            )
        return GaussianMechanism(
            epsilon=self.epsilon,
            delta=self.delta,
            sensitivity=self.l2,
            domain=domain,
            dimension=dim,
            max_changed=self.touched,
        )

    @property
    def event(self) -> Event:
        return self.mechanism(self.touched).event

    def release(
        self, values: Sequence[float] | npt.NDArray[Any], rng: RandomSource | None
    ) -> FloatArray:
        """The values with noise added (same length)."""
        vector = np.asarray(values, dtype=np.float64).reshape(-1)
        if vector.size == 0:
            return vector
        mech = self.mechanism(vector.size)
        if mech.event != self.event:
            raise AssertionError("the mechanism's event depends on the vector's length")
        payload: npt.NDArray[Any] = vector
        if self.integer:
            payload = np.rint(vector).astype(np.int64)
        if mech.dimension > vector.size:  # fewer coordinates than one unit could touch
            payload = np.concatenate(
                [payload, np.zeros(mech.dimension - vector.size, payload.dtype)]
            )
        noisy = np.asarray(mech.release(payload, rng=rng), dtype=np.float64).reshape(-1)
        return noisy[: vector.size]

    def error_bound(self, alpha: float) -> float:
        """With probability at least ``1 - alpha`` the noise on one coordinate is at most this."""
        return self.mechanism(self.touched).error_bound(alpha=alpha)

    def noise_std(self) -> float:
        return self.mechanism(self.touched).noise_std


def split(epsilon: float, delta: float, weights: Sequence[float]) -> list[tuple[float, float]]:
    """Shares of (epsilon, delta) in proportion to ``weights``."""
    total = float(sum(weights))
    if total <= 0:
        raise ConfigurationError("nothing to split the budget between")
    return [(epsilon * w / total, delta * w / total) for w in weights]


# -- point estimates and intervals ----------------------------------------------------------------


def ratio_interval(
    s: FloatArray, es: float, n: FloatArray, en: float
) -> tuple[FloatArray, FloatArray]:
    """Bounds of S/N over the box |S - s| <= es, |N - n| <= en (N > 0); infinite where the box
    reaches N <= 0."""
    n_lo = n - en
    safe = n_lo > 0
    denom_lo = np.where(safe, n_lo, 1.0)
    denom_hi = np.where(safe, n + en, 1.0)
    corners = np.stack(
        [(s - es) / denom_lo, (s - es) / denom_hi, (s + es) / denom_lo, (s + es) / denom_hi]
    )
    lo = np.where(safe, corners.min(axis=0), -np.inf)
    hi = np.where(safe, corners.max(axis=0), np.inf)
    return lo, hi


def quantile_tree(leaves: FloatArray) -> list[FloatArray]:
    """The levels of a binary tree of counts over ``leaves`` (root first) for each group:
    ``leaves`` has shape (groups, TREE_LEAVES); level j has shape (groups, 2**j)."""
    levels = [leaves]
    current = leaves
    while current.shape[1] > 1:
        current = current.reshape(current.shape[0], -1, 2).sum(axis=2)
        levels.append(current)
    return levels[::-1]


def prefix_counts(levels: Sequence[FloatArray]) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Noisy prefix counts at every leaf boundary b = 0..TREE_LEAVES (count of leaves < b), each
    the sum of at most TREE_DEPTH dyadic nodes, and how many nodes each used."""
    groups = levels[0].shape[0]
    prefixes = np.zeros((groups, TREE_LEAVES + 1))
    used = np.zeros(TREE_LEAVES + 1, dtype=np.int64)
    prefixes[:, TREE_LEAVES] = levels[0][:, 0]  # everything: the root
    used[TREE_LEAVES] = 1
    for b in range(1, TREE_LEAVES):
        start = 0
        total = np.zeros(groups)
        for depth in range(1, TREE_DEPTH + 1):
            size = TREE_LEAVES >> depth
            if b - start >= size:
                total = total + levels[depth][:, start // size]
                used[b] += 1
                start += size
        prefixes[:, b] = total
    return prefixes, used


def sum_noise_bound(vector: NoisyVector, terms: int, alpha: float) -> float:
    """With probability >= 1 - alpha, |sum of ``terms`` independent noise draws| <= this.

    Laplace: the exact distribution of the sum of discrete Laplace draws by convolution.
    Gaussian: the discrete Gaussian is sub-Gaussian with parameter sigma (Canonne et al. 2020),
    so P(|S| >= t) <= 2 exp(-t² / (2 terms sigma²)).
    """
    if terms <= 0:
        return 0.0
    mech = vector.mechanism(vector.touched)
    if isinstance(mech, GaussianMechanism):
        sigma = mech.sigma
        return float(sigma * math.sqrt(2.0 * terms * math.log(2.0 / alpha)))
    assert isinstance(mech, LaplaceMechanism)
    t = mech.event.scale  # grid units
    width = math.ceil(40 * t) + 2
    support = np.arange(-width, width + 1)
    p = math.exp(-1.0 / t)
    pmf = (1 - p) / (1 + p) * np.exp(-np.abs(support) / t)
    # the distribution of the sum: the terms-th power of the pmf's Fourier transform
    size = terms * (pmf.size - 1) + 1
    n_fft = 1 << (size - 1).bit_length()
    total = np.fft.irfft(np.fft.rfft(pmf, n_fft) ** terms, n_fft)[:size]
    total = np.clip(total, 0.0, None)
    total /= total.sum()
    half = (size - 1) // 2
    mags = np.abs(np.arange(-half, half + 1))
    order = np.argsort(mags, kind="stable")
    cdf = np.cumsum(total[order])
    idx = int(np.searchsorted(cdf, 1.0 - alpha))
    return float(mags[order][min(idx, mags.size - 1)]) * mech.granularity


def clamp(values: FloatArray, low: float, high: float) -> FloatArray:
    return np.minimum(np.maximum(values, low), high)
