"""The pieces under the transport: the wire codec, checkpoints, resuming the round protocol,
the federation file, and the certificate commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from deploy_support import write_config

from veil.cli.main import main
from veil.deploy import StateStore, codec, load_config
from veil.deploy.proto import federation_pb2 as pb
from veil.errors import ConfigurationError, RemoteProtocolError
from veil.federated import FederatedServer, SecureAggregation, TrainConfig, TrainResult
from veil.federated.secure import make_spec
from veil.federated.strategies import WeightedMean, fedadam
from veil.privacy.random import InsecureSeededRandom
from veil.secagg.protocol import KeyDirectory, UnmaskShares


def test_a_secure_round_spec_survives_the_wire() -> None:
    spec = make_spec(
        SecureAggregation(graph="secagg+", dropout=0.2),
        session=b"s" * 16,
        round=3,
        clients=[f"h{i}" for i in range(12)],
        dimension=1000,
        aggregator=WeightedMean(),
        config=TrainConfig(),
    )
    wire = pb.SecureRoundSpec.FromString(codec.spec_to_pb(spec).SerializeToString())
    assert codec.spec_from_pb(wire) == spec


def test_stage_messages_survive_the_wire() -> None:
    directory = KeyDirectory(
        {1: (b"a" * 32, b"b" * 32), 2: (b"c" * 32, b"d" * 32)},
        {1: frozenset({2}), 2: frozenset({1})},
        2,
        {1: b"sig1", 2: b"sig2"},
    )
    wire = pb.KeyDirectory.FromString(codec.directory_to_pb(directory).SerializeToString())
    assert codec.directory_from_pb(wire) == directory
    big = (1 << 256) + 296  # a field element near the top of GF(2^256 + 297)
    shares = UnmaskShares(4, {1: big, 2: 0}, {3: 12345})
    wire_u = pb.UnmaskShares.FromString(codec.unmask_to_pb(9, shares).SerializeToString())
    assert wire_u.round == 9
    assert codec.unmask_from_pb(wire_u) == shares


def test_vectors_travel_in_chunks_and_extra_bytes_are_refused() -> None:
    vector = np.arange(700_000, dtype=np.float32)  # 2.8 MB: three chunks
    head = pb.Chunk(header=pb.ChunkHeader(dtype="float32", length=vector.size))
    parts = list(codec.chunks(head, vector))
    assert len(parts) == 1 + 3
    assert all(p.ByteSize() <= codec.CHUNK_BYTES + 16 for p in parts)
    reader = codec.VectorReader("float32", vector.size, max_length=10**6)
    for p in parts[1:]:
        reader.add(p.data)
    np.testing.assert_array_equal(reader.vector(), vector)
    with pytest.raises(RemoteProtocolError, match="more vector data"):
        reader.add(b"\0")
    short = codec.VectorReader("uint32", 4, max_length=10)
    short.add(b"\0" * 8)
    with pytest.raises(RemoteProtocolError, match="ended after 8 of 16 bytes"):
        short.vector()
    with pytest.raises(RemoteProtocolError, match="at most 10"):
        codec.VectorReader("uint32", 11, max_length=10)


def test_a_restored_server_continues_exactly_like_the_uninterrupted_one(tmp_path: Path) -> None:
    """FedAdam's moments, the model and the round go through a checkpoint in SQLite; the
    resumed server's next round equals the uninterrupted server's."""

    def server() -> FederatedServer:
        return FederatedServer(
            parameters=np.zeros(5),
            clients=["a", "b"],
            strategy=fedadam(learning_rate=0.1),
            config=TrainConfig(),
            rounds=3,
        )

    def play(s: FederatedServer, round_: int) -> None:
        rng = InsecureSeededRandom(round_)
        for ins in s.start_round(rng):
            update = np.full(5, 0.1 * round_ + (ins.client_id == "b"), dtype=np.float32)
            s.receive(TrainResult(ins.round, ins.client_id, update, 10, {"train_loss": 1.0}))
        s.close_round(rng)

    straight = server()
    for r in (1, 2, 3):
        play(straight, r)
    first = server()
    play(first, 1)
    play(first, 2)
    store = StateStore(tmp_path / "state.sqlite")
    store.checkpoint(2, first.state(), {"round": 2})
    store.close()
    store = StateStore(tmp_path / "state.sqlite")
    latest = store.latest()
    store.close()
    assert latest is not None
    assert latest[0] == 2
    resumed = server()
    resumed.restore(latest[1])
    assert resumed.round == 2
    play(resumed, 3)
    np.testing.assert_array_equal(resumed.parameters, straight.parameters)
    assert resumed.stage is straight.stage


def test_a_checkpoint_of_another_model_is_refused() -> None:
    s = FederatedServer(
        parameters=np.zeros(5),
        clients=["a"],
        strategy=fedadam(),
        config=TrainConfig(),
        rounds=2,
    )
    bad = {**s.state(), "parameters": np.zeros(6)}
    with pytest.raises(ConfigurationError, match="has 6 values"):
        s.restore(bad)


def test_the_federation_file_is_checked(tmp_path: Path, pki: Path) -> None:
    path = write_config(tmp_path, pki, port=7443, **{"dp.mode": "client"})
    with pytest.raises(ConfigurationError, match=r"needs dp\.ledger and dp\.scope"):
        load_config(path)
    path = write_config(tmp_path, pki, port=7443, **{"federation.colour": "blue"})
    with pytest.raises(ConfigurationError, match=r"unknown setting\(s\) \[federation\] colour"):
        load_config(path)
    path = write_config(tmp_path, pki, port=7443, **{"federation.rounds": "ten"})
    with pytest.raises(ConfigurationError, match="rounds has the wrong type"):
        load_config(path)
    config = load_config(write_config(tmp_path, pki, port=7443))
    assert config.clients == ("hospital-a", "hospital-b", "hospital-c")
    assert config.state == (tmp_path / "coordinator.sqlite").resolve()


def test_certs_commands_make_a_working_pki(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki = tmp_path / "pki"
    assert main(["certs", "init", "--dir", str(pki)]) == 0
    assert main(["certs", "init", "--dir", str(pki)]) == 1  # never replaced by accident
    assert "exists" in capsys.readouterr().err
    assert main(["certs", "issue", "--dir", str(pki), "--name", "hospital-a"]) == 0
    assert main(["certs", "issue", "--dir", str(pki), "--name", "coord", "--host", "10.0.0.5"]) == 0
    assert (pki / "hospital-a.key").stat().st_mode & 0o077 == 0
    assert (pki / "ca.key").stat().st_mode & 0o077 == 0
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    client = x509.load_pem_x509_certificate((pki / "hospital-a.pem").read_bytes())
    server = x509.load_pem_x509_certificate((pki / "coord.pem").read_bytes())
    client.verify_directly_issued_by(ca)
    server.verify_directly_issued_by(ca)
    cn = client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "hospital-a"
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert main(["certs", "issue", "--dir", str(tmp_path / "none"), "--name", "x"]) == 1
    assert "veil certs init" in capsys.readouterr().err


def test_serve_without_certificates_says_what_to_do(
    tmp_path: Path, pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, pki, port=7443)
    text = config.read_text().replace(f'dir = "{pki}"', f'dir = "{tmp_path / "missing"}"')
    config.write_text(text)
    assert main(["fl", "serve", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: TLS folder")
    assert "\n" not in err
    insecure_far = write_config(tmp_path, pki, port=7443, **{"federation.listen": "0.0.0.0:7443"})
    assert main(["fl", "serve", "--config", str(insecure_far), "--insecure"]) == 1
    assert "loopback only" in capsys.readouterr().err


def test_local_data_from_csv_equals_the_npz(tmp_path: Path) -> None:
    from veil.deploy import load_data
    from veil.errors import DataError

    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    lines = ["a,b,outcome,c,d"]
    lines += [
        ",".join([repr(float(r[0])), repr(float(r[1])), str(int(v)), *map(repr, map(float, r[2:]))])
        for r, v in zip(x, y, strict=True)
    ]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    for path, target in ((tmp_path / "d.npz", "label"), (tmp_path / "d.csv", "outcome")):
        got_x, got_y = load_data(path, target=target)
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)
        assert got_x.dtype == np.float32
        assert got_y.dtype == np.int64
    with pytest.raises(DataError, match="no column 'label'"):
        load_data(tmp_path / "d.csv")
    (tmp_path / "bad.csv").write_text("a,label\nx,1\n")
    with pytest.raises(DataError, match="must be a number"):
        load_data(tmp_path / "bad.csv")


def test_status_reads_the_coordinators_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    store = StateStore(tmp_path / "state.sqlite")
    store.checkpoint(1, {"round": 1, "parameters": np.zeros(3)}, {"completed": 3, "seconds": 0.5})
    store.close()
    assert main(["fl", "status", "--state", str(tmp_path / "state.sqlite")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["rounds"][0]["round"] == 1
    assert shown["rounds"][0]["completed"] == 3


def test_signing_keys_and_the_roster_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from veil.deploy.roster import load_roster, load_signing_key

    pki = tmp_path / "pki"
    for name in ("hospital-a", "hospital-b"):
        assert main(["certs", "signing-key", "--dir", str(pki), "--name", name]) == 0
    assert main(["certs", "signing-key", "--dir", str(pki), "--name", "hospital-a"]) == 1
    assert "exists" in capsys.readouterr().err  # a pinned key is never replaced by accident
    args = ["certs", "roster", "--dir", str(pki), "--name", "hospital-a", "--name", "hospital-b"]
    assert main(args) == 0
    roster = load_roster(pki / "roster.json")
    assert sorted(roster) == ["hospital-a", "hospital-b"]
    assert roster["hospital-a"] == load_signing_key(pki / "hospital-a.sign.key").public
    assert main([*args, "--name", "hospital-c"]) == 1
    assert "hospital-c.sign.pub is missing" in capsys.readouterr().err
    path = write_config(
        tmp_path,
        pki,
        port=7443,
        **{"secure_aggregation.active": True, "secure_aggregation.roster": "pki/roster.json"},
    )
    config = load_config(path)
    assert config.secure_active and config.roster == (pki / "roster.json").resolve()
