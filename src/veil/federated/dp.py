"""Differential privacy for federated training: client-level DP-FedAvg and record-level DP-SGD.

**Noise on a sum of clipped vectors** (:class:`NoisySum`). Both kinds of DP add Gaussian noise
to a sum of vectors each clipped to L2 norm ``C``. The noise is never drawn in floating point:
the sum is rounded to a grid of spacing ``g`` (a power of two), the integer grid indices get
exact discrete Gaussian noise from :func:`veil.privacy.discrete_gaussian` driven by the caller's
:class:`~veil.privacy.RandomSource` (secure by default), and the result is scaled back. Rounding
the sum moves each of its ``d`` coordinates by at most 1/2, and removing one vector changes the
rounded sum by at most ``C/g + √d`` in L2 (grid units), so the noise's standard deviation
parameter is ``z · (C/g + √d)`` grid steps, where ``z`` is the noise multiplier. ``g`` is chosen
so that ``√d`` is at most 1/1024 of ``C/g``: the widening costs at most 0.1% more noise.

The spend is accounted as the sampled *continuous* Gaussian mechanism with multiplier ``z``
(``PoissonSampledEvent(q, GaussianEvent(z))``), whose subsampled privacy curves dp-accounting
computes. For ``σ`` of thousands of grid steps the discrete Gaussian's privacy loss equals the
continuous one's up to terms of order ``exp(-2π²σ²)`` (Canonne, Kamath and Steinke 2020, §4),
which are far below any delta in use.

**Client-level DP-FedAvg** (McMahan et al., ICLR 2018; :class:`DpAggregator`). Each client
clips its update to ``C``; the server sums the updates, adds noise of ``z·C``, and divides by
the *expected* number of clients ``q·N`` (a public constant, so the division is
post-processing). With Poisson sampling of clients at rate ``q`` each round is
``PoissonSampledEvent(q, GaussianEvent(z))`` in the ledger, before the round starts.

**Adaptive clipping** (Andrew et al., NeurIPS 2021; :class:`AdaptiveClipping`). Each client
also reports whether its update was within ``C``; the server releases the count of such
clients with discrete Gaussian noise ``σ_b`` and moves ``C`` geometrically toward the target
quantile ``γ``: ``C ← C · exp(-η (b̃ - γ))``. The two releases together are one Gaussian
mechanism: with the update sum noised at ``z_Δ = (z⁻² - (2σ_b)⁻²)^(-1/2)``, the pair (sum,
centred count) scaled coordinate-wise by its noise has sensitivity ``√(z_Δ⁻² + (2σ_b)⁻²) = 1/z``,
so the round still costs ``PoissonSampledEvent(q, GaussianEvent(z))``: the quantile is paid for,
not free.

**Record-level DP-SGD** (Abadi et al. 2016; :class:`DpSgd`). Inside a client, each step takes a
Poisson sample of records at rate ``q = B/n``, clips each per-sample gradient to ``C``, sums,
adds noise of ``z·C`` and divides by the fixed public batch size ``B``. A client's whole local
training is ``SelfComposedEvent(PoissonSampledEvent(q, GaussianEvent(z)), steps)``, charged to
that party's scope in the ledger before it trains.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError
from veil.federated.messages import CohortResult, TrainConfig, TrainResult
from veil.federated.strategies import Aggregator, RoundContext, SummedUpdates, stack_updates
from veil.privacy.events import Event, GaussianEvent, PoissonSampledEvent, SelfComposedEvent
from veil.privacy.random import RandomSource
from veil.privacy.samplers import discrete_gaussian

__all__ = ["AdaptiveClipping", "DpAggregator", "DpSgd", "NoisySum", "PreparedNoise"]

Vector = npt.NDArray[np.float64]

# Per thread, the integers of a draw into a float64 buffer (NoisySum.draw).
_scratch = threading.local()

# The discrete Gaussian sampler takes sigma below 2**26 grid steps; stay inside.
_MAX_GRID_SIGMA = 2.0**24
_GRID_STEPS = 1024


def _check_positive(name: str, value: object) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def clip_rows(rows: Vector, clip_norm: float) -> tuple[Vector, npt.NDArray[np.bool_]]:
    """Scale each row of ``rows`` to L2 norm at most ``clip_norm``; also say which rows were
    already within it."""
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    within = norms <= clip_norm
    factors = np.minimum(1.0, clip_norm / np.maximum(norms, 1e-300))
    return rows * factors[:, None], within


class NoisySum:
    """Adds discrete Gaussian noise of ``noise_multiplier · clip_norm`` to a sum of ``dimension``
    coordinates, on a power-of-two grid (see the module docstring).

    ``noise_multiplier = 0`` gives the exact sum rounded to the grid (a non-private control
    used by tests and the ``--dp none`` path never calls it).
    """

    def __init__(self, *, clip_norm: float, noise_multiplier: float, dimension: int) -> None:
        self.clip_norm = _check_positive("clip_norm", clip_norm)
        if not isinstance(noise_multiplier, int | float) or not (
            math.isfinite(noise_multiplier) and noise_multiplier >= 0
        ):
            raise ConfigurationError(
                f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}"
            )
        if not isinstance(dimension, int) or dimension < 1:
            raise ConfigurationError(f"dimension must be an integer >= 1, got {dimension!r}")
        self.noise_multiplier = float(noise_multiplier)
        self.dimension = dimension
        root_d = math.sqrt(dimension)
        g = 2.0 ** math.floor(math.log2(self.clip_norm / (_GRID_STEPS * root_d)))
        while self.noise_multiplier * (self.clip_norm / g + root_d) > _MAX_GRID_SIGMA:
            g *= 2.0
        self.granularity = g
        self.grid_sensitivity = self.clip_norm / g + root_d
        self.grid_sigma = self.noise_multiplier * self.grid_sensitivity

    @property
    def sigma(self) -> float:
        """The noise's standard deviation parameter in data units."""
        return self.grid_sigma * self.granularity

    def draw(
        self, rng: RandomSource, *, out: npt.NDArray[np.int64 | np.float64] | None = None
    ) -> PreparedNoise:
        """The noise of one release, drawn before the sum is known, for :meth:`release`.

        The noise does not depend on the sum, so :func:`~veil.federated.train_dpsgd` draws it
        on a second thread while the step's gradients are computed. What comes back can be
        used once, and only by this object's :meth:`release` (which refuses anything else).
        ``out``, a writeable contiguous array of ``dimension`` int64 or float64 values, receives
        the grid steps (float64 holds them exactly: they are below 2**31). float64 saves the
        release a conversion, and so :meth:`release` time on the thread that waits for it.
        """
        steps: npt.NDArray[np.int64 | np.float64]
        if out is None or out.dtype == np.int64:
            steps = self._draw_steps(rng, cast("npt.NDArray[np.int64] | None", out))
        else:
            if not _is_buffer(out, np.float64, self.dimension):
                raise ConfigurationError(
                    f"out must be a writeable contiguous int64 or float64 array of shape "
                    f"({self.dimension},)"
                )
            # drawn as integers into this thread's scratch, then converted
            scratch: npt.NDArray[np.int64] | None = getattr(_scratch, "steps", None)
            if scratch is None or scratch.shape != (self.dimension,):
                scratch = np.empty(self.dimension, dtype=np.int64)
                _scratch.steps = scratch
            np.copyto(out, self._draw_steps(rng, scratch), casting="safe")
            steps = out
        return PreparedNoise(self, steps)

    def _draw_steps(
        self, rng: RandomSource, out: npt.NDArray[np.int64] | None
    ) -> npt.NDArray[np.int64]:
        if self.grid_sigma > 0:
            return discrete_gaussian(rng, self.dimension, sigma=self.grid_sigma, out=out)
        if out is None:
            return np.zeros(self.dimension, dtype=np.int64)
        out.fill(0)
        return out

    def release(
        self,
        total: Vector,
        rng: RandomSource,
        *,
        noise: PreparedNoise | None = None,
        out: Vector | None = None,
    ) -> Vector:
        """``total`` (a sum of clipped vectors) with the noise added: ``noise`` if given (from
        :meth:`draw` on this object, not used before), else a fresh draw from ``rng``.

        ``out``, a writeable contiguous float64 array of ``dimension`` values (``total`` itself
        is allowed), receives the result and is returned; otherwise the result is a new array.
        """
        flat = np.asarray(total, dtype=np.float64).reshape(-1)
        if flat.size != self.dimension:
            raise ConfigurationError(f"expected {self.dimension} coordinates, got {flat.size}")
        if out is not None and not _is_buffer(out, np.float64, self.dimension):
            raise ConfigurationError(
                f"out must be a writeable contiguous float64 array of shape ({self.dimension},)"
            )
        if noise is None:
            noise = self.draw(rng)
        steps, bounded = noise.spend(self)
        # g is a power of two: multiplying by 1/g is exactly dividing by g, and by g exactly
        # undoes it. The grid indices and the noise are integers; while they stay below 2**52
        # (the noise is below 2**31, see discrete_gaussian) float64 adds them exactly, in place,
        # so no array is allocated (each fresh array of a large model costs page faults).
        scaled = np.multiply(flat, 1.0 / self.granularity, out=out)
        np.rint(scaled, out=scaled)
        if bounded and _within(scaled, 2.0**52):
            np.add(scaled, steps, out=scaled)
        else:  # beyond float64's integers: the same sum in int64
            index = scaled.astype(np.int64)
            index += steps.astype(np.int64, copy=False)
            scaled[:] = index
        scaled *= self.granularity
        return scaled


