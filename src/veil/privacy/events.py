"""Privacy events: immutable descriptions of what a release cost.

Every mechanism in veil produces an event before it draws any noise, and the ledger stores the
events (not the epsilons derived from them), so that a tighter accountant can recompute every
spend later. The meaning of an event class never changes: a new meaning is a new class, and the
JSON ``type`` tag of a class is fixed forever.

Conventions, shared with Google's ``dp_accounting``:

* neighbouring data sets differ by adding or removing one privacy unit (a person), unless an
  accountant is told otherwise;
* a *noise multiplier* is the noise scale divided by the sensitivity (Laplace: scale / L1
  sensitivity; Gaussian: standard deviation / L2 sensitivity);
* sampling and composition are themselves events that wrap other events.

Events are plain frozen dataclasses; they validate their fields on construction and raise
:class:`~veil.errors.ConfigurationError` for impossible values.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from veil.errors import ConfigurationError

__all__ = [
    "ApproxDpEvent",
    "ComposedEvent",
    "DiscreteGaussianEvent",
    "DiscreteLaplaceEvent",
    "Event",
    "ExponentialMechanismEvent",
    "GaussianEvent",
    "LaplaceEvent",
    "NoOpEvent",
    "NonPrivateEvent",
    "PoissonSampledEvent",
    "PureDpEvent",
    "SampledWithoutReplacementEvent",
    "SelfComposedEvent",
    "ZCdpEvent",
    "event_from_dict",
    "event_from_json",
]

_REGISTRY: dict[str, type[Event]] = {}


def _positive(name: str, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a finite number > 0, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{name} must be a finite number >= 0, got {value!r}")


def _positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Event:
    """Base class of all privacy events. Use a subclass."""

    type_tag: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        tag = cls.__dict__.get("type_tag", "")
        if tag:
            if tag in _REGISTRY:
                raise RuntimeError(f"event type tag {tag!r} is used twice")
            _REGISTRY[tag] = cls

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary with a ``type`` key; nested events become dictionaries."""
        out: dict[str, Any] = {"type": self.type_tag}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Event):
                out[field.name] = value.to_dict()
            elif isinstance(value, tuple):
                out[field.name] = [v.to_dict() for v in value]
            else:
                out[field.name] = value
        return out

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): equal events give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def describe(self) -> str:
        """A short human-readable description, e.g. ``Gaussian(σ/Δ=1.1)``."""
        return repr(self)


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """Rebuild an event from :meth:`Event.to_dict` output."""
    if not isinstance(data, Mapping) or "type" not in data:
        raise ConfigurationError(f"not a serialised privacy event: {data!r}")
    tag = data["type"]
    cls = _REGISTRY.get(tag)
    if cls is None:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigurationError(f"unknown privacy event type {tag!r}; known types: {known}")
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key == "type":
            continue
        if key not in names:
            raise ConfigurationError(f"event type {tag!r} has no field {key!r}")
        if key == "event":
            kwargs[key] = event_from_dict(value)
        elif key == "events":
            if not isinstance(value, list):
                raise ConfigurationError(f"'events' of a {tag!r} event must be a list of events")
            kwargs[key] = tuple(event_from_dict(v) for v in value)
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot rebuild event {tag!r} from {dict(data)!r}: {exc}"
        ) from exc


