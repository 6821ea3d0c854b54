"""End to end on loopback, every party a real ``veil`` process over mutual TLS."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import numpy as np
import pytest
from deploy_support import FOUR, HOSPITALS, Proc, free_port, join_args, write_config

from veil.deploy import ModelSpec, StateStore
from veil.federated import SecureAggregation, Simulation, TrainConfig
from veil.federated.data import FederatedData
from veil.ledger import Ledger
from veil.secagg.quantize import Quantizer

pytestmark = pytest.mark.slow


def final_model(folder: Path) -> tuple[int, np.ndarray]:
    store = StateStore(folder / "coordinator.sqlite")
    try:
        latest = store.latest()
    finally:
        store.close()
    assert latest is not None
    return latest[0], latest[1]["parameters"]


def test_secure_aggregation_matches_the_simulator(
    tmp_path: Path, pki: Path, data_files: Path, federation_data: FederatedData, procs: list[Proc]
) -> None:
    """A coordinator and three agents over mutual TLS under SecAgg end with the model the
    simulator computes from the same data, initial model and settings.

    Not bit for bit: each party rounds its weighted update stochastically into Z_2^32 with its
    own generator (in the simulator all parties share one seeded stream), so the two weighted
    sums differ by less than n quantisation steps per coordinate and round, and the means by
    that over the sum of the weights (examples / max_weight: about 0.04 here, so up to about
    1e-6 per round); float32 training of one client alone and of the stacked cohort differ in
    the last bits too (1e-6 allowed for that)."""
    port = free_port()
    config = write_config(tmp_path, pki, port=port, **{"federation.stage_seconds": 30.0})
    coordinator = Proc(tmp_path, "coordinator", "fl", "serve", "--config", str(config))
    procs.append(coordinator)
    for name in HOSPITALS:
        procs.append(Proc(tmp_path, name, *join_args(port, pki, data_files, name)))
    assert coordinator.wait() == 0, coordinator.text()
    for p in procs[1:]:
        assert p.wait(30) == 0, p.text()
        assert "took part in rounds [1, 2, 3]" in p.text()
    rounds, deployed = final_model(tmp_path)
    assert rounds == 3
    model = ModelSpec(features=30).build()
    initial = np.concatenate([p.detach().double().numpy().ravel() for p in model.parameters()])
    sim = Simulation(
        model=model,
        data=federation_data,
        rounds=3,
        config=TrainConfig(local_epochs=1, learning_rate=0.1),
        secure_aggregation=SecureAggregation(graph="secagg", dropout=0.34),
        seed=0,
    )
    simulated = sim.run().parameters
    assert np.abs(simulated - initial).max() > 0.05  # the model did move
    settings = SecureAggregation(graph="secagg", dropout=0.34)
    step = Quantizer(clip=settings.clip, clients=3).resolution
    weights = sum(min(n, settings.max_weight) for n in federation_data.sizes())
    bound = 3 * (3 * step) / (weights / settings.max_weight) + 1e-6
    assert bound < 1e-5
    np.testing.assert_allclose(deployed, simulated, rtol=0, atol=bound)
    closed = [e for e in procs[0].events() if e["event"] == "round_closed"]
    assert [e["completed"] for e in closed] == [3, 3, 3]
    assert all(e["bytes_received"] > 0 and e["bytes_sent"] > 0 for e in closed)


def test_secure_aggregation_with_dp_and_a_client_killed_mid_round(
    tmp_path: Path, pki: Path, four_data_files: Path, procs: list[Proc]
) -> None:
    """SecAgg with central DP among four hospitals (the threshold is 3): hospital-d is killed
    with SIGKILL after it shared its keys (while it trains); the round completes with the other
    three, its masks recovered; it comes back and takes part in the next round; each round is
    charged once in the ledger.

    A kill, not a straggler: hospital-d takes 5 s more than the others, well inside the
    stage's 20 s, so alive it would have been in the round; its exit status says SIGKILL, and
    the coordinator's log says why it dropped."""
    data_files = four_data_files
    port = free_port()
    config = write_config(
        tmp_path,
        pki,
        port=port,
        **{
            "federation.rounds": 4,
            "federation.stage_seconds": 20.0,
            "federation.clients": list(FOUR),
            "federation.min_clients": 4,  # each round starts once all four are connected
            "dp.mode": "client",
            "dp.noise_multiplier": 2.0,
            "dp.clip_norm": 1.0,
            "dp.ledger": "ledger.sqlite",
            "dp.scope": "hospitals/client",
            "dp.epsilon": 50.0,
            "dp.delta": 1e-5,
        },
    )
    coordinator = Proc(tmp_path, "coordinator", "fl", "serve", "--config", str(config))
    procs.append(coordinator)
    # the agents check every round against the secure aggregation they agreed to
    own = ("--secure-aggregation", "secagg", "--dropout", "0.34")
    for name in HOSPITALS:
        procs.append(Proc(tmp_path, name, *join_args(port, pki, data_files, name, *own)))
    slow = join_args(port, pki, data_files, "hospital-d", "--straggle", "5", *own)
    d = Proc(tmp_path, "d", *slow)
    procs.append(d)
    coordinator.wait_event(
        lambda e: e["event"] == "stage_closed" and e["stage"] == "share" and e["got"] == 4
    )
    d.kill()
    assert d.popen.returncode == -signal.SIGKILL
    first = coordinator.wait_event(lambda e: e["event"] == "round_closed")
    assert first["round"] == 1
    assert first["completed"] == 3
    assert first["dropped"] == ["hospital-d"]
    assert first["aggregated"]
    (why,) = [
        e
        for e in coordinator.events()
        if e["event"] == "client_dropped" and e["client"] == "hospital-d" and e["round"] == 1
    ]
    assert why["stage"] == "masked"
    assert "no masked message before the deadline" in why["reason"]
    assert "round_done" not in d.err.read_text()  # it never finished round 1
    back = Proc(tmp_path, "d-again", *join_args(port, pki, data_files, "hospital-d", *own))
    procs.append(back)
    assert coordinator.wait() == 0, coordinator.text()
    closed = [e for e in coordinator.events() if e["event"] == "round_closed"]
    assert [e["round"] for e in closed] == [1, 2, 3, 4]
    assert all(e["aggregated"] for e in closed)
    assert [e["completed"] for e in closed] == [3, 4, 4, 4]  # hospital-d rejoined at round 2
    assert back.wait(30) == 0, back.text()
    took_part = re.search(r"took part in rounds \[([0-9, ]+)\]", back.text())
    assert took_part is not None
    assert took_part.group(1) == "2, 3, 4"
    ledger = Ledger(str(tmp_path / "ledger.sqlite"))
    try:
        reserves = [e for e in ledger.history("hospitals/client") if e.kind == "reserve"]
        status = ledger.status("hospitals/client")
    finally:
        ledger.close()
    assert len(reserves) == 4
    assert {e.status for e in reserves} == {"committed"}
    assert all(e.event is not None and "Gaussian(σ/Δ₂=2)" in e.event.describe() for e in reserves)
    assert status.pending == 0


