"""How the server turns the clients' updates into the next global model.

A :class:`Strategy` is two parts:

* an :class:`Aggregator` combines the round's updates ``Δ_k = w_k - w`` into one update:
  the mean weighted by examples (FedAvg), the coordinate-wise median, the trimmed mean, Krum,
  or the clipped and noised sum of client-level DP (:class:`veil.federated.dp.DpAggregator`);
* a :class:`ServerOptimizer` moves the model along it: plain ``w + η Δ`` (η = 1 is FedAvg), or
  the adaptive optimisers of Reddi et al. (ICLR 2021), FedAdagrad, FedAdam and FedYogi, which
  treat ``-Δ`` as a pseudo-gradient.

FedProx (Li et al., MLSys 2020) is FedAvg whose clients add ``mu/2 ||w - w_global||²`` to their
loss; :func:`fedprox` sets ``proximal_mu`` in the clients' :class:`TrainConfig`.

Robust aggregators bound the influence of a poisoned client: the median and trimmed mean
(Yin et al., ICML 2018) coordinate by coordinate, Krum (Blanchard et al., NeurIPS 2017) by
choosing the update closest to its ``n - f - 2`` nearest neighbours. They ignore the example
counts, as in those papers.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError, ProtocolError
from veil.federated.messages import CohortResult, TrainConfig, TrainResult
from veil.privacy.events import Event
from veil.privacy.random import RandomSource

__all__ = [
    "Adagrad",
    "Adam",
    "Aggregator",
    "CoordinateMedian",
    "Krum",
    "RoundContext",
    "ServerOptimizer",
    "Sgd",
    "Strategy",
    "SummedUpdates",
    "TrimmedMean",
    "WeightedMean",
    "Yogi",
    "fedadagrad",
    "fedadam",
    "fedavg",
    "fedprox",
    "fedyogi",
]

Vector = npt.NDArray[np.float64]


@dataclasses.dataclass(frozen=True)
class RoundContext:
    """What an aggregator may know about the round besides the updates."""

    round: int
    dimension: int
    population: int
    """Clients that could have been sampled."""
    sampled: int
    """Clients sampled this round (some may have dropped out)."""
    sampling_probability: float
    rng: RandomSource


@dataclasses.dataclass(frozen=True)
class SummedUpdates:
    """All the server learns of a round under secure aggregation: sums over the clients that
    completed it, each client's update and metrics multiplied by its weight."""

    update: Vector
    """``Σ_k w_k Δ_k``."""
    weight: float
    """``Σ_k w_k``."""
    metrics: Mapping[str, float]
    """``Σ_k w_k m_k`` for each metric summed."""
    contributors: tuple[str, ...]
    """The clients whose inputs the sums hold (the server talked to them: not a secret)."""
    noised: bool = False
    """The clients already added distributed DP noise to ``update``."""


def stack_updates(results: Sequence[TrainResult]) -> Vector:
    """The updates as the rows of one float64 matrix (a cohort's matrix as it is)."""
    if isinstance(results, CohortResult):
        return np.asarray(results.updates, dtype=np.float64)
    return np.stack([np.asarray(r.update, dtype=np.float64) for r in results])


def _examples(results: Sequence[TrainResult]) -> Vector:
    """Each client's example count, as float64."""
    if isinstance(results, CohortResult):
        return results.num_examples.astype(np.float64)
    return np.array([r.num_examples for r in results], dtype=np.float64)


class Aggregator(abc.ABC):
    """Combines one round's updates into one update vector."""

    @abc.abstractmethod
    def aggregate(self, results: Sequence[TrainResult], context: RoundContext) -> Vector:
        """The combined update. ``results`` is empty only for a private aggregator (which
        still releases its noise when nobody answered)."""

    def configure(self, config: TrainConfig) -> TrainConfig:
        """The clients' training configuration for the next round (DP sets the clip norm)."""
        return config

    summable: bool = False
    """Whether it needs only a weighted sum of the updates (so it works under secure
    aggregation, where the server never sees one client's update)."""

    client_dp: bool = False
    """Whether it is client-level DP (clipped updates, noise on the sum)."""

    def from_sum(self, summed: SummedUpdates, context: RoundContext) -> Vector:
        """The combined update from the secure sums (for a summable aggregator)."""
        raise ConfigurationError(
            f"{self.describe()} needs every client's update; secure aggregation shows the "
            "server only their sum"
        )

    def after_round_sum(self, summed: SummedUpdates, context: RoundContext) -> None:  # noqa: B027
        """:meth:`after_round` from the secure sums."""

    def round_event(self, *, sampling_probability: float) -> Event | None:
        """The privacy cost of one round, known before it starts (None: not private)."""
        return None

    def after_round(self, results: Sequence[TrainResult], context: RoundContext) -> None:  # noqa: B027
        """Update internal state after a round (adaptive clipping)."""

    @property
    def min_results(self) -> int:
        """The fewest updates it can combine; a round with fewer leaves the model as it is."""
        return 1

    def check(self, *, population: int, sampling_probability: float) -> None:  # noqa: B027
        """Refuse, before anything is spent or trained, settings that cannot work for this
        federation (raise :class:`~veil.errors.ConfigurationError`)."""

    def reset(self) -> None:  # noqa: B027
        """Forget what earlier runs taught it (a new server starts from the initial state)."""

    def state(self) -> dict[str, Any]:
        """What a checkpoint must keep to resume."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:  # noqa: B027
        """Take back what :meth:`state` returned (a coordinator resuming from a checkpoint)."""

    def describe(self) -> str:
        return type(self).__name__


class WeightedMean(Aggregator):
    """FedAvg: the mean of the updates weighted by the clients' example counts."""

    summable = True

    def from_sum(self, summed: SummedUpdates, context: RoundContext) -> Vector:
        if summed.weight <= 0:
            return np.zeros(context.dimension)
        return np.asarray(summed.update / summed.weight)

    def aggregate(self, results: Sequence[TrainResult], context: RoundContext) -> Vector:
        weights = _examples(results)
        total = weights.sum()
        if total <= 0:
            weights = np.ones_like(weights)
            total = weights.sum()
        return np.asarray((weights / total) @ stack_updates(results))


