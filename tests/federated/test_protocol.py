"""The round protocol: stages, dropouts, refused messages, client sampling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.errors import LocalProtocolError, RemoteProtocolError
from veil.federated import (
    ClientSampling,
    FederatedServer,
    Stage,
    TrainConfig,
    TrainFailure,
    TrainResult,
    fedavg,
)
from veil.privacy import InsecureSeededRandom


def _server(clients: int = 4, rounds: int = 2, strategy_=None, **kw) -> FederatedServer:
    return FederatedServer(
        parameters=np.zeros(3),
        clients=[f"c{i}" for i in range(clients)],
        strategy=strategy_ or fedavg(),
        config=TrainConfig(),
        rounds=rounds,
        **kw,
    )


def _result(server: FederatedServer, cid: str, value: float, n: int = 1) -> TrainResult:
    return TrainResult(server.round, cid, np.full(3, value), n, {"train_loss": value})


def test_a_round_aggregates_the_answers_weighted_by_examples() -> None:
    server = _server()
    rng = InsecureSeededRandom(0)
    instructions = server.start_round(rng)
    assert server.stage is Stage.TRAINING
    assert [i.client_id for i in instructions] == ["c0", "c1", "c2", "c3"]
    for i, ins in enumerate(instructions):
        server.receive(_result(server, ins.client_id, float(i), n=i + 1))
    outcome = server.close_round(rng)
    expected = sum(i * (i + 1) for i in range(4)) / 10
    np.testing.assert_allclose(server.parameters, expected)
    assert outcome.metrics["train_loss"] == pytest.approx(expected)
    assert outcome.bytes_sent == 4 * 3 * 4 and outcome.bytes_received > 0
    assert server.stage is Stage.IDLE


def test_clients_that_do_not_answer_are_dropped_and_the_rest_aggregated() -> None:
    server = _server()
    rng = InsecureSeededRandom(0)
    server.start_round(rng)
    server.receive(_result(server, "c0", 2.0))
    server.receive(TrainFailure(server.round, "c1", "out of memory"))
    assert server.waiting_for == {"c2", "c3"}
    outcome = server.close_round(rng)
    assert outcome.completed == ("c0",) and set(outcome.dropped) == {"c1", "c2", "c3"}
    np.testing.assert_allclose(server.parameters, 2.0)


def test_a_round_nobody_answers_leaves_the_model_unchanged() -> None:
    server = _server()
    rng = InsecureSeededRandom(0)
    server.start_round(rng)
    outcome = server.close_round(rng)
    assert not outcome.aggregated
    np.testing.assert_array_equal(server.parameters, 0.0)


def test_out_of_order_calls_are_our_bug() -> None:
    server = _server(rounds=1)
    rng = InsecureSeededRandom(0)
    with pytest.raises(LocalProtocolError):
        server.close_round(rng)
    server.start_round(rng)
    with pytest.raises(LocalProtocolError):
        server.start_round(rng)
    server.close_round(rng)
    assert server.stage is Stage.FINISHED
    with pytest.raises(LocalProtocolError):
        server.start_round(rng)


def test_late_duplicate_foreign_and_malformed_answers_are_the_peers_fault() -> None:
    server = _server(sampling=ClientSampling(fraction=0.5))
    rng = InsecureSeededRandom(0)
    instructions = server.start_round(rng)
    chosen = instructions[0].client_id
    outsider = next(c for c in server.clients if c not in {i.client_id for i in instructions})
    with pytest.raises(RemoteProtocolError, match="not sampled"):
        server.receive(_result(server, outsider, 1.0))
    with pytest.raises(RemoteProtocolError, match="round"):
        server.receive(TrainResult(server.round + 1, chosen, np.ones(3), 1))
    with pytest.raises(RemoteProtocolError, match="values"):
        server.receive(TrainResult(server.round, chosen, np.ones(4), 1))
    for bad in ([1.0, np.nan, 0.0], [np.inf, -np.inf, 0.0], [0.0, 0.0, -np.inf]):
        with pytest.raises(RemoteProtocolError, match="non-finite"):
            server.receive(TrainResult(server.round, chosen, np.array(bad), 1))
    # finite values whose sum overflows are not refused for it (the server checks values)
    huge = _server(clients=1)
    huge.start_round(rng)
    huge.receive(TrainResult(1, "c0", np.array([1e308, 1e308, 1e308]), 1))
    server.receive(_result(server, chosen, 1.0))
    with pytest.raises(RemoteProtocolError, match="already"):
        server.receive(_result(server, chosen, 1.0))
    server.close_round(rng)
    with pytest.raises(LocalProtocolError):  # a straggler after the deadline
        server.receive(_result(server, chosen, 1.0))


def test_messages_are_frozen() -> None:
    server = _server()
    (ins, *_) = server.start_round(InsecureSeededRandom(0))
    with pytest.raises(ValueError, match="read-only"):
        ins.parameters[0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        ins.round = 5  # type: ignore[misc]
    res = _result(server, "c0", 1.0)
    with pytest.raises(TypeError):
        res.metrics["x"] = 1.0  # type: ignore[index]
    with pytest.raises(RemoteProtocolError):
        TrainResult(1, "c0", np.ones(3), -1)


def test_fixed_size_sampling_takes_that_many_distinct_clients() -> None:
    sampling = ClientSampling(fraction=0.3)
    clients = [f"c{i}" for i in range(50)]
    rng = InsecureSeededRandom(1)
    seen = set()
    for _ in range(20):
        chosen = sampling.sample(clients, rng)
        assert len(chosen) == 15 == len(set(chosen))
        seen.update(chosen)
    assert len(seen) > 40


def test_poisson_sampling_has_the_stated_rate() -> None:
    """Each of 1,000 clients with q = 0.1, over 200 rounds: the count of inclusions is
    Binomial(200,000, 0.1); a 6-sigma window has false-alarm probability below 1e-8."""
    sampling = ClientSampling(fraction=0.1, poisson=True)
    clients = [f"c{i}" for i in range(1000)]
    rng = InsecureSeededRandom(2)
    sizes = [len(sampling.sample(clients, rng)) for _ in range(200)]
    total, n = sum(sizes), 200_000
    sd = (n * 0.1 * 0.9) ** 0.5
    assert abs(total - 0.1 * n) < 6 * sd
    assert len(set(sizes)) > 5  # the size varies, as Poisson sampling must


@settings(max_examples=40, deadline=None)
@given(
    answered=st.lists(st.booleans(), min_size=5, max_size=5),
    values=st.lists(st.floats(-10, 10), min_size=5, max_size=5),
)
def test_any_dropout_pattern_gives_the_weighted_mean_of_the_survivors(answered, values) -> None:
    server = _server(clients=5, rounds=1)
    rng = InsecureSeededRandom(0)
    server.start_round(rng)
    survivors = [(f"c{i}", v) for i, (a, v) in enumerate(zip(answered, values, strict=False)) if a]
    for cid, v in survivors:
        server.receive(_result(server, cid, v, n=2))
    outcome = server.close_round(rng)
    assert len(outcome.completed) + len(outcome.dropped) == 5
    if survivors:
        np.testing.assert_allclose(server.parameters, np.mean([v for _, v in survivors]), atol=1e-9)
    else:
        np.testing.assert_array_equal(server.parameters, 0.0)


def test_the_simulator_counts_dropouts_and_still_trains() -> None:
    import torch
    from tests.federated.conftest import synthetic

    from veil.federated import Simulation, models

    torch.manual_seed(0)
    sim = Simulation(
        model=models.LogisticRegression(5, 1),
        data=synthetic([20] * 20),
        rounds=4,
        config=TrainConfig(learning_rate=0.5),
        dropout=0.3,
        seed=4,
    )
    result = sim.run()
    dropped = [r.dropped for r in result.rounds]
    assert all(r.sampled == 20 and r.completed + r.dropped == 20 for r in result.rounds)
    assert 0 < sum(dropped) < 80
    assert result.rounds[-1].test_accuracy > 0.7


def test_the_simulator_trains_at_most_max_parallel_clients_at_once(monkeypatch) -> None:
    import torch
    from tests.federated.conftest import synthetic

    import veil.federated.simulation as simulation
    from veil.federated import Simulation, models

    seen: list[int] = []
    real = simulation.train_clients

    def spy(layout, parameters, clients, config, *, generator):  # type: ignore[no-untyped-def]
        seen.append(clients.size)
        return real(layout, parameters, clients, config, generator=generator)

    monkeypatch.setattr(simulation, "train_clients", spy)
    torch.manual_seed(0)
    Simulation(
        model=models.LogisticRegression(5, 1),
        data=synthetic([10] * 20),
        rounds=2,
        config=TrainConfig(),
        max_parallel=8,
        seed=0,
    ).run()
    assert seen == [8, 8, 4, 8, 8, 4]


def test_krum_needs_enough_clients_and_skips_thin_rounds() -> None:
    from veil.errors import ConfigurationError
    from veil.federated import Krum

    with pytest.raises(ConfigurationError, match="at least 4 updates"):
        FederatedServer(
            parameters=np.zeros(3),
            clients=["a", "b", "c"],
            strategy=fedavg(Krum(byzantine=1)),
            config=TrainConfig(),
            rounds=1,
        )
    server = _server(clients=6, rounds=1, strategy_=fedavg(Krum(byzantine=1)))
    rng = InsecureSeededRandom(0)
    server.start_round(rng)
    for cid in ("c0", "c1", "c2"):  # three answers: Krum(f=1) needs four
        server.receive(_result(server, cid, 1.0))
    outcome = server.close_round(rng)
    assert not outcome.aggregated
    np.testing.assert_array_equal(server.parameters, 0.0)


def test_a_strategy_starts_afresh_in_each_run() -> None:
    import torch
    from tests.federated.conftest import synthetic

    from veil.federated import Simulation, fedadam, models

    strategy = fedadam(learning_rate=0.1)
    finals = []
    for _ in range(2):
        torch.manual_seed(0)
        sim = Simulation(
            model=models.LogisticRegression(5, 1).double(),
            data=synthetic([20] * 4),
            rounds=3,
            config=TrainConfig(learning_rate=0.5),
            strategy=strategy,
            seed=0,
        )
        finals.append(sim.run().parameters)
    np.testing.assert_array_equal(finals[0], finals[1])
    assert set(sim.server.state()) == {"round", "parameters", "optimizer", "aggregator"}
