"""Who and what the coordinator refuses: strangers, other CAs' certificates, malformed and
oversized messages; it keeps serving the enrolled clients afterwards."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from deploy_support import HOSPITALS, write_config

from veil.cli.main import main
from veil.deploy import Coordinator, load_config
from veil.deploy.coordinator import MAX_MESSAGE_BYTES, SERVICE
from veil.deploy.proto import federation_pb2 as pb
from veil.tls import TlsFiles


@pytest.fixture
def coordinator(tmp_path: Path, pki: Path) -> Iterator[Coordinator]:
    """A coordinator over mutual TLS whose first round waits for its clients (none come)."""
    config = load_config(write_config(tmp_path, pki, port=0, **{"federation.start_seconds": 600.0}))
    co = Coordinator(config, tls=TlsFiles.load(pki, "coordinator"))
    co.start()
    yield co
    co.stop(grace=0.1)


def channel(pki: Path, co: Coordinator, name: str, ca_folder: Path | None = None) -> grpc.Channel:
    folder = ca_folder or pki
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(folder / f"{name}.key").read_bytes(),
        certificate_chain=(folder / f"{name}.pem").read_bytes(),
    )
    return grpc.secure_channel(f"127.0.0.1:{co.port}", creds)


def raw_unary(ch: grpc.Channel, method: str, data: bytes) -> bytes:
    call = ch.unary_unary(f"/{SERVICE}/{method}")  # bytes in, bytes out
    reply: bytes = call(data, timeout=10)
    return reply


def join(ch: grpc.Channel) -> pb.JoinReply:
    return pb.JoinReply.FromString(raw_unary(ch, "Join", pb.JoinRequest().SerializeToString()))


def test_an_enrolled_hospital_joins(pki: Path, coordinator: Coordinator) -> None:
    with channel(pki, coordinator, "hospital-b") as ch:
        reply = join(ch)
    assert reply.client_id == "hospital-b"
    assert reply.federation == "hospitals"
    assert json.loads(reply.model_json)["features"] == 30


def test_a_certificate_of_the_ca_that_is_not_enrolled_is_refused(
    pki: Path, coordinator: Coordinator
) -> None:
    with channel(pki, coordinator, "intruder") as ch, pytest.raises(grpc.RpcError) as err:
        join(ch)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "'intruder' is not enrolled" in str(err.value.details())
    assert coordinator.status()["clients"] == dict.fromkeys(HOSPITALS)  # none seen


def test_a_certificate_of_another_ca_fails_the_handshake(
    pki: Path, coordinator: Coordinator
) -> None:
    """hospital-a's name, but signed by another CA: TLS refuses it before any request."""
    with (
        channel(pki, coordinator, "hospital-a", ca_folder=pki / "other") as ch,
        pytest.raises(grpc.RpcError) as err,
    ):
        join(ch)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert coordinator.status()["clients"]["hospital-a"] is None
    # and a client with no certificate at all
    plain = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
    with (
        grpc.secure_channel(f"127.0.0.1:{coordinator.port}", plain) as ch,
        pytest.raises(grpc.RpcError) as err,
    ):
        join(ch)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """The command line sends the deploy logs to (the captured) stderr; undo that after."""
    yield
    for name in ("veil.deploy", "veil.deploy.agent"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


@pytest.mark.usefixtures("quiet_logs")
def test_the_join_command_says_why_in_one_line(
    pki: Path, coordinator: Coordinator, data_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "fl",
            "join",
            "--server",
            f"127.0.0.1:{coordinator.port}",
            "--cert",
            str(pki / "intruder.pem"),
            "--data",
            str(data_files / "hospital-a.npz"),
        ]
    )
    # (the coordinator runs in this process: its structured log lines are on stderr too)
    lines = [x for x in capsys.readouterr().err.splitlines() if not x.startswith("{")]
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith("error: the coordinator refused to join")
    assert "not enrolled" in lines[0]


def chunks(*messages: pb.Chunk | bytes) -> Iterator[bytes]:
    for m in messages:
        yield m if isinstance(m, bytes) else m.SerializeToString()


def test_malformed_and_oversized_messages_are_refused_and_serving_goes_on(
    pki: Path, coordinator: Coordinator
) -> None:
    with channel(pki, coordinator, "hospital-a") as ch:
        # not a protobuf message
        with pytest.raises(grpc.RpcError) as err:
            raw_unary(ch, "Join", b"\xff\xff\xff\xff garbage")
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed JoinRequest" in str(err.value.details())
        with pytest.raises(grpc.RpcError) as err:
            raw_unary(ch, "Advertise", b"\x0a\xff\x01")
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        # one message above the limit (4 MiB): gRPC refuses it before any handler runs
        big = pb.AdvertiseKeys(round=1, client=1, mask_key=b"k" * (MAX_MESSAGE_BYTES + 1))
        with pytest.raises(grpc.RpcError) as err:
            raw_unary(ch, "Advertise", big.SerializeToString())
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        # a key that parses but is absurdly long
        long_key = pb.AdvertiseKeys(round=1, client=1, mask_key=b"k" * 1000)
        with pytest.raises(grpc.RpcError) as err:
            raw_unary(ch, "Advertise", long_key.SerializeToString())
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        masked = ch.stream_unary(f"/{SERVICE}/SubmitMasked")
        any_round = pb.Chunk(header=pb.ChunkHeader(round=1, dtype="uint32", length=4, client=1))
        with pytest.raises(grpc.RpcError) as err:  # no secure round is running
            masked(chunks(any_round, pb.Chunk(data=b"\0" * 16)), timeout=10)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        stream = ch.stream_unary(f"/{SERVICE}/SubmitUpdate")
        # a vector announced beyond the limit
        huge = pb.Chunk(header=pb.ChunkHeader(round=1, dtype="uint32", length=10**12, client=1))
        with pytest.raises(grpc.RpcError) as err:
            stream(chunks(huge), timeout=10)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "at most" in str(err.value.details())
        # more data than announced
        small = pb.Chunk(header=pb.ChunkHeader(round=1, dtype="uint32", length=2, client=1))
        with pytest.raises(grpc.RpcError) as err:
            stream(chunks(small, pb.Chunk(data=b"\0" * 12)), timeout=10)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "more vector data than announced" in str(err.value.details())
        # an unknown element type, and garbage in the middle of a stream
        odd = pb.Chunk(header=pb.ChunkHeader(round=1, dtype="complex128", length=2, client=1))
        with pytest.raises(grpc.RpcError) as err:
            stream(chunks(odd), timeout=10)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            stream(chunks(small, b"\xff\xfe\xfd"), timeout=10)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        # a message for a round that is not running
        with pytest.raises(grpc.RpcError) as err:
            raw_unary(ch, "Unmask", pb.UnmaskShares(round=7, client=1).SerializeToString())
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        # still serving
        assert join(ch).client_id == "hospital-a"
    assert coordinator.error is None
    assert not coordinator.finished.is_set()


@pytest.mark.usefixtures("quiet_logs")
def test_status_over_the_network(
    pki: Path, coordinator: Coordinator, capsys: pytest.CaptureFixture[str]
) -> None:
    with channel(pki, coordinator, "hospital-c") as ch:
        join(ch)
    code = main(
        [
            "fl",
            "status",
            "--server",
            f"127.0.0.1:{coordinator.port}",
            "--cert",
            str(pki / "hospital-a.pem"),
        ]
    )
    assert code == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["federation"] == "hospitals"
    assert shown["round"] == 0
    assert shown["stage"] == "waiting"
    assert shown["clients"]["hospital-c"] is not None  # seen a moment ago
    assert shown["clients"]["hospital-b"] is None
