"""Federated rounds under secure aggregation: the server sees only sums, and they are right."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from tests.federated.conftest import synthetic

from veil.errors import ConfigurationError, DataError, LocalProtocolError, RemoteProtocolError
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
    # what reached the server: 32-bit words that differ from every client's own encoding
    assert all(m.vector.dtype == np.uint32 for m in masked)
    quantizer = spec.quantizer()
    for m in masked:
        c = spec.clients[m.client - 1]
        w = min(updates[c][1], spec.max_weight) / spec.max_weight
        plain = quantizer.encode(np.concatenate([w * updates[c][0], [w * spec.clip, 0.0]]))
        assert np.mean(m.vector == plain) < 0.01


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
    # not amplified: the server knows who took part, and whether a sum is released at all
    # depends on how many did
    assert sim.server.round_event() == PoissonSampledEvent(1.0, GaussianEvent(1.0))
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
    # exactly the fewest survivors the round accepts (the 2^-20 quantile of Bin(12, 0.9))
    least = plan_round(12).min_survivors
    zeros = {f"c{i}": (np.zeros(dim), 1, 0.0) for i in range(12)}
    drop = {f"c{i}" for i in range(12 - least)}
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
    assert sd == pytest.approx(target * math.sqrt(plan_round(12).min_survivors / 12), rel=0.03)


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


def test_central_dp_under_secure_aggregation_adds_the_calibrated_noise() -> None:
    """Zero updates from 8 clients, all survive: the released update times the expected count
    is the server's noise, sd z·C; a server that forgot the noise would release zeros."""
    dim = 40_000
    server = _server(
        8,
        strategy=Strategy(DpAggregator(noise_multiplier=1.1, clip_norm=0.5), Sgd()),
        dim=dim,
    )
    zeros = {f"c{i}": (np.zeros(dim), 1, 0.0) for i in range(8)}
    _drive(server, zeros, reservation=_FakeReservation(server))
    noise = server.parameters * 8
    assert _calibrated(float(noise.std()), 1.1 * 0.5, dim)
    assert not _calibrated(float(noise.std()), 1.1 * 0.5 * 0.9, dim)


def test_adaptive_clipping_counts_the_clients_within_the_norm_securely() -> None:
    agg = DpAggregator(
        noise_multiplier=0.5,
        adaptive=AdaptiveClipping(initial_clip_norm=1.0, count_noise=0.3),
    )
    server = _server(9, strategy=Strategy(agg, Sgd()), dim=4)
    rng = np.random.default_rng(0)
    updates = {}
    for i in range(9):  # 6 of 9 within the clip norm
        u = rng.normal(size=4)
        u *= (0.5 if i < 6 else 3.0) / np.linalg.norm(u)
        updates[f"c{i}"] = u
    instructions = server.start_round(InsecureSeededRandom(1), reservation=_FakeReservation(server))
    spec = instructions[0].secure
    clients = {i.client_id: SecureClient(i, rng=InsecureSeededRandom(2)) for i in instructions}
    srv = SecureServerRound(spec)
    d = srv.collect_keys([c.advertise() for c in clients.values()])
    routed = srv.collect_shares([clients[c].share_keys(d) for c in spec.clients])
    masked = []
    for c in spec.clients:
        within = float(np.linalg.norm(updates[c]) <= agg.clip_norm)
        result = TrainResult(server.round, c, updates[c], 1, {"within_clip": within})
        masked.append(clients[c].masked_input(routed[spec.number(c)], result))
    request = srv.collect_masked(masked)
    summed = srv.finish([clients[c].unmask(request) for c in spec.clients])
    assert summed.metrics["within_clip"] == pytest.approx(6, abs=1e-6)
    before = agg.clip_norm
    server.close_round(InsecureSeededRandom(3), summed=summed)
    # 6/9 within against a target of 1/2: the clip norm shrinks by about exp(-0.2 (2/3 - 1/2))
    # (the count noise 2·0.3 moves the fraction by about 0.6/9)
    assert agg.clip_norm < before * math.exp(-0.2 * (6 / 9 - 0.5 - 3 * 0.6 / 9))


# -- a server that deviates from the protocol --------------------------------------------


def _first_round(n: int, settings: SecureAggregation | None = None, **kw):
    server = _server(n, secure=settings or SecureAggregation(), **kw)
    return server, server.start_round(InsecureSeededRandom(0))


