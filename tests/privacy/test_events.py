"""Privacy events: validation and JSON round-trips (the ledger stores them as JSON)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veil.errors import ConfigurationError
from veil.privacy import events as ev

positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)
prob = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)

leaves = st.one_of(
    st.builds(ev.NoOpEvent),
    st.builds(ev.NonPrivateEvent),
    st.builds(ev.LaplaceEvent, noise_multiplier=positive),
    st.builds(ev.GaussianEvent, noise_multiplier=positive),
    st.builds(
        ev.DiscreteLaplaceEvent,
        scale=positive,
        sensitivity=positive,
        dimension=st.integers(1, 1000),
    ),
    st.builds(
        ev.DiscreteGaussianEvent,
        sigma=positive,
        sensitivity=positive,
        dimension=st.integers(1, 1000),
    ),
    st.builds(ev.ExponentialMechanismEvent, epsilon=positive),
    st.builds(ev.PureDpEvent, epsilon=positive),
    st.builds(
        ev.ApproxDpEvent,
        epsilon=st.floats(0, 100),
        delta=st.floats(0, 0.5),
    ),
    st.builds(ev.ZCdpEvent, rho=positive),
)


def _sampled(children: st.SearchStrategy[ev.Event]) -> st.SearchStrategy[ev.Event]:
    wor = st.integers(1, 10**6).flatmap(
        lambda n: st.builds(
            ev.SampledWithoutReplacementEvent,
            source_dataset_size=st.just(n),
            sample_size=st.integers(0, n),
            event=children,
        )
    )
    return st.one_of(
        st.builds(ev.PoissonSampledEvent, sampling_probability=prob, event=children),
        wor,
        st.builds(ev.SelfComposedEvent, event=children, count=st.integers(0, 10**6)),
        st.lists(children, max_size=4).map(ev.ComposedEvent),
    )


events = st.recursive(leaves, _sampled, max_leaves=8)


@given(events)
def test_json_round_trip_preserves_every_event(event: ev.Event) -> None:
    text = event.to_json()
    back = ev.event_from_json(text)
    assert back == event
    assert back.to_json() == text  # canonical: the stored form is stable


@given(events)
def test_dict_round_trip_and_type_tags(event: ev.Event) -> None:
    data = event.to_dict()
    assert data["type"] == event.type_tag
    assert ev.event_from_dict(json.loads(json.dumps(data))) == event


def test_every_event_class_is_registered_with_a_distinct_tag() -> None:
    classes = [c for c in vars(ev).values() if isinstance(c, type) and issubclass(c, ev.Event)]
    tags = [c.type_tag for c in classes if c is not ev.Event]
    assert len(tags) == len(set(tags)) == len(classes) - 1
    assert set(tags) == {
        "noop",
        "non_private",
        "laplace",
        "gaussian",
        "discrete_laplace",
        "discrete_gaussian",
        "exponential_mechanism",
        "pure_dp",
        "approx_dp",
        "zcdp",
        "poisson_sampled",
        "sampled_without_replacement",
        "self_composed",
        "composed",
    }


def test_events_are_immutable() -> None:
    e = ev.GaussianEvent(1.0)
    with pytest.raises(AttributeError):
        e.noise_multiplier = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "make",
    [
        lambda: ev.GaussianEvent(0.0),
        lambda: ev.GaussianEvent(-1.0),
        lambda: ev.GaussianEvent(float("nan")),
        lambda: ev.LaplaceEvent(float("inf")),
        lambda: ev.DiscreteLaplaceEvent(scale=1.0, sensitivity=1.0, dimension=0),
        lambda: ev.DiscreteGaussianEvent(sigma=1.0, sensitivity=0.0),
        lambda: ev.ApproxDpEvent(epsilon=1.0, delta=1.0),
        lambda: ev.PoissonSampledEvent(1.5, ev.GaussianEvent(1.0)),
        lambda: ev.PoissonSampledEvent(0.5, "gaussian"),  # type: ignore[arg-type]
        lambda: ev.SampledWithoutReplacementEvent(10, 11, ev.GaussianEvent(1.0)),
        lambda: ev.SelfComposedEvent(ev.GaussianEvent(1.0), -1),
        lambda: ev.SelfComposedEvent(ev.GaussianEvent(1.0), True),  # type: ignore[arg-type]
        lambda: ev.ComposedEvent([ev.GaussianEvent(1.0), 3]),  # type: ignore[list-item]
        lambda: ev.ZCdpEvent("1"),  # type: ignore[arg-type]
    ],
)
def test_impossible_values_are_refused(make: object) -> None:
    with pytest.raises(ConfigurationError):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"noise_multiplier": 1.0}',
        '{"type": "gaussian_v9", "noise_multiplier": 1.0}',
        '{"type": "gaussian", "sigma": 1.0}',
        '{"type": "gaussian"}',
    ],
)
def test_unreadable_json_is_a_clear_error(text: str) -> None:
    with pytest.raises(ConfigurationError):
        ev.event_from_json(text)


def test_derived_quantities() -> None:
    assert ev.DiscreteLaplaceEvent(scale=4.0, sensitivity=2.0).epsilon == 0.5
    assert ev.DiscreteGaussianEvent(sigma=2.0, sensitivity=2.0).rho == 0.5
    assert "σ/Δ₂=1.1" in ev.GaussianEvent(1.1).describe()
