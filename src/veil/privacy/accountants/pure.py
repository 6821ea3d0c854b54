"""Basic composition of pure-DP events: epsilons add up."""

from __future__ import annotations

import math

from veil.privacy.accountants.base import (
    CostAccountant,
    NeighboringRelation,
    Unsupported,
    check_delta,
    check_epsilon,
    replace_one_view,
)
from veil.privacy.events import (
    ApproxDpEvent,
    ComposedEvent,
    DiscreteLaplaceEvent,
    Event,
    ExponentialMechanismEvent,
    LaplaceEvent,
    NonPrivateEvent,
    NoOpEvent,
    PoissonSampledEvent,
    PureDpEvent,
    SampledWithoutReplacementEvent,
    SelfComposedEvent,
)

__all__ = ["PureDpAccountant", "pure_epsilon"]


def _amplified(epsilon: float, fraction: float) -> float:
    """``log(1 + fraction * (e^epsilon - 1))``: privacy amplification by subsampling."""
    if fraction == 0:
        return 0.0
    if math.isinf(epsilon):
        return math.inf if fraction > 0 else 0.0
    return math.log1p(fraction * math.expm1(epsilon))


def pure_epsilon(
    event: Event,
    *,
    neighboring_relation: NeighboringRelation = NeighboringRelation.ADD_OR_REMOVE_ONE,
) -> float:
    """The pure-DP epsilon of one release of ``event``; raises :class:`Unsupported` if it has none.

    Subsampling amplifies (Balle, Barthe, Gaboardi 2018): a Poisson sample with probability ``q``
    under add/remove neighbours gives ``log(1 + q (e^ε - 1))``; a sample of ``m`` out of ``n``
    without replacement under replace-one neighbours gives ``log(1 + (m/n) (e^ε - 1))``, with ε
    the base release's epsilon under replace-one.
    """
    if neighboring_relation is NeighboringRelation.REPLACE_ONE:
        event = replace_one_view(event)
    return _pure_epsilon(event, neighboring_relation)


def _pure_epsilon(event: Event, neighboring_relation: NeighboringRelation) -> float:
    """:func:`pure_epsilon` of an event already in the relation's view."""
    if isinstance(event, NoOpEvent):
        return 0.0
    if isinstance(event, NonPrivateEvent):
        return math.inf
    if isinstance(event, LaplaceEvent):
        return 1.0 / event.noise_multiplier
    if isinstance(event, DiscreteLaplaceEvent):
        return event.epsilon
    if isinstance(event, ExponentialMechanismEvent | PureDpEvent):
        return event.epsilon
    if isinstance(event, ApproxDpEvent):
        if event.delta > 0:
            raise Unsupported("an (epsilon, delta) event with delta > 0 is not pure DP")
        return event.epsilon
    if isinstance(event, SelfComposedEvent):
        if event.count == 0:
            return 0.0
        return event.count * _pure_epsilon(event.event, neighboring_relation)
    if isinstance(event, ComposedEvent):
        return sum(_pure_epsilon(e, neighboring_relation) for e in event.events)
    if isinstance(event, PoissonSampledEvent):
        if neighboring_relation is not NeighboringRelation.ADD_OR_REMOVE_ONE:
            raise Unsupported("Poisson amplification is proven here for add/remove neighbours only")
        inner = _pure_epsilon(event.event, neighboring_relation)
        return _amplified(inner, event.sampling_probability)
    if isinstance(event, SampledWithoutReplacementEvent):
        if neighboring_relation is not NeighboringRelation.REPLACE_ONE:
            raise Unsupported(
                "amplification by sampling without replacement needs replace-one neighbours"
            )
        inner = _pure_epsilon(event.event, neighboring_relation)
        return _amplified(inner, event.sample_size / event.source_dataset_size)
    raise Unsupported(f"{event.describe()} has no pure-DP guarantee")


class PureDpAccountant(CostAccountant):
    """Adds up the epsilons of pure-DP events (basic composition).

    The total ``ε₀`` gives, for every ``ε < ε₀``, ``δ(ε) = (e^ε₀ - e^ε) / (1 + e^ε₀)``: any
    ``ε₀``-DP mechanism is dominated by randomised response with parameter ``ε₀`` (Kairouz, Oh,
    Viswanath 2015). Exact for one release; for many small releases the PLD accountant is tighter.
    """

    name = "pure-DP"

    def __init__(
        self,
        *,
        neighboring_relation: NeighboringRelation = NeighboringRelation.ADD_OR_REMOVE_ONE,
        total_epsilon: float = 0.0,
    ) -> None:
        super().__init__(neighboring_relation=neighboring_relation)
        self._total = float(total_epsilon)

    @property
    def total_epsilon(self) -> float:
        """The sum of the epsilons composed so far."""
        return self._total

    def _cost(self, event: Event, count: int) -> float:
        return count * _pure_epsilon(event, self._relation)

    def _add(self, cost: float) -> None:
        self._total += cost

    def epsilon(self, delta: float) -> float:
        check_delta(delta)
        return self._total

    def delta(self, epsilon: float) -> float:
        eps = check_epsilon(epsilon)
        if eps >= self._total:
            return 0.0
        if math.isinf(self._total):
            return 1.0
        # (e^ε₀ - e^ε) / (1 + e^ε₀), computed without overflow
        return -math.expm1(eps - self._total) / (1.0 + math.exp(-self._total))