def test_a_client_refuses_to_mask_when_the_server_withholds_its_neighbours_shares() -> None:
    """The attack: send the target no shares, so that it masks with its self-mask only, then
    ask its neighbours for that self-mask's shares. The target refuses to send its input."""
    from veil.secagg.protocol import SharesForYou, UnmaskRequest

    server, instructions = _first_round(5)
    spec = instructions[0].secure
    clients = {
        i.client_id: SecureClient(i, rng=InsecureSeededRandom(4), settings=server.secure)
        for i in instructions
    }
    srv = SecureServerRound(spec)
    d = srv.collect_keys([c.advertise() for c in clients.values()])
    routed = srv.collect_shares([clients[c].share_keys(d) for c in spec.clients])
    result = TrainResult(1, "c0", np.ones(3), 1, {"train_loss": 0.0})
    with pytest.raises(RemoteProtocolError, match="only 0 neighbours shared keys"):
        clients["c0"].masked_input(SharesForYou({}), result)
    # and a client does not answer for a neighbour it never masked with
    partial = SharesForYou({u: b for u, b in routed[2].sealed.items() if u != 1})
    clients["c1"].masked_input(partial, TrainResult(1, "c1", np.ones(3), 1, {"train_loss": 0.0}))
    with pytest.raises(RemoteProtocolError, match="never shared keys"):
        clients["c1"].unmask(UnmaskRequest(frozenset({1, 2, 3, 4, 5}), frozenset()))


def test_a_client_refuses_a_lower_threshold_another_graph_or_another_mode() -> None:
    import dataclasses as dc

    from veil.secagg.protocol import neighbours_harary

    settings = SecureAggregation(graph="secagg+", dropout=0.1)
    server, instructions = _first_round(60, settings)
    spec = instructions[0].secure
    assert spec is not None and not spec.plan.complete
    lower = dc.replace(spec, plan=dc.replace(spec.plan, threshold=spec.plan.threshold - 1))
    with pytest.raises(RemoteProtocolError, match="this client's settings give"):
        SecureClient(
            dc.replace(instructions[0], secure=lower),
            rng=InsecureSeededRandom(0),
            settings=settings,
        )
    active = SecureAggregation(graph="secagg+", dropout=0.1, active=True)
    with pytest.raises(RemoteProtocolError):
        SecureClient(instructions[0], rng=InsecureSeededRandom(0), settings=active)
    clients = {
        i.client_id: SecureClient(i, rng=InsecureSeededRandom(1), settings=settings)
        for i in instructions
    }
    srv = SecureServerRound(spec)
    d = srv.collect_keys([c.advertise() for c in clients.values()])
    chosen = neighbours_harary(sorted(d.keys), degree=spec.plan.degree, rng=InsecureSeededRandom(9))
    with pytest.raises(RemoteProtocolError, match="graph is not the one"):
        clients["c0"].share_keys(dc.replace(d, neighbours=chosen))
    clients["c1"].share_keys(d)  # the graph the keys determine is accepted


def test_a_client_refuses_a_round_it_already_took_part_in() -> None:
    from veil.federated.secure import RoundGuard

    _, instructions = _first_round(4)
    guard = RoundGuard()
    SecureClient(instructions[0], rng=InsecureSeededRandom(0), guard=guard)
    with pytest.raises(RemoteProtocolError, match="not newer"):
        SecureClient(instructions[0], rng=InsecureSeededRandom(0), guard=guard)


def test_in_the_active_mode_a_client_trusts_its_own_enrolment_not_the_spec() -> None:
    import dataclasses as dc

    from veil.secagg.crypto import SigningKey

    keys = {f"c{i}": SigningKey() for i in range(4)}
    enrolled = {c: k.public for c, k in keys.items()}
    settings = SecureAggregation(active=True)
    _, instructions = _first_round(4, settings, enrolled=enrolled)
    spec = instructions[0].secure
    impostors = tuple(SigningKey().public for _ in spec.clients)
    swapped = dc.replace(instructions[1], secure=dc.replace(spec, verify_keys=impostors))
    client = SecureClient(
        swapped,
        rng=InsecureSeededRandom(0),
        settings=settings,
        signing_key=keys["c1"],
        enrolled=enrolled,
    )
    assert client.inner._verify_keys == {i + 1: enrolled[c] for i, c in enumerate(spec.clients)}
    off = dc.replace(instructions[1], secure=dc.replace(spec, verify_keys=()))
    with pytest.raises(RemoteProtocolError, match="active mode"):
        SecureClient(
            off,
            rng=InsecureSeededRandom(0),
            settings=settings,
            signing_key=keys["c1"],
            enrolled=enrolled,
        )


