"""The interface every accountant implements, and the neighbouring relations they understand."""

from __future__ import annotations

import abc
import enum
import math
from typing import Any, Self

from veil.errors import ConfigurationError, UnsupportedEventError
from veil.privacy.events import (
    ApproxDpEvent,
    ComposedEvent,
    DiscreteGaussianEvent,
    DiscreteLaplaceEvent,
    Event,
    ExponentialMechanismEvent,
    GaussianEvent,
    LaplaceEvent,
    NoOpEvent,
    PureDpEvent,
    SampledWithoutReplacementEvent,
    SelfComposedEvent,
    ZCdpEvent,
)

__all__ = [
    "Accountant",
    "CostAccountant",
    "NeighboringRelation",
    "Unsupported",
    "replace_one_view",
]


class NeighboringRelation(enum.Enum):
    """Which data sets count as neighbours.

    ``ADD_OR_REMOVE_ONE`` (the default everywhere): one privacy unit is added or removed.
    ``REPLACE_ONE``: one unit's data is replaced by another's (data-set size is public).

    Event parameters are always stated for adding or removing one unit: a sensitivity (or the
    norm that a noise multiplier divides) bounds what one unit's own data contributes, as in
    dp-accounting. Under ``REPLACE_ONE`` a replacement is a removal and an addition, so the
    accountants charge each un-sampled release as if its sensitivity were doubled (see
    :func:`replace_one_view`), and analyse Poisson sampling with the per-unit bound directly.
    """

    ADD_OR_REMOVE_ONE = "add_or_remove_one"
    REPLACE_ONE = "replace_one"


class Unsupported(Exception):  # noqa: N818 - internal signal, never escapes an accountant
    """Raised inside an accountant when an event cannot be composed; carries the reason."""


def replace_one_view(event: Event) -> Event:
    """The event whose add/remove parameters bound ``event`` under replace-one neighbours.

    Replacing a unit is removing it and adding another, so every un-sampled release is charged
    twice its add/remove sensitivity: noise multipliers halve, sensitivities and epsilons double,
    rho quadruples, and (ε, δ) becomes (2ε, (1 + e^ε) δ) (group privacy for two units). Inside
    sampling without replacement, whose analysis takes the base release under replace-one, the
    same applies. Poisson-sampled events are left as they are: their analysis under replace-one
    uses the per-unit bound itself.
    """
    if isinstance(event, GaussianEvent):
        return GaussianEvent(event.noise_multiplier / 2)
    if isinstance(event, LaplaceEvent):
        return LaplaceEvent(event.noise_multiplier / 2)
    if isinstance(event, DiscreteLaplaceEvent):
        return DiscreteLaplaceEvent(event.scale, 2 * event.sensitivity, event.dimension)
    if isinstance(event, DiscreteGaussianEvent):
        return DiscreteGaussianEvent(event.sigma, 2 * event.sensitivity, event.dimension)
    if isinstance(event, ExponentialMechanismEvent):
        return ExponentialMechanismEvent(2 * event.epsilon)
    if isinstance(event, PureDpEvent):
        return PureDpEvent(2 * event.epsilon)
    if isinstance(event, ApproxDpEvent):
        delta = min(event.delta * (1 + math.exp(event.epsilon)), 0.999999)
        return ApproxDpEvent(2 * event.epsilon, delta)
    if isinstance(event, ZCdpEvent):
        return ZCdpEvent(4 * event.rho)
    if isinstance(event, SelfComposedEvent):
        return SelfComposedEvent(replace_one_view(event.event), event.count)
    if isinstance(event, ComposedEvent):
        return ComposedEvent([replace_one_view(e) for e in event.events])
    if isinstance(event, SampledWithoutReplacementEvent):
        return SampledWithoutReplacementEvent(
            event.source_dataset_size, event.sample_size, replace_one_view(event.event)
        )
    return event  # no-op, non-private, Poisson-sampled


def check_delta(delta: float) -> float:
    if not isinstance(delta, int | float) or not 0 <= delta <= 1:
        raise ConfigurationError(f"delta must be a number in [0, 1], got {delta!r}")
    return float(delta)


def check_epsilon(epsilon: float) -> float:
    if not isinstance(epsilon, int | float) or math.isnan(epsilon) or epsilon < 0:
        raise ConfigurationError(f"epsilon must be a number >= 0, got {epsilon!r}")
    return float(epsilon)


