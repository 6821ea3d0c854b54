"""Secure aggregation's active mode over the wire: the hospitals sign their keys and the
survivor lists with signing keys pinned in the consortium's roster, so a coordinator cannot
add a client of its own."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from deploy_support import HOSPITALS, poll

from veil.deploy import Agent, Coordinator, FederationConfig, ModelSpec
from veil.deploy.roster import load_roster, load_signing_key, make_signing_key, write_roster
from veil.errors import ConfigurationError
from veil.federated import SecureAggregation

SETTINGS = SecureAggregation(graph="secagg", dropout=0.0, active=True)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    for name in HOSPITALS:
        make_signing_key(folder, name)
    write_roster(folder, HOSPITALS, folder / "roster.json")
    return folder


def config(tmp_path: Path, roster: Path, stage_seconds: float = 20.0) -> FederationConfig:
    return FederationConfig(
        name="hospitals",
        clients=HOSPITALS,
        rounds=1,
        model=ModelSpec(features=30),
        state=tmp_path / "coordinator.sqlite",
        stage_seconds=stage_seconds,
        min_clients=3,
        secure="secagg",
        secure_dropout=0.0,
        secure_active=True,
        roster=roster,
    )


def agent(
    co: Coordinator, data_files: Path, keys: Path, name: str, roster: Path | None = None
) -> Agent:
    with np.load(data_files / f"{name}.npz") as npz:
        x, y = npz["x"], npz["y"]
    return Agent(
        f"127.0.0.1:{co.port}",
        x=x,
        y=y,
        name=name,
        retry_seconds=5.0,
        secure=SETTINGS,
        roster=load_roster(roster or keys / "roster.json"),
        signing_key=load_signing_key(keys / f"{name}.sign.key"),
    )


def run(agents: list[Agent]) -> None:
    threads = [threading.Thread(target=a.run) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


def test_an_active_round_over_the_wire(tmp_path: Path, data_files: Path, keys: Path) -> None:
    co = Coordinator(config(tmp_path, keys / "roster.json"), insecure=True, port=0)
    co.start()
    try:
        agents = [agent(co, data_files, keys, name) for name in HOSPITALS]
        run(agents)
        assert co.wait(60)
    finally:
        co.stop(grace=0.1)
    assert co.error is None
    assert [a.report.rounds for a in agents] == [[1]] * 3
    (closed,) = co.status()["history"]
    assert closed["aggregated"] is True
    assert closed["completed"] == 3


def puppet(co: Coordinator, impostor: Any, forged: dict[str, bytes]) -> None:
    """The coordinator's own "hospital-c": an honest client through one active round, but
    signing with a key the coordinator chose (and training on nothing)."""
    from veil.deploy import codec
    from veil.deploy.coordinator import SERVICE
    from veil.deploy.proto import federation_pb2 as pb
    from veil.federated.messages import TrainInstruction, TrainResult
    from veil.federated.secure import SecureClient
    from veil.privacy.random import SecureRandom

    meta = (("veil-client", "hospital-c"),)
    ch, stream = poll(co, "hospital-c", wait=60.0)
    with ch, contextlib.suppress(grpc.RpcError):  # refused: the round went on without it
        chunks = [pb.Chunk.FromString(c) for c in stream]
        header = chunks[0].task
        number = header.round
        model = np.frombuffer(b"".join(c.data for c in chunks[1:]), dtype=header.dtype)
        spec = codec.spec_from_pb(header.secure)
        instruction = TrainInstruction(
            number, "hospital-c", model, codec.config_from_pb(header.config), spec
        )
        client = SecureClient(
            instruction, rng=SecureRandom(), signing_key=impostor, enrolled=forged
        )

        def unary(method: str, message: Any, reply: Any) -> Any:
            raw = ch.unary_unary(f"/{SERVICE}/{method}")(
                message.SerializeToString(), timeout=60, metadata=meta
            )
            return reply.FromString(raw)

        directory = unary(
            "Advertise", codec.advertise_to_pb(number, client.advertise()), pb.KeyDirectory
        )
        shares = client.share_keys(codec.directory_from_pb(directory))
        routed = unary("Share", codec.share_keys_to_pb(number, shares), pb.SharesForYou)
        nothing = TrainResult(number, "hospital-c", np.zeros_like(model), 1, {})
        masked = client.masked_input(codec.shares_for_you_from_pb(routed), nothing)
        head = pb.Chunk(
            header=pb.ChunkHeader(
                round=number, dtype="uint32", length=masked.vector.size, client=masked.client
            )
        )
        raw = ch.stream_unary(f"/{SERVICE}/SubmitMasked")(
            (m.SerializeToString() for m in codec.chunks(head, masked.vector)),
            timeout=60,
            metadata=meta,
        )
        request = codec.request_from_pb(pb.UnmaskRequest.FromString(raw))
        check = codec.consistency_to_pb(number, client.consistency(request))
        proof = codec.proof_from_pb(unary("Consistency", check, pb.ConsistencyProof))
        unary("Unmask", codec.unmask_to_pb(number, client.unmask(proof)), pb.RoundDone)


@pytest.mark.parametrize("pinned", [False, True])
def test_pinned_agents_refuse_a_client_the_coordinator_enrolled_itself(
    tmp_path: Path, data_files: Path, keys: Path, pinned: bool
) -> None:
    """The coordinator's roster swaps hospital-c's key for one it holds, and it plays
    hospital-c itself. Agents that take the coordinator's roster (pinned=False, the control)
    complete the round with the puppet; hospital-a and hospital-b pinned to the consortium's
    roster see keys signed by a key their roster does not name and refuse the round."""
    from veil.secagg.crypto import SigningKey

    impostor = SigningKey()
    forged = {**load_roster(keys / "roster.json"), "hospital-c": impostor.public}
    (tmp_path / "forged.json").write_text(json.dumps({k: v.hex() for k, v in forged.items()}))
    co = Coordinator(config(tmp_path, tmp_path / "forged.json", 5.0), insecure=True, port=0)
    co.start()
    fake = threading.Thread(target=puppet, args=(co, impostor, forged))
    try:
        fake.start()
        roster = keys / "roster.json" if pinned else tmp_path / "forged.json"
        agents = [agent(co, data_files, keys, name, roster) for name in HOSPITALS[:2]]
        run(agents)
        assert co.wait(60)
        fake.join(60)
    finally:
        co.stop(grace=0.1)
    (closed,) = co.status()["history"]
    if pinned:
        assert [a.report.missed for a in agents] == [[1], [1]]
        assert closed["aggregated"] is False
    else:
        assert [a.report.rounds for a in agents] == [[1], [1]]
        assert closed["aggregated"] is True and closed["completed"] == 3


def test_the_active_mode_needs_the_roster_and_the_key(keys: Path) -> None:
    x, y = np.zeros((2, 30), np.float32), np.zeros(2, np.int64)
    with pytest.raises(ConfigurationError, match="active mode takes all three"):
        Agent("127.0.0.1:1", x=x, y=y, name="hospital-a", secure=SETTINGS)
    with pytest.raises(ConfigurationError, match="active mode takes all three"):
        Agent(
            "127.0.0.1:1",
            x=x,
            y=y,
            name="hospital-a",
            secure=SecureAggregation(graph="secagg"),
            roster=load_roster(keys / "roster.json"),
            signing_key=load_signing_key(keys / "hospital-a.sign.key"),
        )
    assert (keys / "hospital-a.sign.key").stat().st_mode & 0o077 == 0
    (keys / "bad.json").write_text('{"hospital-a": "abcd"}')
    with pytest.raises(ConfigurationError, match="64 hex digits"):
        load_roster(keys / "bad.json")
    with pytest.raises(ConfigurationError, match="exists"):
        make_signing_key(keys, "hospital-a")
