"""The interface every accountant implements, and the neighbouring relations they understand."""

from __future__ import annotations

import abc
import enum
import math
from typing import Any, Self

from veil.errors import ConfigurationError, UnsupportedEventError
from veil.privacy.events import ComposedEvent, Event, NoOpEvent, SelfComposedEvent

__all__ = ["Accountant", "CostAccountant", "NeighboringRelation", "Unsupported"]


class NeighboringRelation(enum.Enum):
    """Which data sets count as neighbours.

    ``ADD_OR_REMOVE_ONE`` (the default everywhere): one privacy unit is added or removed.
    ``REPLACE_ONE``: one unit's data is replaced by another's (data-set size is public).
    A sensitivity is always meant with respect to the relation the accountant uses.
    """

    ADD_OR_REMOVE_ONE = "add_or_remove_one"
    REPLACE_ONE = "replace_one"


class Unsupported(Exception):  # noqa: N818 - internal signal, never escapes an accountant
    """Raised inside an accountant when an event cannot be composed; carries the reason."""


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

    def unsupported_reason(self, event: Event) -> str | None:
        try:
            self._costs(event, 1)
        except Unsupported as exc:
            return str(exc)
        return None

    def compose(self, event: Event, count: int = 1) -> Self:
        check_compose_arguments(event, count)
        try:
            costs = self._costs(event, count)
        except Unsupported as exc:
            raise UnsupportedEventError(
                f"the {self.name} accountant cannot compose {event.describe()}: {exc}"
            ) from None
        for cost in costs:
            self._add(cost)
        self._history.append((event, count))
        return self