class CoordinateMedian(Aggregator):
    """The coordinate-wise median of the updates."""

    def aggregate(self, results: Sequence[TrainResult], context: RoundContext) -> Vector:
        return np.asarray(np.median(stack_updates(results), axis=0))


class TrimmedMean(Aggregator):
    """The coordinate-wise mean after dropping the ``trim_fraction`` largest and smallest values."""

    def __init__(self, *, trim_fraction: float = 0.1) -> None:
        if not isinstance(trim_fraction, int | float) or not 0 <= trim_fraction < 0.5:
            raise ConfigurationError(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
        self.trim_fraction = float(trim_fraction)

    def aggregate(self, results: Sequence[TrainResult], context: RoundContext) -> Vector:
        stacked = np.sort(stack_updates(results), axis=0)
        k = math.floor(self.trim_fraction * stacked.shape[0])
        kept = stacked[k : stacked.shape[0] - k]
        return np.asarray(kept.mean(axis=0))

    def describe(self) -> str:
        return f"TrimmedMean({self.trim_fraction:g})"


class Krum(Aggregator):
    """(Multi-)Krum: average the ``multi`` updates with the smallest sum of squared distances to
    their ``n - byzantine - 2`` nearest neighbours."""

    def __init__(self, *, byzantine: int = 1, multi: int = 1) -> None:
        if not isinstance(byzantine, int) or byzantine < 0:
            raise ConfigurationError(f"byzantine must be an integer >= 0, got {byzantine!r}")
        if not isinstance(multi, int) or multi < 1:
            raise ConfigurationError(f"multi must be an integer >= 1, got {multi!r}")
        self.byzantine = byzantine
        self.multi = multi

    @property
    def min_results(self) -> int:
        return self.byzantine + 3

    def aggregate(self, results: Sequence[TrainResult], context: RoundContext) -> Vector:
        stacked = stack_updates(results)
        n = stacked.shape[0]
        neighbours = n - self.byzantine - 2
        if neighbours < 1:
            raise ProtocolError(
                f"Krum with {self.byzantine} Byzantine clients needs at least "
                f"{self.byzantine + 3} updates, got {n}"
            )
        sq = np.einsum("ij,ij->i", stacked, stacked)
        dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * stacked @ stacked.T, 0.0)
        np.fill_diagonal(dist, np.inf)
        scores = np.sort(dist, axis=1)[:, :neighbours].sum(axis=1)
        chosen = np.argsort(scores, kind="stable")[: min(self.multi, n)]
        return np.asarray(stacked[chosen].mean(axis=0))

    def describe(self) -> str:
        return f"Krum(f={self.byzantine}, m={self.multi})"


# --------------------------------------------------------------------------------------------
# Server optimisers
# --------------------------------------------------------------------------------------------