class PreparedNoise:
    """Noise for one :meth:`NoisySum.release`, from :meth:`NoisySum.draw`: used once, by the
    :class:`NoisySum` that drew it. (Reusing noise on two sums would release their difference
    exactly; noise of another ``NoisySum`` may be weaker.)"""

    __slots__ = ("_bounded", "_owner", "_spent", "_steps")

    def __init__(self, owner: NoisySum, steps: npt.NDArray[np.int64 | np.float64]) -> None:
        self._owner = owner
        self._steps = steps
        # checked here, on the thread that draws, rather than in the release that waits for it
        self._bounded = _within(steps, 2.0**52)
        self._spent = False

    def spend(self, owner: NoisySum) -> tuple[npt.NDArray[np.int64 | np.float64], bool]:
        """The grid steps, once, for ``owner`` (refused for another object or a second use),
        and whether they all lie strictly within ±2**52."""
        if owner is not self._owner:
            raise ConfigurationError("this noise was drawn by another NoisySum")
        if self._spent:
            raise ConfigurationError("this noise was already used by a release")
        self._spent = True
        return self._steps, self._bounded


def _is_buffer(out: object, dtype: type[np.generic], size: int) -> bool:
    """Whether ``out`` is a writeable contiguous array of ``size`` values of ``dtype``."""
    return (
        isinstance(out, np.ndarray)
        and out.dtype == dtype
        and out.shape == (size,)
        and out.flags.c_contiguous
        and out.flags.writeable
    )


