"""Federated rounds under secure aggregation: the server sees only sums, and they are right."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import synthetic
from veil.errors import ConfigurationError, LocalProtocolError
from veil.federated import (
    ClientSampling,
    DpAggregator,
    FederatedServer,
    Simulation,
    TrainConfig,
    TrainResult,
    fedadam,
    fedavg,
    models,
)
from veil.federated import secure as secure_mod
from veil.federated.dp import AdaptiveClipping
from veil.federated.secure import Encoding, SecureAggregation, SecureClient, SecureServerRound
from veil.federated.strategies import CoordinateMedian, Krum, Sgd, Strategy, TrimmedMean
from veil.privacy import InsecureSeededRandom
from veil.privacy.events import GaussianEvent, PoissonSampledEvent
from veil.secagg.planning import abort_probability, plan_round


def _server(clients: int, *, strategy=None, secure=None, dim: int = 3, **kw) -> FederatedServer:
    return FederatedServer(
        parameters=np.zeros(dim),
        clients=[f"c{i}" for i in range(clients)],
        strategy=strategy or fedavg(),
        config=TrainConfig(),
        rounds=3,
        secure_aggregation=secure or SecureAggregation(),
        **kw,
    )


def _drive(server, updates, *, drop=(), rng=None, reservation=None):
    """One secure round: every sampled client exchanges keys; those in ``drop`` vanish before
    sending their masked update. ``updates`` maps a client to (update, examples, loss)."""
    rng = rng or InsecureSeededRandom(3)
    instructions = server.start_round(rng, reservation=reservation)
    spec = instructions[0].secure
    clients = {i.client_id: SecureClient(i, rng=rng) for i in instructions}
    srv = SecureServerRound(spec, rng=rng)
    directory = srv.collect_keys([c.advertise() for c in clients.values()])
    routed = srv.collect_shares([clients[c].share_keys(directory) for c in spec.clients])
    alive = [c for c in spec.clients if c not in drop]
    masked = []
    for c in alive:
        update, n, loss = updates[c]
        result = TrainResult(server.round, c, np.asarray(update, float), n, {"train_loss": loss})
        masked.append(clients[c].masked_input(routed[spec.number(c)], result))
    request = srv.collect_masked(masked)
    summed = srv.finish([clients[c].unmask(request) for c in alive])
    return server.close_round(rng, summed=summed), masked, spec


def test_the_secure_round_gives_the_weighted_mean_of_the_survivors() -> None:
    server = _server(8)
    rng = np.random.default_rng(0)
    updates = {
        f"c{i}": (rng.uniform(-1, 1, size=3), int(rng.integers(1, 50)), float(i)) for i in range(8)
    }
    drop = {"c2", "c5"}
    outcome, masked, spec = _drive(server, updates, drop=drop)
    alive = [c for c in updates if c not in drop]
    weights = np.array([updates[c][1] for c in alive], float)
    expected = weights @ np.array([updates[c][0] for c in alive]) / weights.sum()
    # each survivor's rounding moves its weighted update by under one step of the ring
    w_total = weights.sum() / spec.max_weight
    bound = len(alive) * spec.quantizer().resolution / w_total
    np.testing.assert_allclose(server.parameters, expected, rtol=0, atol=bound)
    loss = weights @ np.array([updates[c][2] for c in alive]) / weights.sum()
    assert outcome.metrics["train_loss"] == pytest.approx(loss, abs=1e-4)
    assert set(outcome.completed) == set(alive) and set(outcome.dropped) == drop
    # what reached the server: 32-bit words, and none equals the client's own encoding
    assert all(m.vector.dtype == np.uint32 for m in masked)


def test_the_server_refuses_a_plain_update_under_secure_aggregation() -> None:
    server = _server(4)
    server.start_round(InsecureSeededRandom(0))
    with pytest.raises(LocalProtocolError, match="masked sum"):
        server.receive(TrainResult(1, "c0", np.zeros(3), 1))


def test_a_round_of_fewer_than_three_clients_trains_nobody() -> None:
    server = _server(2)
    rng = InsecureSeededRandom(0)
    assert server.start_round(rng) == ()
    outcome = server.close_round(rng)
    assert not outcome.aggregated and np.all(server.parameters == 0)


@pytest.mark.parametrize(
    "aggregator", [CoordinateMedian(), TrimmedMean(trim_fraction=0.1), Krum(byzantine=1)]
)
def test_aggregators_that_need_each_update_are_refused(aggregator) -> None:
    with pytest.raises(ConfigurationError, match="needs every client's update"):
        _server(6, strategy=Strategy(aggregator, Sgd()))


def test_distributed_dp_needs_dp_and_a_fixed_clip() -> None:
    with pytest.raises(ConfigurationError, match="needs client-level DP"):
        _server(6, secure=SecureAggregation(distributed_dp=True))
    adaptive = DpAggregator(noise_multiplier=1.0, adaptive=AdaptiveClipping())
    with pytest.raises(ConfigurationError, match="adaptive clipping"):
        _server(
            6, strategy=Strategy(adaptive, Sgd()), secure=SecureAggregation(distributed_dp=True)
        )


def _model_and_data(seed: int = 0):
    data = synthetic([30] * 12, features=6, seed=seed)
    torch.manual_seed(seed)
    return models.LogisticRegression(6, 2).double(), data


@pytest.mark.parametrize("graph", ["secagg", "secagg+"])
def test_a_secure_simulation_trains_the_same_model_as_a_plain_one(graph) -> None:
    config = TrainConfig(local_epochs=1, learning_rate=0.5)
    runs = {}
    for name, secure in (("plain", None), ("secure", SecureAggregation(graph=graph))):
        model, data = _model_and_data()
        sim = Simulation(
            model=model,
            data=data,
            rounds=4,
            config=config,
            strategy=fedadam(learning_rate=0.05),
            seed=7,
            secure_aggregation=secure,
        )
        runs[name] = sim.run()
    plain, secure_run = runs["plain"], runs["secure"]
    np.testing.assert_allclose(secure_run.parameters, plain.parameters, atol=1e-4)
    for a, b in zip(plain.rounds, secure_run.rounds, strict=True):
        assert b.completed == a.completed == 12
        assert b.train_loss == pytest.approx(a.train_loss, abs=1e-3)
        assert b.bytes_received > a.bytes_received  # the protocol's keys and shares


def test_dropouts_during_a_secure_simulation_are_recovered() -> None:
    model, data = _model_and_data()
    sim = Simulation(
        model=model,
        data=data,
        rounds=5,
        config=TrainConfig(learning_rate=0.5),
        seed=3,
        dropout=0.25,
        secure_aggregation=SecureAggregation(dropout=0.25),
    )
    result = sim.run()
    dropped = [r.dropped for r in result.rounds]
    assert sum(d for d in dropped if d) > 0 and not sim.aborted
    assert all(r.completed and r.completed + r.dropped == 12 for r in result.rounds)
    assert result.rounds[-1].test_accuracy > 0.7


def test_central_dp_under_secure_aggregation_charges_the_usual_event(ledger) -> None:
    ledger.set_budget("synthetic/client", epsilon=50.0, delta=1e-5)
    model, data = _model_and_data()
    sim = Simulation(
        model=model,
        data=data,
        rounds=2,
        config=TrainConfig(learning_rate=0.5),
        strategy=Strategy(DpAggregator(noise_multiplier=1.0, clip_norm=0.5), Sgd()),
        sampling=ClientSampling(fraction=0.5, poisson=True),
        ledger=ledger,
        client_scope="synthetic/client",
        seed=1,
        secure_aggregation=SecureAggregation(),
    )
    assert sim.server.encoding is Encoding.CENTRAL_DP
    assert sim.server.round_event() == PoissonSampledEvent(0.5, GaussianEvent(1.0))
    result = sim.run()
    assert ledger.status("synthetic/client").events == 2
    assert result.rounds[-1].completed is None  # withheld under client-level DP


def test_distributed_dp_is_charged_without_amplification(ledger) -> None:
    server = _server(
        10,
        strategy=Strategy(DpAggregator(noise_multiplier=1.0, clip_norm=0.5), Sgd()),
        secure=SecureAggregation(distributed_dp=True),
        sampling=ClientSampling(fraction=0.5, poisson=True),
    )
    assert server.encoding is Encoding.DISTRIBUTED_DP
    # the server talks to the round's clients: sampling hides nobody from it
    assert server.round_event() == PoissonSampledEvent(1.0, GaussianEvent(1.0))


def _distributed_noise_sd(z: float, clip: float, dim: int) -> tuple[float, float]:
    """12 clients, all sampled, send zero updates; exactly the threshold survive. The released
    update times the expected count is the noise the survivors added; its sd against
    ``z · (C + √d g)``, the calibration for the threshold number of survivors."""
    server = _server(
        12,
        strategy=Strategy(DpAggregator(noise_multiplier=z, clip_norm=clip), Sgd()),
        secure=SecureAggregation(distributed_dp=True),
        dim=dim,
    )
    threshold = plan_round(12).threshold
    zeros = {f"c{i}": (np.zeros(dim), 1, 0.0) for i in range(12)}
    drop = {f"c{i}" for i in range(12 - threshold)}
    _, _, spec = _drive(server, zeros, drop=drop, reservation=_FakeReservation(server))
    noise = server.parameters * 12
    target = z * (clip + math.sqrt(dim) * spec.granularity)
    return float(noise.std()), target


class _FakeReservation:
    """Stands in for the ledger's pending reservation of the round's exact event."""

    def __init__(self, server: FederatedServer) -> None:
        self.event = server.round_event()
        self.status = "pending"


def _calibrated(sd: float, target: float, dim: int) -> bool:
    lo, hi = stats.chi2.ppf([5e-5, 1 - 5e-5], dim - 1) / (dim - 1) * target**2
    return bool(lo <= sd**2 <= hi)


def test_distributed_dp_noise_is_calibrated_for_the_threshold_of_survivors() -> None:
    sd, target = _distributed_noise_sd(1.2, 0.5, 40_000)
    assert _calibrated(sd, target, 40_000), f"sd {sd:.5f}, expected {target:.5f}"


def test_the_same_check_catches_noise_calibrated_for_every_sampled_client(monkeypatch) -> None:
    real = secure_mod.distributed_noise

    def for_everyone(**kw):  # the bug: assume all n clients survive to add noise
        return real(**{**kw, "threshold": kw["clients"]})

    monkeypatch.setattr(secure_mod, "distributed_noise", for_everyone)
    sd, target = _distributed_noise_sd(1.2, 0.5, 40_000)
    assert not _calibrated(sd, target, 40_000)
    assert sd == pytest.approx(target * math.sqrt(plan_round(12).threshold / 12), rel=0.03)


# -- choosing the graph and threshold ----------------------------------------------------------


@pytest.mark.parametrize("n", [3, 10, 50, 100, 1000])
@pytest.mark.parametrize("dropout", [0.0, 0.1, 0.3])
def test_plans_meet_their_failure_bound_with_a_majority_threshold(n, dropout) -> None:
    plan = plan_round(n, dropout=dropout)
    assert plan.degree % 2 == 0 or plan.complete
    assert plan.threshold > (plan.degree + 1) / 2
    assert plan.threshold <= plan.degree + 1
    if not plan.complete:
        assert plan.abort_probability <= 2.0**-20
    assert plan.abort_probability == pytest.approx(
        abort_probability(n, plan.degree, plan.threshold, dropout)
    )


def test_secagg_plus_degree_grows_like_log_n() -> None:
    degrees = [plan_round(n).degree for n in (100, 1_000, 10_000)]
    assert degrees == sorted(degrees) and degrees[-1] <= 48


def test_the_abort_bound_holds_in_simulation() -> None:
    """Drop clients at 30% on SecAgg+ graphs and count rounds some neighbourhood cannot
    finish; the plan's union bound must not be below the observed rate."""
    from veil.secagg.protocol import neighbours_harary

    n, dropout = 60, 0.3
    degree, threshold = 10, 6  # a weak plan, so that aborts are frequent enough to count
    bound = abort_probability(n, degree, threshold, dropout)
    rng = np.random.default_rng(0)
    graph = neighbours_harary(range(1, n + 1), degree=degree, rng=InsecureSeededRandom(1))
    aborts = 0
    trials = 2000
    for _ in range(trials):
        alive = {u for u in graph if rng.random() >= dropout}
        if any(len(graph[u] & alive) + (u in alive) < threshold for u in graph):
            aborts += 1
    assert aborts / trials <= bound + 3 * math.sqrt(bound / trials)
    assert aborts > 0


