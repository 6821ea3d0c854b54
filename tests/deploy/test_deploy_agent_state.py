"""The agent's round guard survives a restart: a coordinator that starts its federation over
(or lies about the round) cannot get a restarted hospital to take part in a round twice."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from deploy_support import HOSPITALS

from veil.deploy import Agent, Coordinator, FederationConfig, ModelSpec
from veil.errors import ConfigurationError, RemoteProtocolError
from veil.federated.secure import RoundGuard


def test_a_persisted_guard_refuses_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "guard.json"
    guard = RoundGuard(path)
    guard.admit(b"federation-a", 3)
    assert path.stat().st_mode & 0o077 == 0  # only the agent's user reads it
    again = RoundGuard(path)
    with pytest.raises(RemoteProtocolError, match="already took part"):
        again.admit(b"federation-a", 3)
    again.admit(b"federation-a", 4)
    again.admit(b"federation-b", 1)  # another federation has its own rounds
    third = RoundGuard(path)
    for scope, round_ in ((b"federation-a", 4), (b"federation-b", 1)):
        with pytest.raises(RemoteProtocolError):
            third.admit(scope, round_)
    assert not list(path.parent.glob(".*.tmp"))  # the temporary file was renamed


def test_an_unreadable_guard_is_an_error_not_an_empty_memory(tmp_path: Path) -> None:
    path = tmp_path / "guard.json"
    path.write_text('{"version": 1, "last": {"zz": 3}}')
    with pytest.raises(ConfigurationError, match="cannot be read"):
        RoundGuard(path)
    path.write_text("{")
    with pytest.raises(ConfigurationError, match="restore it from a backup"):
        RoundGuard(path)


def config(tmp_path: Path, state: str, stage_seconds: float) -> FederationConfig:
    return FederationConfig(
        name="hospitals",
        clients=HOSPITALS,
        rounds=1,
        model=ModelSpec(features=30),
        state=tmp_path / state,
        stage_seconds=stage_seconds,
        min_clients=3,
        secure="secagg",
        secure_dropout=0.34,
    )


def run(co: Coordinator, data_files: Path, guards: Path) -> list[Agent]:
    agents = []
    for name in HOSPITALS:
        with np.load(data_files / f"{name}.npz") as npz:
            x, y = npz["x"], npz["y"]
        agents.append(
            Agent(
                f"127.0.0.1:{co.port}",
                x=x,
                y=y,
                name=name,
                retry_seconds=5.0,
                guard_file=guards / f"{name}.rounds.json",
            )
        )
    threads = [threading.Thread(target=a.run) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return agents


def test_restarted_agents_refuse_a_round_they_took_part_in(
    tmp_path: Path, data_files: Path
) -> None:
    """Round 1 runs; then a coordinator that starts the federation over (a fresh database)
    asks the restarted agents (new processes, same guard files) for round 1 again: they
    refuse, and the round aborts without them."""
    first = Coordinator(config(tmp_path, "first.sqlite", 20.0), insecure=True, port=0)
    first.start()
    try:
        agents = run(first, data_files, tmp_path)
        assert first.wait(60)
    finally:
        first.stop(grace=0.1)
    assert [a.report.rounds for a in agents] == [[1]] * 3
    second = Coordinator(config(tmp_path, "second.sqlite", 4.0), insecure=True, port=0)
    second.start()
    try:
        agents = run(second, data_files, tmp_path)
        assert second.wait(60)
    finally:
        second.stop(grace=0.1)
    assert [a.report.rounds for a in agents] == [[]] * 3
    assert [a.report.missed for a in agents] == [[1]] * 3
    assert second.status()["history"][0]["aggregated"] is False


def test_an_agent_joins_a_federation_without_secure_aggregation_only_when_told(
    tmp_path: Path, data_files: Path
) -> None:
    """Without secure aggregation the coordinator sees each hospital's update: the agent
    refuses to join unless its operator passed --allow-plain-updates (and always when it was
    given secure-aggregation settings), and takes part when allowed."""
    from veil.federated import SecureAggregation

    plain = FederationConfig(
        name="hospitals",
        clients=HOSPITALS,
        rounds=1,
        model=ModelSpec(features=30),
        state=tmp_path / "plain.sqlite",
        stage_seconds=20.0,
        min_clients=1,
    )
    co = Coordinator(plain, insecure=True, port=0)
    co.start()
    try:
        with np.load(data_files / "hospital-a.npz") as npz:
            x, y = npz["x"], npz["y"]
        target = f"127.0.0.1:{co.port}"
        with pytest.raises(ConfigurationError, match="--allow-plain-updates"):
            Agent(target, x=x, y=y, name="hospital-a", retry_seconds=5.0).run()
        with pytest.raises(ConfigurationError, match="without secure aggregation"):
            Agent(
                target,
                x=x,
                y=y,
                name="hospital-a",
                retry_seconds=5.0,
                allow_plain=True,
                secure=SecureAggregation(graph="secagg"),
            ).run()
        assert co.status()["round"] == 0  # nobody took part
        agent = Agent(target, x=x, y=y, name="hospital-a", retry_seconds=5.0, allow_plain=True)
        agent.run()
        assert co.wait(60)
    finally:
        co.stop(grace=0.1)
    assert agent.report.rounds == [1]