def _within(values: npt.NDArray[Any], bound: float) -> bool:
    """Whether every value lies strictly between -bound and bound (two reductions, no copy)."""
    return not values.size or (-bound < values.min() and values.max() < bound)


@dataclasses.dataclass(frozen=True)
class AdaptiveClipping:
    """Andrew et al. (2021): track the ``target_quantile`` of the update norms privately.

    ``count_noise`` is ``σ_b``, the noise on the count of clients within the clip norm; by
    default ``expected_clients / 20`` as in the paper. It must exceed ``noise_multiplier / 2``.
    """

    initial_clip_norm: float = 0.1
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise: float | None = None

    def __post_init__(self) -> None:
        _check_positive("initial_clip_norm", self.initial_clip_norm)
        _check_positive("learning_rate", self.learning_rate)
        if not 0 < self.target_quantile < 1:
            raise ConfigurationError(
                f"target_quantile must be in (0, 1), got {self.target_quantile!r}"
            )
        if self.count_noise is not None:
            _check_positive("count_noise", self.count_noise)


class DpAggregator(Aggregator):
    """Client-level DP-FedAvg: clipped updates, Gaussian noise on the sum, divided by the
    expected number of clients (see the module docstring).

    Give a fixed ``clip_norm`` or ``adaptive=AdaptiveClipping(...)``.
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        clip_norm: float | None = None,
        adaptive: AdaptiveClipping | None = None,
    ) -> None:
        self.noise_multiplier = _check_positive("noise_multiplier", noise_multiplier)
        if (clip_norm is None) == (adaptive is None):
            raise ConfigurationError("give exactly one of clip_norm= or adaptive=")
        self.adaptive = adaptive
        self.clip_norm = _check_positive(
            "clip_norm",
            clip_norm if clip_norm is not None else adaptive.initial_clip_norm,  # type: ignore[union-attr]
        )
        self._initial_clip = self.clip_norm
        self.clip_history: list[float] = [self.clip_norm]

    def reset(self) -> None:
        self.clip_norm = self._initial_clip
        self.clip_history = [self.clip_norm]

    def state(self) -> dict[str, Any]:
        return {"clip_norm": self.clip_norm, "clip_history": list(self.clip_history)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.clip_norm = float(state["clip_norm"])
        self.clip_history = [float(c) for c in state["clip_history"]]

    def check(self, *, population: int, sampling_probability: float) -> None:
        if sampling_probability <= 0:
            raise ConfigurationError("client-level DP needs a sampling probability > 0")
        self.update_noise_multiplier(sampling_probability * population)

    def configure(self, config: TrainConfig) -> TrainConfig:
        return dataclasses.replace(config, clip_norm=self.clip_norm)

    def round_event(self, *, sampling_probability: float) -> Event:
        return PoissonSampledEvent(sampling_probability, GaussianEvent(self.noise_multiplier))

    def _count_noise(self, expected: float) -> float:
        assert self.adaptive is not None
        sigma_b = self.adaptive.count_noise or expected / 20.0
        if 2.0 * sigma_b <= self.noise_multiplier:
            raise ConfigurationError(
                f"adaptive clipping needs count_noise > noise_multiplier / 2 "
                f"(= {self.noise_multiplier / 2:g}), got {sigma_b:g}; "
                "sample more clients per round or raise count_noise"
            )
        return sigma_b

    def update_noise_multiplier(self, expected: float) -> float:
        """The multiplier actually applied to the update sum (``z_Δ`` with adaptive clipping)."""
        if self.adaptive is None:
            return self.noise_multiplier
        sigma_b = self._count_noise(expected)
        return float((self.noise_multiplier**-2 - (2.0 * sigma_b) ** -2) ** -0.5)

    def aggregate(self, results: Sequence[TrainResult], context: RoundContext) -> Vector:
        expected = context.sampling_probability * context.population
        if expected <= 0:
            raise ConfigurationError("client-level DP needs a sampling probability > 0")
        total = np.zeros(context.dimension)
        if results:
            stacked = stack_updates(results)
            # Clients clip; clipping again here makes the bound hold whatever a client sent.
            clipped, _ = clip_rows(stacked, self.clip_norm)
            total = clipped.sum(axis=0)
        noise = NoisySum(
            clip_norm=self.clip_norm,
            noise_multiplier=self.update_noise_multiplier(expected),
            dimension=context.dimension,
        )
        return noise.release(total, context.rng) / expected

    summable = True
    client_dp = True

    def from_sum(self, summed: SummedUpdates, context: RoundContext) -> Vector:
        """The secure sum of the clipped updates, noised here unless the clients already added
        distributed noise, divided by the expected number of clients."""
        expected = context.sampling_probability * context.population
        if expected <= 0:
            raise ConfigurationError("client-level DP needs a sampling probability > 0")
        if summed.noised:
            return np.asarray(summed.update / expected)
        noise = NoisySum(
            clip_norm=self.clip_norm,
            noise_multiplier=self.update_noise_multiplier(expected),
            dimension=context.dimension,
        )
        return noise.release(summed.update, context.rng) / expected

    def after_round(self, results: Sequence[TrainResult], context: RoundContext) -> None:
        if self.adaptive is None:
            return
        # centred bits 2b - 1 in {-1, +1}: an integer sum of sensitivity 1, noise 2σ_b
        if isinstance(results, CohortResult):
            bits = results.metrics.get("within_clip", np.zeros(len(results)))
            within = int(np.count_nonzero(bits >= 0.5))
            centred = 2 * within - len(results)
        else:
            centred = sum(2 * int(r.metrics.get("within_clip", 0.0) >= 0.5) - 1 for r in results)
        self._move_clip(centred, context)

    def after_round_sum(self, summed: SummedUpdates, context: RoundContext) -> None:
        if self.adaptive is None:
            return
        within = round(summed.metrics.get("within_clip", 0.0))
        self._move_clip(2 * within - len(summed.contributors), context)

    def _move_clip(self, centred: int, context: RoundContext) -> None:
        assert self.adaptive is not None
        expected = context.sampling_probability * context.population
        sigma_b = self._count_noise(expected)
        noisy = centred + int(discrete_gaussian(context.rng, 1, sigma=2.0 * sigma_b)[0])
        # b̃ = Σ(b - 1/2)/E + 1/2 with E the expected count: the number of clients that
        # reported is not released (with Poisson sampling it would say who took part)
        fraction = noisy / 2.0 / expected + 0.5
        step = self.adaptive.learning_rate * (fraction - self.adaptive.target_quantile)
        self.clip_norm *= math.exp(-step)
        self.clip_history.append(self.clip_norm)

    def describe(self) -> str:
        mode = "adaptive" if self.adaptive else f"C={self.clip_norm:g}"
        return f"DP-FedAvg(z={self.noise_multiplier:g}, {mode})"


@dataclasses.dataclass(frozen=True)
class DpSgd:
    """Record-level DP-SGD inside each client (see the module docstring).

    ``batch_size`` is the expected (public) batch size ``B``; each step samples every record
    with probability ``B / n``. ``noise_multiplier`` is ``z``.
    """

    noise_multiplier: float
    clip_norm: float = 1.0
    batch_size: int = 64

    def __post_init__(self) -> None:
        _check_positive("noise_multiplier", self.noise_multiplier)
        _check_positive("clip_norm", self.clip_norm)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigurationError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")

    def sampling_probability(self, records: int) -> float:
        return min(1.0, self.batch_size / max(records, 1))

    def steps(self, records: int, epochs: int) -> int:
        return max(1, math.ceil(epochs * records / self.batch_size))

    def event(self, records: int, epochs: int) -> Event:
        """The cost of one client's local training of ``epochs`` epochs on ``records`` records."""
        return SelfComposedEvent(
            PoissonSampledEvent(
                self.sampling_probability(records), GaussianEvent(self.noise_multiplier)
            ),
            self.steps(records, epochs),
        )