def test_a_client_that_cannot_encode_its_update_drops_out_of_the_simulation(monkeypatch) -> None:
    model, data = _model_and_data()
    sim = Simulation(
        model=model,
        data=data,
        rounds=2,
        config=TrainConfig(learning_rate=0.5),
        seed=1,
        secure_aggregation=SecureAggregation(),
    )
    real = secure_mod.encode

    def broken(spec, result, rng):
        if result.client_id == "c3":
            raise DataError("a broken client")
        return real(spec, result, rng)

    monkeypatch.setattr(secure_mod, "encode", broken)
    result = sim.run()
    assert all(r.completed == 11 and r.dropped == 1 for r in result.rounds)


def test_distributed_dp_refuses_a_non_finite_update() -> None:
    from veil.federated.secure import encode

    server = _server(
        5,
        strategy=Strategy(DpAggregator(noise_multiplier=1.0, clip_norm=0.5), Sgd()),
        secure=SecureAggregation(distributed_dp=True),
    )
    instructions = server.start_round(InsecureSeededRandom(0), reservation=_FakeReservation(server))
    spec = instructions[0].secure
    with pytest.raises(DataError, match="finite"):
        encode(spec, TrainResult(1, "c0", np.array([np.nan, 0.0, 0.0]), 1), InsecureSeededRandom(0))


def test_a_three_client_round_needs_all_three() -> None:
    assert plan_round(3).threshold == 3


def test_a_guard_scoped_to_the_federation_refuses_a_round_rerun_under_a_new_session() -> None:
    """A coordinator that restarts (or lies) picks a new session; a client that scopes its
    guard to its federation still refuses a round number it already took part in."""
    import dataclasses as dc

    from veil.federated.secure import RoundGuard

    _, instructions = _first_round(4)
    spec = instructions[0].secure
    rerun = dc.replace(instructions[0], secure=dc.replace(spec, session=b"another session"))
    guard = RoundGuard()
    SecureClient(instructions[0], rng=InsecureSeededRandom(0), guard=guard, guard_scope=b"fed")
    with pytest.raises(RemoteProtocolError, match="not newer"):
        SecureClient(rerun, rng=InsecureSeededRandom(0), guard=guard, guard_scope=b"fed")
    # scoped by session (the default), the rerun would have passed
    SecureClient(rerun, rng=InsecureSeededRandom(0), guard=RoundGuard())


@pytest.mark.parametrize(
    ("stage", "released"), [("collect_shares", False), ("finish", True)], ids=["shares", "unmask"]
)
def test_a_distributed_dp_round_that_aborts_before_unmasking_is_not_charged(
    ledger, monkeypatch, stage, released
) -> None:
    """The clients' noise is inside the masked sum: a round that aborts before anyone is asked
    for unmasking shares released nothing, and its reservation is abandoned. Once shares were
    asked for, the round pays even if it then aborts."""
    ledger.set_budget("synthetic/client", epsilon=50.0, delta=1e-5)
    real = getattr(SecureServerRound, stage)

    def aborts_in_round_one(self, *args, **kwargs):
        if self.spec.round == 1:
            raise RemoteProtocolError("too few survivors")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SecureServerRound, stage, aborts_in_round_one)
    model, data = _model_and_data()
    sim = Simulation(
        model=model,
        data=data,
        rounds=2,
        config=TrainConfig(learning_rate=0.5),
        strategy=Strategy(DpAggregator(noise_multiplier=1.0, clip_norm=0.5), Sgd()),
        ledger=ledger,
        client_scope="synthetic/client",
        seed=1,
        secure_aggregation=SecureAggregation(distributed_dp=True),
    )
    sim.run()
    assert len(sim.aborted) == 1
    status = ledger.status("synthetic/client")
    assert (status.events, status.abandoned) == ((2, 0) if released else (1, 1))