def test_plans_refuse_what_cannot_be_secure() -> None:
    with pytest.raises(ConfigurationError, match="at least 3 clients"):
        plan_round(2)
    with pytest.raises(ConfigurationError, match="graph"):
        plan_round(10, graph="ring")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="dropout"):
        plan_round(10, dropout=1.0)


def test_an_active_mode_simulation_signs_keys_and_lists_and_trains_the_same_model() -> None:
    config = TrainConfig(learning_rate=0.5)
    runs = {}
    for name, secure in (
        ("semi-honest", SecureAggregation()),
        ("active", SecureAggregation(active=True)),
    ):
        model, data = _model_and_data()
        sim = Simulation(
            model=model, data=data, rounds=3, config=config, seed=4, secure_aggregation=secure
        )
        runs[name] = sim.run()
        if name == "active":
            assert sim.server.enrolled is not None and len(sim.server.enrolled) == 12
            spec = sim.server.spec
            assert spec is not None and spec.active
            assert 3 * spec.plan.threshold > 2 * (spec.plan.degree + 1)
    np.testing.assert_allclose(runs["active"].parameters, runs["semi-honest"].parameters, atol=1e-4)


def test_the_active_mode_needs_every_client_enrolled() -> None:
    with pytest.raises(ConfigurationError, match="enrolled signing key"):
        _server(4, secure=SecureAggregation(active=True), enrolled={"c0": b"k" * 32})


def test_under_central_dp_a_quantised_update_stays_within_the_clip_norm() -> None:
    """The server noises the sum for contributions of norm at most C; a client's encoded
    update, rounded at random on the ring, must not exceed it (a long vector clipped to C
    exactly would, by up to √d steps)."""
    from veil.federated.secure import encode

    server = _server(
        5,
        strategy=Strategy(DpAggregator(noise_multiplier=1.0, clip_norm=0.5), Sgd()),
        dim=50_000,
    )
    spec = server.start_round(InsecureSeededRandom(0), reservation=_FakeReservation(server))[
        0
    ].secure
    assert spec is not None and spec.encoding is Encoding.CENTRAL_DP
    big = np.random.default_rng(1).normal(size=50_000)
    big *= 3 * 0.5 / np.linalg.norm(big)
    worst = 0.0
    for seed in range(20):
        words = encode(spec, TrainResult(1, "c0", big, 1), InsecureSeededRandom(seed))
        decoded = spec.quantizer().decode(words)
        worst = max(worst, float(np.linalg.norm(decoded)))
    assert worst <= 0.5
    assert worst > 0.5 * (1 - 1e-3)  # and the clipping costs next to nothing