class ServerOptimizer(abc.ABC):
    """Moves the global model along the aggregated update."""

    @abc.abstractmethod
    def step(self, parameters: Vector, update: Vector) -> Vector:
        """The next global model."""

    def state(self) -> dict[str, Any]:
        """What a checkpoint must keep to resume (moment estimates)."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:  # noqa: B027
        """Take back what :meth:`state` returned (a coordinator resuming from a checkpoint)."""

    def reset(self) -> None:  # noqa: B027
        """Forget the moments of an earlier run."""

    def describe(self) -> str:
        return type(self).__name__


class Sgd(ServerOptimizer):
    """``w + learning_rate · Δ``; ``learning_rate = 1`` is FedAvg."""

    def __init__(self, *, learning_rate: float = 1.0) -> None:
        if not isinstance(learning_rate, int | float) or not learning_rate > 0:
            raise ConfigurationError(f"learning_rate must be > 0, got {learning_rate!r}")
        self.learning_rate = float(learning_rate)

    def step(self, parameters: Vector, update: Vector) -> Vector:
        if self.learning_rate == 1.0:
            return parameters + update
        return parameters + self.learning_rate * update


class _Adaptive(ServerOptimizer):
    """Reddi et al. (2021), Algorithm 2: ``m ← β₁m + (1-β₁)Δ``, ``v`` updated per variant,
    ``w ← w + η m / (√v + τ)``, with ``v₀ = τ²``."""

    def __init__(
        self,
        *,
        learning_rate: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        for name, value in (("learning_rate", learning_rate), ("tau", tau)):
            if not isinstance(value, int | float) or not value > 0:
                raise ConfigurationError(f"{name} must be > 0, got {value!r}")
        for name, value in (("beta1", beta1), ("beta2", beta2)):
            if not isinstance(value, int | float) or not 0 <= value < 1:
                raise ConfigurationError(f"{name} must be in [0, 1), got {value!r}")
        self.learning_rate = float(learning_rate)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.tau = float(tau)
        self._m: Vector | None = None
        self._v: Vector | None = None

    @abc.abstractmethod
    def _second_moment(self, v: Vector, sq: Vector) -> Vector: ...

    def step(self, parameters: Vector, update: Vector) -> Vector:
        if self._m is None or self._v is None:
            self._m = np.zeros_like(update)
            self._v = np.full_like(update, self.tau**2)
        self._m = self.beta1 * self._m + (1.0 - self.beta1) * update
        self._v = self._second_moment(self._v, update * update)
        return parameters + self.learning_rate * self._m / (np.sqrt(self._v) + self.tau)

    def state(self) -> dict[str, Any]:
        return {"m": self._m, "v": self._v}

    def load_state(self, state: Mapping[str, Any]) -> None:
        m, v = state.get("m"), state.get("v")
        self._m = None if m is None else np.array(m, dtype=np.float64)
        self._v = None if v is None else np.array(v, dtype=np.float64)

    def reset(self) -> None:
        self._m = None
        self._v = None

    def describe(self) -> str:
        return f"{type(self).__name__}(η={self.learning_rate:g}, τ={self.tau:g})"


class Adagrad(_Adaptive):
    """FedAdagrad: ``v ← v + Δ²``."""

    def _second_moment(self, v: Vector, sq: Vector) -> Vector:
        return v + sq


class Adam(_Adaptive):
    """FedAdam: ``v ← β₂v + (1-β₂)Δ²``."""

    def _second_moment(self, v: Vector, sq: Vector) -> Vector:
        return self.beta2 * v + (1.0 - self.beta2) * sq


class Yogi(_Adaptive):
    """FedYogi: ``v ← v - (1-β₂) Δ² sign(v - Δ²)``."""

    def _second_moment(self, v: Vector, sq: Vector) -> Vector:
        return v - (1.0 - self.beta2) * sq * np.sign(v - sq)


@dataclasses.dataclass
class Strategy:
    """An aggregator, a server optimiser, and what the clients add to their local loss."""

    aggregator: Aggregator
    optimizer: ServerOptimizer
    proximal_mu: float = 0.0
    name: str = ""

    def configure(self, config: TrainConfig) -> TrainConfig:
        if self.proximal_mu:
            config = dataclasses.replace(config, proximal_mu=self.proximal_mu)
        return self.aggregator.configure(config)

    def describe(self) -> str:
        label = self.name or "Strategy"
        return f"{label}({self.aggregator.describe()}, {self.optimizer.describe()})"


def fedavg(aggregator: Aggregator | None = None) -> Strategy:
    """FedAvg (McMahan et al. 2017): the example-weighted mean, applied with step 1."""
    return Strategy(aggregator or WeightedMean(), Sgd(), name="FedAvg")


def fedprox(*, mu: float = 0.01, aggregator: Aggregator | None = None) -> Strategy:
    """FedProx: FedAvg whose clients add ``mu/2 ||w - w_global||²`` to their loss."""
    if not isinstance(mu, int | float) or not mu > 0:
        raise ConfigurationError(f"mu must be > 0, got {mu!r}")
    return Strategy(aggregator or WeightedMean(), Sgd(), proximal_mu=float(mu), name="FedProx")


def fedadam(*, learning_rate: float = 0.01, aggregator: Aggregator | None = None) -> Strategy:
    """FedAdam (Reddi et al. 2021)."""
    return Strategy(aggregator or WeightedMean(), Adam(learning_rate=learning_rate), name="FedAdam")


def fedyogi(*, learning_rate: float = 0.01, aggregator: Aggregator | None = None) -> Strategy:
    """FedYogi (Reddi et al. 2021)."""
    return Strategy(aggregator or WeightedMean(), Yogi(learning_rate=learning_rate), name="FedYogi")


def fedadagrad(*, learning_rate: float = 0.01, aggregator: Aggregator | None = None) -> Strategy:
    """FedAdagrad (Reddi et al. 2021)."""
    return Strategy(
        aggregator or WeightedMean(), Adagrad(learning_rate=learning_rate), name="FedAdagrad"
    )