def test_coordinator_killed_and_restarted_resumes_without_double_charging(
    tmp_path: Path, pki: Path, data_files: Path, procs: list[Proc]
) -> None:
    """SIGKILL of the coordinator in the middle of round 3 (paid for, not finished); a new
    coordinator on the same database resumes after round 2, abandons round 3's reservation
    (nothing of that round had left it) and runs round 3 again under a new one, and the
    agents reconnect by themselves. Four rounds, four charges."""
    port = free_port()
    config = write_config(
        tmp_path,
        pki,
        port=port,
        **{
            "federation.rounds": 4,
            "federation.stage_seconds": 8.0,
            "dp.mode": "client",
            "dp.noise_multiplier": 2.0,
            "dp.clip_norm": 1.0,
            "dp.ledger": "ledger.sqlite",
            "dp.scope": "hospitals/client",
            "dp.epsilon": 50.0,
            "dp.delta": 1e-5,
        },
    )
    first = Proc(tmp_path, "coordinator", "fl", "serve", "--config", str(config))
    procs.append(first)
    for name in HOSPITALS:
        # hospital-c takes a second more per round, so a round lasts long enough to be cut
        extra = ("--straggle", "1.5") if name == "hospital-c" else ()
        procs.append(Proc(tmp_path, name, *join_args(port, pki, data_files, name, *extra)))
    first.wait_event(lambda e: e["event"] == "round_started" and e["round"] == 3)
    first.kill()
    assert not any(e["event"] == "round_closed" and e["round"] == 3 for e in first.events())
    second = Proc(tmp_path, "coordinator-2", "fl", "serve", "--config", str(config))
    procs.append(second)
    assert second.wait() == 0, second.text()
    events = second.events()
    assert {"event": "resumed", "round": 2}.items() <= next(
        e for e in events if e["event"] == "resumed"
    ).items()
    assert any(e["event"] == "reservation_abandoned_on_resume" and e["round"] == 3 for e in events)
    assert [e["round"] for e in events if e["event"] == "round_closed"] == [3, 4]
    for p in procs[1:4]:
        assert p.wait(30) == 0, p.text()
    rounds, _ = final_model(tmp_path)
    assert rounds == 4
    ledger = Ledger(str(tmp_path / "ledger.sqlite"))
    try:
        reserves = [e for e in ledger.history("hospitals/client") if e.kind == "reserve"]
        status = ledger.status("hospitals/client")
    finally:
        ledger.close()
    assert [e.status for e in reserves] == ["committed"] * 2 + ["abandoned"] + ["committed"] * 2
    assert (status.events, status.pending, status.abandoned) == (4, 0, 1)