class Accountant(abc.ABC):
    """Composes privacy events into an (epsilon, delta) guarantee.

    Every accountant gives an *upper bound* on the privacy loss of everything composed into it;
    they differ in tightness and in which events they understand.

    ``compose(event, count)`` adds ``count`` adaptive repetitions of ``event`` and returns the
    accountant (so calls chain). It is atomic: an event the accountant cannot handle raises
    :class:`~veil.errors.UnsupportedEventError` and changes nothing. ``supports(event)`` says in
    advance whether ``compose`` would succeed.
    """

    name: str = ""

    def __init__(
        self, *, neighboring_relation: NeighboringRelation = NeighboringRelation.ADD_OR_REMOVE_ONE
    ) -> None:
        if not isinstance(neighboring_relation, NeighboringRelation):
            raise ConfigurationError(
                f"neighboring_relation must be a NeighboringRelation, got {neighboring_relation!r}"
            )
        self._relation = neighboring_relation
        self._history: list[tuple[Event, int]] = []

    @property
    def neighboring_relation(self) -> NeighboringRelation:
        return self._relation

    @property
    def history(self) -> tuple[tuple[Event, int], ...]:
        """Every ``(event, count)`` composed so far, in order."""
        return tuple(self._history)

    @abc.abstractmethod
    def unsupported_reason(self, event: Event) -> str | None:
        """Why :meth:`compose` would refuse ``event``, or None if it would accept it."""

    def supports(self, event: Event) -> bool:
        """Whether :meth:`compose` would accept ``event``."""
        return self.unsupported_reason(event) is None

    @abc.abstractmethod
    def compose(self, event: Event, count: int = 1) -> Self:
        """Add ``count`` adaptive repetitions of ``event``; returns ``self``."""

    @abc.abstractmethod
    def epsilon(self, delta: float) -> float:
        """The smallest epsilon this accountant proves at ``delta`` (``inf`` if none)."""

    @abc.abstractmethod
    def delta(self, epsilon: float) -> float:
        """The smallest delta this accountant proves at ``epsilon`` (at most 1)."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(events={len(self._history)}, "
            f"neighboring_relation={self._relation.name})"
        )


def check_compose_arguments(event: object, count: object) -> None:
    if not isinstance(event, Event):
        raise ConfigurationError(f"expected a privacy event, got {event!r}")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ConfigurationError(f"count must be an integer >= 0, got {count!r}")


class CostAccountant(Accountant):
    """An accountant that folds one *cost* per leaf event into a running total.

    Subclasses implement ``_cost(event, count)`` (the contribution of ``count`` repetitions of a
    leaf or sampled event, raising :class:`Unsupported` with a reason when it has none) and
    ``_add(cost)``; the walk through composition events is shared.
    """

    def _costs(self, event: Event, count: int) -> list[Any]:
        """The costs of the leaves under ``event``, each repeated ``count`` times."""
        if isinstance(event, SelfComposedEvent):
            return self._costs(event.event, count * event.count)
        if isinstance(event, ComposedEvent):
            out: list[Any] = []
            for e in event.events:
                out.extend(self._costs(e, count))
            return out
        if count == 0 or isinstance(event, NoOpEvent):
            return []
        return [self._cost(event, count)]

    @abc.abstractmethod
    def _cost(self, event: Event, count: int) -> Any:
        """The cost of ``count`` repetitions of a non-composition event."""

    @abc.abstractmethod
    def _add(self, cost: Any) -> None:
        """Fold one cost into the running total."""

    def _view(self, event: Event) -> Event:
        if self._relation is NeighboringRelation.REPLACE_ONE:
            return replace_one_view(event)
        return event

    def prepare(self, event: Event, count: int = 1) -> list[Any]:
        """The costs :meth:`apply` would fold in for ``count`` repetitions of ``event``, without
        changing the accountant; raises :class:`Unsupported` if there are none."""
        return self._costs(self._view(event), count)

    def apply(self, event: Event, count: int, costs: list[Any]) -> None:
        """Fold in costs from :meth:`prepare` and record the event."""
        for cost in costs:
            self._add(cost)
        self._history.append((event, count))

    def unsupported_reason(self, event: Event) -> str | None:
        try:
            self.prepare(event, 1)
        except Unsupported as exc:
            return str(exc)
        return None

    def compose(self, event: Event, count: int = 1) -> Self:
        check_compose_arguments(event, count)
        try:
            costs = self.prepare(event, count)
        except Unsupported as exc:
            raise UnsupportedEventError(
                f"the {self.name} accountant cannot compose {event.describe()}: {exc}"
            ) from None
        self.apply(event, count, costs)
        return self