def event_from_json(text: str) -> Event:
    """Rebuild an event from :meth:`Event.to_json` output."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"not valid JSON for a privacy event: {exc}") from exc
    return event_from_dict(data)


# --------------------------------------------------------------------------------------------
# Leaves
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NoOpEvent(Event):
    """Nothing derived from protected data was released. Costs nothing."""

    type_tag: ClassVar[str] = "noop"

    def describe(self) -> str:
        return "NoOp"


@dataclasses.dataclass(frozen=True)
class NonPrivateEvent(Event):
    """Something was released without a privacy guarantee. Epsilon is infinite."""

    type_tag: ClassVar[str] = "non_private"

    def describe(self) -> str:
        return "NonPrivate"


@dataclasses.dataclass(frozen=True)
class LaplaceEvent(Event):
    """Continuous Laplace noise of scale ``noise_multiplier`` x L1 sensitivity.

    A single release is epsilon-DP with ``epsilon = 1 / noise_multiplier``.
    """

    type_tag: ClassVar[str] = "laplace"
    noise_multiplier: float

    def __post_init__(self) -> None:
        _positive("noise_multiplier", self.noise_multiplier)

    def describe(self) -> str:
        return f"Laplace(b/Δ₁={self.noise_multiplier:.6g})"


@dataclasses.dataclass(frozen=True)
class GaussianEvent(Event):
    """Continuous Gaussian noise of standard deviation ``noise_multiplier`` x L2 sensitivity."""

    type_tag: ClassVar[str] = "gaussian"
    noise_multiplier: float

    def __post_init__(self) -> None:
        _positive("noise_multiplier", self.noise_multiplier)

    def describe(self) -> str:
        return f"Gaussian(σ/Δ₂={self.noise_multiplier:.6g})"


@dataclasses.dataclass(frozen=True)
class DiscreteLaplaceEvent(Event):
    """Discrete Laplace noise added to an integer-valued query.

    The noise has probability mass ``P(x) ∝ exp(-|x| / scale)`` on the integers, independently on
    each coordinate of the released vector; ``sensitivity`` is the query's L1 sensitivity (how
    much the integer vector can move, in L1 norm, when one privacy unit is added or removed), and
    ``dimension`` is how many coordinates one unit can move (the vector may be longer: a
    histogram over a thousand groups in which a unit appears in one group has dimension 1). A
    single release is epsilon-DP with ``epsilon = sensitivity / scale``.
    """

    type_tag: ClassVar[str] = "discrete_laplace"
    scale: float
    sensitivity: float
    dimension: int = 1

    def __post_init__(self) -> None:
        _positive("scale", self.scale)
        _positive("sensitivity", self.sensitivity)
        _positive_int("dimension", self.dimension)

    @property
    def epsilon(self) -> float:
        """The pure-DP epsilon of one release."""
        return self.sensitivity / self.scale

    def describe(self) -> str:
        dim = f", d={self.dimension}" if self.dimension > 1 else ""
        return f"DiscreteLaplace(t={self.scale:.6g}, Δ₁={self.sensitivity:.6g}{dim})"


@dataclasses.dataclass(frozen=True)
class DiscreteGaussianEvent(Event):
    """Discrete Gaussian noise added to an integer-valued query (Canonne, Kamath, Steinke 2020).

    The noise has probability mass ``P(x) ∝ exp(-x² / (2 sigma²))`` on the integers, independently
    on each coordinate of the released vector; ``sensitivity`` is the query's L2 sensitivity and
    ``dimension`` how many coordinates one unit can move (see :class:`DiscreteLaplaceEvent`). A
    single release is ``rho``-zCDP with ``rho = sensitivity² / (2 sigma²)``; for
    ``dimension == 1`` and an integer sensitivity the exact privacy loss distribution is known and
    used.
    """

    type_tag: ClassVar[str] = "discrete_gaussian"
    sigma: float
    sensitivity: float
    dimension: int = 1

    def __post_init__(self) -> None:
        _positive("sigma", self.sigma)
        _positive("sensitivity", self.sensitivity)
        _positive_int("dimension", self.dimension)

    @property
    def rho(self) -> float:
        """The zCDP parameter of one release."""
        return self.sensitivity**2 / (2.0 * self.sigma**2)

    def describe(self) -> str:
        dim = f", d={self.dimension}" if self.dimension > 1 else ""
        return f"DiscreteGaussian(σ={self.sigma:.6g}, Δ₂={self.sensitivity:.6g}{dim})"


@dataclasses.dataclass(frozen=True)
class ExponentialMechanismEvent(Event):
    """A selection by the exponential mechanism (equivalently, report-noisy-max with Gumbel
    noise) that is ``epsilon``-DP.

    Such selections also have ``epsilon``-bounded range, which makes them ``epsilon²/8``-zCDP
    (Cesar and Rogers 2021), tighter than the ``epsilon²/2`` of a generic pure-DP release.
    Report-noisy-max with *exponential* noise (permute-and-flip) does not have bounded range:
    record it as a :class:`PureDpEvent`.
    """

    type_tag: ClassVar[str] = "exponential_mechanism"
    epsilon: float

    def __post_init__(self) -> None:
        _positive("epsilon", self.epsilon)

    def describe(self) -> str:
        return f"ExponentialMechanism(ε={self.epsilon:.6g})"


@dataclasses.dataclass(frozen=True)
class PureDpEvent(Event):
    """Any ``epsilon``-DP release known only by its epsilon (e.g. report-noisy-max with Laplace
    or exponential noise, randomised response)."""

    type_tag: ClassVar[str] = "pure_dp"
    epsilon: float

    def __post_init__(self) -> None:
        _positive("epsilon", self.epsilon)

    def describe(self) -> str:
        return f"PureDP(ε={self.epsilon:.6g})"


@dataclasses.dataclass(frozen=True)
class ApproxDpEvent(Event):
    """Any ``(epsilon, delta)``-DP release known only by its parameters (e.g. DP partition
    selection by thresholding)."""

    type_tag: ClassVar[str] = "approx_dp"
    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        _non_negative("epsilon", self.epsilon)
        _non_negative("delta", self.delta)
        if self.delta >= 1:
            raise ConfigurationError(f"delta must be < 1, got {self.delta!r}")

    def describe(self) -> str:
        return f"ApproxDP(ε={self.epsilon:.6g}, δ={self.delta:.3g})"


@dataclasses.dataclass(frozen=True)
class ZCdpEvent(Event):
    """A ``rho``-zero-concentrated-DP release (Bun and Steinke 2016), known only by ``rho``.

    For a Gaussian mechanism prefer :class:`GaussianEvent`, which PLD accounting can use exactly;
    this event is for releases whose only known guarantee is zCDP.
    """

    type_tag: ClassVar[str] = "zcdp"
    rho: float

    def __post_init__(self) -> None:
        _positive("rho", self.rho)

    def describe(self) -> str:
        return f"zCDP(ρ={self.rho:.6g})"


# --------------------------------------------------------------------------------------------
# Sampling and composition
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PoissonSampledEvent(Event):
    """``event`` run on a Poisson sample: each unit is included independently with
    ``sampling_probability``."""

    type_tag: ClassVar[str] = "poisson_sampled"
    sampling_probability: float
    event: Event

    def __post_init__(self) -> None:
        q = self.sampling_probability
        if not isinstance(q, int | float) or isinstance(q, bool) or not 0 <= q <= 1:
            raise ConfigurationError(f"sampling_probability must be in [0, 1], got {q!r}")
        if not isinstance(self.event, Event):
            raise ConfigurationError(f"event must be a privacy event, got {self.event!r}")

    def describe(self) -> str:
        return f"Poisson(q={self.sampling_probability:.6g}, {self.event.describe()})"


@dataclasses.dataclass(frozen=True)
class SampledWithoutReplacementEvent(Event):
    """``event`` run on a sample of exactly ``sample_size`` units drawn without replacement from
    ``source_dataset_size``."""

    type_tag: ClassVar[str] = "sampled_without_replacement"
    source_dataset_size: int
    sample_size: int
    event: Event

    def __post_init__(self) -> None:
        _positive_int("source_dataset_size", self.source_dataset_size)
        if (
            not isinstance(self.sample_size, int)
            or isinstance(self.sample_size, bool)
            or not 0 <= self.sample_size <= self.source_dataset_size
        ):
            raise ConfigurationError(
                f"sample_size must be an integer in [0, source_dataset_size="
                f"{self.source_dataset_size}], got {self.sample_size!r}"
            )
        if not isinstance(self.event, Event):
            raise ConfigurationError(f"event must be a privacy event, got {self.event!r}")

    def describe(self) -> str:
        return (
            f"WithoutReplacement({self.sample_size}/{self.source_dataset_size}, "
            f"{self.event.describe()})"
        )


@dataclasses.dataclass(frozen=True)
class SelfComposedEvent(Event):
    """``event`` released ``count`` times (adaptively)."""

    type_tag: ClassVar[str] = "self_composed"
    event: Event
    count: int

    def __post_init__(self) -> None:
        if not isinstance(self.event, Event):
            raise ConfigurationError(f"event must be a privacy event, got {self.event!r}")
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 0:
            raise ConfigurationError(f"count must be an integer >= 0, got {self.count!r}")

    def describe(self) -> str:
        return f"{self.count} x {self.event.describe()}"


@dataclasses.dataclass(frozen=True)
class ComposedEvent(Event):
    """Several events released one after another (adaptively)."""

    type_tag: ClassVar[str] = "composed"
    events: tuple[Event, ...]

    def __init__(self, events: Sequence[Event]) -> None:
        object.__setattr__(self, "events", tuple(events))
        for e in self.events:
            if not isinstance(e, Event):
                raise ConfigurationError(f"events must be privacy events, got {e!r}")

    def describe(self) -> str:
        return "Composed[" + ", ".join(e.describe() for e in self.events) + "]"
