"""The coordinator and agents in one process (threads, plaintext on loopback): distributed DP
over the wire, and an agent refusing a round weaker than the settings it agreed to."""

from __future__ import annotations

import threading
from pathlib import Path

from deploy_support import HOSPITALS

from veil.deploy import Agent, Coordinator, FederationConfig, ModelSpec
from veil.federated import SecureAggregation
from veil.federated.data import FederatedData
from veil.ledger import Ledger


def config(tmp_path: Path, **settings: object) -> FederationConfig:
    fields: dict[str, object] = {
        "name": "hospitals",
        "clients": HOSPITALS,
        "rounds": 3,
        "model": ModelSpec(features=30),
        "state": tmp_path / "coordinator.sqlite",
        "stage_seconds": 20.0,
        "min_clients": 3,
        "secure": "secagg",
        "secure_dropout": 0.34,
        "dp": "distributed",
        "noise_multiplier": 1.0,
        "clip_norm": 1.0,
        "ledger": tmp_path / "ledger.sqlite",
        "scope": "hospitals/client",
        "epsilon": 100.0,
    }
    return FederationConfig(**{**fields, **settings})  # type: ignore[arg-type]


def run_agents(
    co: Coordinator, data: FederatedData, noise: list[float]
) -> list[Agent | BaseException]:
    outcomes: list[Agent | BaseException] = [RuntimeError("not run")] * len(HOSPITALS)

    def one(i: int) -> None:
        part = data.client(i)
        agent = Agent(
            f"127.0.0.1:{co.port}",
            x=part.x.numpy(),
            y=part.y.numpy(),
            name=HOSPITALS[i],
            retry_seconds=5.0,
            secure=SecureAggregation(graph="secagg", dropout=0.34, distributed_dp=True),
            noise_multiplier=noise[i],
        )
        try:
            agent.run()
            outcomes[i] = agent
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(HOSPITALS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return outcomes


def test_distributed_dp_over_the_wire_charges_each_round_once(
    tmp_path: Path, federation_data: FederatedData
) -> None:
    co = Coordinator(config(tmp_path), insecure=True, port=0)
    co.start()
    try:
        outcomes = run_agents(co, federation_data, [1.0, 1.0, 1.0])
        assert co.wait(30)
    finally:
        co.stop(grace=0.1)
    assert co.error is None
    for outcome in outcomes:
        assert isinstance(outcome, Agent), outcome
        assert outcome.report.rounds == [1, 2, 3]
    ledger = Ledger(str(tmp_path / "ledger.sqlite"))
    try:
        reserves = [e for e in ledger.history("hospitals/client") if e.kind == "reserve"]
    finally:
        ledger.close()
    assert [e.status for e in reserves] == ["committed"] * 3


def test_an_agent_refuses_less_noise_than_it_agreed_to(
    tmp_path: Path, federation_data: FederatedData
) -> None:
    """hospital-c agreed to noise multiplier 2; the coordinator asks for the noise of 1: it
    refuses the round (and stays for the next) and the round cannot complete without it."""
    co = Coordinator(config(tmp_path, rounds=1, stage_seconds=3.0), insecure=True, port=0)
    co.start()
    try:
        outcomes = run_agents(co, federation_data, [1.0, 1.0, 2.0])
        assert co.wait(30)
    finally:
        co.stop(grace=0.1)
    refused = outcomes[2]
    # the hospital refuses that round and stays for the next (here there is none)
    assert not isinstance(refused, BaseException), refused
    assert refused.report.missed == [1] and refused.report.rounds == []
    closed = co.status()["history"]
    assert closed[0]["aggregated"] is False  # aborted: fewer than the threshold unmasked
