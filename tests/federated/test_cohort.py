"""The batched path of the round protocol: a cohort's answers in one message.

``FederatedServer.receive_cohort`` must be indistinguishable from ``receive`` called once per
client with the same answers: the same model, metrics, completed and dropped clients and
bytes, for every aggregator, with dropouts, and when some answers arrive one by one.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.errors import LocalProtocolError, RemoteProtocolError
from veil.federated import (
    AdaptiveClipping,
    CoordinateMedian,
    DpAggregator,
    FederatedServer,
    Krum,
    TrainConfig,
    TrainResult,
    fedadam,
    fedavg,
)
from veil.federated.messages import CohortResult
from veil.federated.secure import SecureAggregation
from veil.ledger import Ledger
from veil.privacy import InsecureSeededRandom

DIM = 4


def _server(clients: int, strategy, **kw) -> FederatedServer:
    return FederatedServer(
        parameters=np.zeros(DIM),
        clients=[f"c{i}" for i in range(clients)],
        strategy=strategy,
        config=TrainConfig(),
        rounds=2,
        **kw,
    )


def _cohort(round_: int, ids: list[str], rng: np.random.Generator) -> CohortResult:
    k = len(ids)
    return CohortResult(
        round_,
        tuple(ids),
        rng.normal(size=(k, DIM)),
        rng.integers(0, 50, size=k),
        {"train_loss": rng.random(k), "within_clip": (rng.random(k) < 0.5).astype(float)},
    )


def test_a_cohort_is_the_sequence_of_its_clients_results() -> None:
    cohort = _cohort(3, ["a", "b", "c"], np.random.default_rng(0))
    assert len(cohort) == 3
    results = list(cohort)
    assert all(isinstance(r, TrainResult) for r in results)
    assert [r.client_id for r in results] == ["a", "b", "c"]
    assert cohort[-1].client_id == "c"
    assert [r.client_id for r in cohort[1:]] == ["b", "c"]
    for i, r in enumerate(results):
        assert r.round == 3
        np.testing.assert_array_equal(r.update, cohort.updates[i])
        assert r.num_examples == int(cohort.num_examples[i])
        assert dict(r.metrics) == {k: float(v[i]) for k, v in cohort.metrics.items()}
    assert cohort.payload_bytes == sum(r.payload_bytes for r in results)
    with pytest.raises(ValueError, match="read-only"):
        cohort.updates[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        cohort.metrics["train_loss"][0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cohort.round = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    "change",
    [
        {"client_ids": ("a", "a")},
        {"updates": np.zeros((3, DIM))},
        {"updates": np.zeros(2 * DIM)},
        {"updates": np.zeros((2, DIM), dtype=np.int64)},
        {"num_examples": np.array([1, -1])},
        {"num_examples": np.array([1.0, 2.0])},
        {"metrics": {"train_loss": np.zeros(3)}},
        {"metrics": {"train_loss": np.array(["x", "y"])}},
    ],
)
def test_a_malformed_cohort_is_the_peers_fault(change: dict) -> None:
    fields = {
        "round": 1,
        "client_ids": ("a", "b"),
        "updates": np.zeros((2, DIM)),
        "num_examples": np.array([1, 2]),
        "metrics": {},
    }
    with pytest.raises(RemoteProtocolError):
        CohortResult(**(fields | change))


def test_receive_cohort_refuses_what_receive_refuses_and_records_nothing() -> None:
    server = _server(4, fedavg())
    rng = InsecureSeededRandom(0)
    server.start_round(rng)
    gen = np.random.default_rng(1)
    server.receive(TrainResult(1, "c0", np.zeros(DIM), 1))
    bad = [
        _cohort(2, ["c1"], gen),  # another round
        _cohort(1, ["c1", "c9"], gen),  # not sampled
        _cohort(1, ["c1", "c0"], gen),  # c0 already answered
        CohortResult(1, ("c1",), np.zeros((1, DIM + 1)), np.array([1])),  # wrong size
        CohortResult(1, ("c1", "c2"), np.array([[0.0] * DIM, [np.nan] * DIM]), np.array([1, 1])),
    ]
    for message in bad:
        with pytest.raises(RemoteProtocolError):
            server.receive_cohort(message)
        assert server.waiting_for == {"c1", "c2", "c3"}
    server.receive_cohort(_cohort(1, ["c2", "c1"], gen))
    with pytest.raises(RemoteProtocolError):
        server.receive(TrainResult(1, "c1", np.zeros(DIM), 1))  # answered in the cohort
    assert server.waiting_for == {"c3"}
    server.close_round(rng)
    with pytest.raises(LocalProtocolError):
        server.receive_cohort(_cohort(1, ["c3"], gen))  # the round is closed


def test_receive_cohort_is_refused_under_secure_aggregation() -> None:
    server = _server(4, fedavg(), secure_aggregation=SecureAggregation())
    server.start_round(InsecureSeededRandom(0))
    with pytest.raises(LocalProtocolError):
        server.receive_cohort(_cohort(1, ["c0", "c1", "c2"], np.random.default_rng(0)))


STRATEGIES = {
    "fedavg": fedavg,
    "fedadam": lambda: fedadam(learning_rate=0.1),
    "median": lambda: fedavg(CoordinateMedian()),
    "krum": lambda: fedavg(Krum(byzantine=1)),
    "dp-adaptive": lambda: fedavg(
        DpAggregator(noise_multiplier=1.0, adaptive=AdaptiveClipping(count_noise=1.0))
    ),
}


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(STRATEGIES)),
    answers=st.lists(
        st.sampled_from(["drop", "single", "cohort-a", "cohort-b"]), min_size=6, max_size=6
    ),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_cohorts_and_single_answers_give_the_same_round(
    name: str, answers: list[str], shuffle: bool, seed: int
) -> None:
    """The same answers sent one by one and (partly) as cohorts give bit-identical rounds."""
    one_by_one = _server(6, STRATEGIES[name]())
    batched = _server(6, STRATEGIES[name]())
    with tempfile.TemporaryDirectory() as tmp, Ledger(str(Path(tmp) / "l.sqlite")) as ledger:
        ledger.set_budget("d/client", epsilon=1e6, delta=1e-5)
        _two_rounds(one_by_one, batched, ledger, answers, shuffle, seed)


def _two_rounds(
    one_by_one: FederatedServer,
    batched: FederatedServer,
    ledger: Ledger,
    answers: list[str],
    shuffle: bool,
    seed: int,
) -> None:
    for _ in range(2):  # two rounds: the optimiser's and the clipping's state carry over
        gen = np.random.default_rng(seed)
        for server in (one_by_one, batched):
            event = server.round_event()
            paid = None if event is None else ledger.reserve("d/client", event)
            server.start_round(InsecureSeededRandom(seed), reservation=paid)
            if paid is not None:
                paid.commit()
        ids = [f"c{i}" for i in range(6)]
        everyone = _cohort(one_by_one.round, ids, gen)
        groups: dict[str, list[int]] = {}
        for i, how in enumerate(answers):
            groups.setdefault(how, []).append(i)
        for i in groups.get("single", []):
            one_by_one.receive(everyone[i])
            batched.receive(everyone[i])
        for how in ("cohort-a", "cohort-b"):
            rows = groups.get(how, [])
            if shuffle:
                rows = rows[::-1]
            for i in rows:
                one_by_one.receive(everyone[i])
            if rows:
                batched.receive_cohort(everyone.select(rows))
        completed = sum(len(groups.get(h, [])) for h in ("single", "cohort-a", "cohort-b"))
        try:
            expected = one_by_one.close_round(InsecureSeededRandom(seed + 1))
        except Exception as exc:  # Krum on too few answers: both must fail alike
            with pytest.raises(type(exc)):
                batched.close_round(InsecureSeededRandom(seed + 1))
            return
        got = batched.close_round(InsecureSeededRandom(seed + 1))
        assert len(got.completed) == completed
        assert got == expected
        np.testing.assert_array_equal(batched.parameters, one_by_one.parameters)


def test_the_simulator_sends_cohorts_and_matches_the_one_by_one_protocol(monkeypatch) -> None:
    """The simulator's batched rounds equal the same run with one message per client."""
    import torch
    from tests.federated.conftest import synthetic

    from veil.federated import Simulation, models

    def run() -> tuple:
        torch.manual_seed(0)
        sim = Simulation(
            model=models.LogisticRegression(5, 1),
            data=synthetic([20] * 12 + [7, 30]),
            rounds=3,
            config=TrainConfig(learning_rate=0.5, batch_size=8),
            dropout=0.3,
            max_parallel=5,
            seed=4,
        )
        result = sim.run()
        rounds = [dataclasses.replace(r, seconds=0.0) for r in result.rounds]
        return result.parameters, rounds

    seen: list[int] = []
    original = FederatedServer.receive_cohort

    def spy(self: FederatedServer, message: CohortResult) -> None:
        seen.append(len(message))
        original(self, message)

    monkeypatch.setattr(FederatedServer, "receive_cohort", spy)
    batched_params, batched_rounds = run()
    assert seen and max(seen) <= 5

    def one_by_one(self: FederatedServer, message: CohortResult) -> None:
        for result in message:
            self.receive(result)

    monkeypatch.setattr(FederatedServer, "receive_cohort", one_by_one)
    single_params, single_rounds = run()
    np.testing.assert_array_equal(batched_params, single_params)
    assert batched_rounds == single_rounds
    assert sum(r.dropped for r in batched_rounds) > 0


def test_broadcast_instructions_equal_the_ones_built_one_by_one() -> None:
    from veil.federated import TrainInstruction

    model = np.arange(3.0)
    model.flags.writeable = False
    config = TrainConfig(learning_rate=0.3)
    ids = ["a", "b", "c"]
    sent = TrainInstruction.broadcast(7, ids, model, config)
    assert sent == tuple(TrainInstruction(7, cid, model, config) for cid in ids)
    assert [i.client_id for i in sent] == ids
    assert all(i.parameters is sent[0].parameters for i in sent)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sent[1].client_id = "z"  # type: ignore[misc]
    assert TrainInstruction.broadcast(7, [], model, config) == ()
    with pytest.raises(Exception, match="flat vector"):
        TrainInstruction.broadcast(7, ids, np.zeros((2, 2)), config)
