"""The gRPC service end to end: two worker processes on one loopback port with mutual TLS.
Encrypted scores agree with the clear model; keys beyond gRPC's 4 MiB message travel in
chunks; the server stores only public keys; every bad input gets a clear status and the
workers carry on; clients without a certificate from the CA are turned away."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from veil.errors import RemoteProtocolError
from veil.he import LinearModel, Mode, Packing, ScoringClient
from veil.he.backend import unpack_bundle
from veil.he.proto import scoring_pb2 as pb
from veil.he.service import SERVICE, RemoteScorer, ScoringServer, ServerConfig
from veil.tls import Pki, write_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"), clients=["client"])


@pytest.fixture(scope="module")
def server(model_file: Path, pki: Pki) -> Iterator[ScoringServer]:
    config = ServerConfig(
        model_path=str(model_file),
        host="127.0.0.1",
        workers=2,
        tls=pki.server,
        max_key_bytes=40 << 20,
        allow_batch=True,  # the tests' client is trusted
    )
    with ScoringServer(config) as srv:
        yield srv


@pytest.fixture
def remote(server: ScoringServer, pki: Pki) -> Iterator[RemoteScorer]:
    with RemoteScorer(f"localhost:{server.port}", tls=pki.clients["client"]) as r:
        yield r


def test_workers_are_separate_processes(server: ScoringServer) -> None:
    import os

    assert len(set(server.pids)) == 2
    assert os.getpid() not in server.pids
    assert server.alive() == 2


def test_describe_gives_the_public_spec_only(remote: RemoteScorer, model: LinearModel) -> None:
    spec = remote.describe()
    assert spec == model.public_spec()
    assert "weights" not in spec and "bias" not in spec


def test_encrypted_scores_over_grpc_agree_with_the_clear_model(
    remote: RemoteScorer, model: LinearModel, test_rows: list[dict[str, str]]
) -> None:
    spec = remote.describe()
    single = ScoringClient.generate(spec)
    p = np.array(remote.score_rows(single, test_rows[:40]))
    clear = model.scores(model.encoder.encode(test_rows[:40]))
    assert np.max(np.abs(p - clear)) <= 1e-5
    assert np.array_equal(p > 0.5, clear > 0.5)
    batch = ScoringClient.generate(spec, packing=Packing.BATCH)
    p = np.array(remote.score_rows(batch, test_rows))
    clear = model.scores(model.encoder.encode(test_rows))
    assert np.max(np.abs(p - clear)) <= 1e-5
    assert np.array_equal(p > 0.5, clear > 0.5)


def test_key_bundles_beyond_four_mib_arrive_in_chunks_and_only_public_keys_are_kept(
    remote: RemoteScorer,
    server: ScoringServer,
    model: LinearModel,
    test_rows: list[dict[str, str]],
) -> None:
    client = ScoringClient.generate(
        remote.describe(), mode=Mode.PROBABILITY, packing=Packing.SINGLE
    )
    bundle = client.public_bundle()
    assert len(bundle) > 4 << 20
    session = remote.open(client)
    x = client.encode(test_rows[:2])
    results = [remote.score(session, q) for q in client.encrypt(x)]
    p = client.read(results, 2)
    assert model.sigmoid is not None
    assert np.max(np.abs(p - model.sigmoid(model.logits(x)))) <= 2e-4
    # what the server keeps: public sections only, and nowhere the client's secret key
    _, secret = unpack_bundle(client.keys.save_secret())
    stored = sorted(server.store.glob("*.bundle"))
    assert stored
    for path in stored:
        data = path.read_bytes()
        assert set(unpack_bundle(data)[1]) <= {"relin_keys", "galois_keys"}
        assert secret["secret_key"] not in data
    remote.close_session(session)
    with pytest.raises(RemoteProtocolError, match="NOT_FOUND"):
        remote.score(session, client.encrypt(x[:1])[0])


def _raw_upload(server: ScoringServer, pki: Pki, chunks: list[pb.KeyChunk]) -> grpc.StatusCode:
    tls = pki.clients["client"]
    creds = grpc.ssl_channel_credentials(tls.ca, tls.private_key, tls.certificate)
    with grpc.secure_channel(f"localhost:{server.port}", creds) as channel:
        upload = channel.stream_unary(
            f"/{SERVICE}/UploadKeys",
            request_serializer=pb.KeyChunk.SerializeToString,
            response_deserializer=pb.Session.FromString,
        )
        try:
            upload(iter(chunks), timeout=60)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_bad_inputs_get_clear_statuses_and_the_workers_carry_on(
    remote: RemoteScorer,
    server: ScoringServer,
    pki: Pki,
    logit_client: ScoringClient,
    model: LinearModel,
    x_test: np.ndarray,
) -> None:
    session = remote.open(logit_client)
    (good,) = logit_client.encrypt(x_test[:1])[0]
    bad_queries = {
        "garbage": [b"\x00garbage" * 1000],
        "truncated": [good[: len(good) // 3]],
        "oversized": [good + b"\x00" * (2 << 20)],
        "too many": [good, good],
        "none": [],
    }
    for name, cts in bad_queries.items():
        with pytest.raises(RemoteProtocolError, match="INVALID_ARGUMENT"):
            remote.score(session, cts)
        assert name
    with pytest.raises(RemoteProtocolError, match="INVALID_ARGUMENT: malformed session id"):
        remote.score("../../etc/passwd", [good])
    with pytest.raises(RemoteProtocolError, match="NOT_FOUND"):
        remote.score("A" * 32, [good])
    bundle = logit_client.public_bundle()
    _, secret = unpack_bundle(logit_client.keys.save_secret())
    from veil.he.backend import pack_bundle

    header = {k: v for k, v in unpack_bundle(bundle)[0].items() if k != "sections"}
    smuggled = pack_bundle(header, {**unpack_bundle(bundle)[1], "secret_key": secret["secret_key"]})
    with pytest.raises(RemoteProtocolError, match=r"INVALID_ARGUMENT: .*never a secret key"):
        remote.upload_keys(smuggled, Mode.LOGIT, Packing.SINGLE)
    with pytest.raises(RemoteProtocolError, match="INVALID_ARGUMENT"):
        remote.upload_keys(b"\x00" * 5000, Mode.LOGIT, Packing.SINGLE)
    assert (
        _raw_upload(server, pki, [pb.KeyChunk(total_size=41 << 20, data=b"x")])
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert (
        _raw_upload(server, pki, [pb.KeyChunk(total_size=len(bundle), data=bundle[:1000])])
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        _raw_upload(server, pki, [pb.KeyChunk(total_size=10, data=b"x" * 11)])
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert _raw_upload(server, pki, []) == grpc.StatusCode.INVALID_ARGUMENT
    # a message beyond the server's receive limit is refused by gRPC itself
    with pytest.raises(RemoteProtocolError, match="RESOURCE_EXHAUSTED"):
        remote.score(session, [b"\x00" * (49 << 20)])
    assert server.alive() == 2
    out = logit_client.read([remote.score(session, [good])], 1)
    assert out[0] == pytest.approx(model.logits(x_test[:1])[0], abs=1e-5)


def test_concurrent_clients_are_served(
    server: ScoringServer, pki: Pki, model: LinearModel, test_rows: list[dict[str, str]]
) -> None:
    spec = model.public_spec()

    def one(rows: list[dict[str, str]]) -> float:
        with RemoteScorer(f"localhost:{server.port}", tls=pki.clients["client"]) as r:
            client = ScoringClient.generate(spec)
            p = np.array(r.score_rows(client, rows))
        return float(np.max(np.abs(p - model.scores(model.encoder.encode(rows)))))

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        errors = list(pool.map(one, [test_rows[i : i + 5] for i in (0, 5, 10)]))
    assert max(errors) <= 1e-5


def test_clients_without_a_certificate_from_the_ca_are_refused(
    server: ScoringServer, tmp_path: Path
) -> None:
    stranger = write_pki(tmp_path / "other", clients=["mallory"]).clients["mallory"]
    with (
        RemoteScorer(f"localhost:{server.port}", tls=stranger, timeout=10) as r,
        pytest.raises(RemoteProtocolError),
    ):
        r.describe()
    with (
        RemoteScorer(f"localhost:{server.port}", tls=None, timeout=10) as r,
        pytest.raises(RemoteProtocolError),
    ):
        r.describe()


def test_session_limits_are_enforced_by_the_servicer(
    model_file: Path, logit_client: ScoringClient, tmp_path: Path
) -> None:
    """The servicer without the network: the count of sessions, the bytes of keys kept, and
    expiry after the TTL."""
    from veil.he.service import _AbortError, _Servicer

    bundle = logit_client.public_bundle()

    def chunks() -> Iterator[pb.KeyChunk]:
        yield pb.KeyChunk(total_size=len(bundle), data=bundle)

    one = _Servicer(ServerConfig(model_path=str(model_file), max_sessions=1), tmp_path / "a")
    sid = one._upload(chunks()).session_id
    with pytest.raises(_AbortError, match="too many open sessions") as exc:
        one._upload(chunks())
    assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    small = _Servicer(
        ServerConfig(model_path=str(model_file), max_store_bytes=len(bundle) + 10), tmp_path / "b"
    )
    small._upload(chunks())
    with pytest.raises(_AbortError, match="as many keys as it may"):
        small._upload(chunks())
    expiring = _Servicer(ServerConfig(model_path=str(model_file), session_ttl=0.0), one.store)
    with pytest.raises(_AbortError, match="unknown or closed session"):
        expiring._session(sid)


def _chunks(bundle: bytes, packing: int = pb.PACKING_SINGLE) -> Iterator[pb.KeyChunk]:
    yield pb.KeyChunk(total_size=len(bundle), data=bundle, packing=packing)


def test_a_cached_session_expires_after_its_lifetime(
    model_file: Path, logit_client: ScoringClient, x_test: np.ndarray, tmp_path: Path
) -> None:
    """The worker that took the upload has the session in its cache; the lifetime holds there
    too (the clock is the servicer's, moved on by the test)."""
    from veil.he.service import _AbortError, _Servicer

    servicer = _Servicer(ServerConfig(model_path=str(model_file), session_ttl=60.0), tmp_path)
    sid = servicer._upload(_chunks(logit_client.public_bundle())).session_id
    query = logit_client.encrypt(x_test[:1])[0]
    servicer._score(pb.ScoreRequest(session_id=sid, ciphertexts=query))  # cached, alive
    servicer._now = lambda: time.time() + 61.0
    with pytest.raises(_AbortError, match="unknown or closed session") as exc:
        servicer._score(pb.ScoreRequest(session_id=sid, ciphertexts=query))
    assert exc.value.code == grpc.StatusCode.NOT_FOUND
    assert not list(tmp_path.glob(f"{sid}.*"))  # forgotten on disk as well


def test_limits_are_checked_before_the_keys_are_read(
    model_file: Path, logit_client: ScoringClient, tmp_path: Path
) -> None:
    """A full server refuses at once, before the expensive validation of the keys: even a
    malformed bundle gets RESOURCE_EXHAUSTED."""
    from veil.he.service import _AbortError, _Servicer

    servicer = _Servicer(ServerConfig(model_path=str(model_file), max_sessions=1), tmp_path)
    servicer._upload(_chunks(logit_client.public_bundle()))
    with pytest.raises(_AbortError, match="too many open sessions"):
        servicer._upload(_chunks(b"\x00" * 5000))


def test_concurrent_uploads_in_two_workers_cannot_overrun_the_limit(
    model_file: Path, logit_client: ScoringClient, tmp_path: Path
) -> None:
    """Two workers (servicers sharing the store), four uploads at once, room for one."""
    from veil.he.service import _AbortError, _Servicer

    config = ServerConfig(model_path=str(model_file), max_sessions=1)
    workers = [_Servicer(config, tmp_path), _Servicer(config, tmp_path)]
    bundle = logit_client.public_bundle()

    def upload(i: int) -> bool:
        try:
            workers[i % 2]._upload(_chunks(bundle))
        except _AbortError:
            return False
        return True

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(upload, range(4)))
    assert sum(results) == 1
    assert len(list(tmp_path.glob("*.bundle"))) == 1


def test_batch_mode_is_refused_unless_the_server_allows_it(
    model_file: Path, batch_client: ScoringClient, tmp_path: Path
) -> None:
    from veil.he.service import _AbortError, _Servicer

    bundle = batch_client.public_bundle()
    closed = _Servicer(ServerConfig(model_path=str(model_file)), tmp_path / "closed")
    with pytest.raises(_AbortError, match="allow-batch") as exc:
        closed._upload(_chunks(bundle, pb.PACKING_BATCH))
    assert exc.value.code == grpc.StatusCode.PERMISSION_DENIED
    opened = _Servicer(
        ServerConfig(model_path=str(model_file), allow_batch=True), tmp_path / "open"
    )
    assert opened._upload(_chunks(bundle, pb.PACKING_BATCH)).session_id


def test_a_session_belongs_to_the_certificate_that_opened_it(
    model_file: Path, logit_client: ScoringClient, x_test: np.ndarray, tmp_path: Path
) -> None:
    """Another client (another certificate name) can neither score with nor close a session it
    did not open; to it the session does not exist. Through a second worker too."""
    from veil.he.service import _AbortError, _Servicer

    config = ServerConfig(model_path=str(model_file))
    first, second = _Servicer(config, tmp_path), _Servicer(config, tmp_path)
    sid = first._upload(_chunks(logit_client.public_bundle()), "alice").session_id
    request = pb.ScoreRequest(session_id=sid, ciphertexts=logit_client.encrypt(x_test[:1])[0])
    for worker in (first, second):
        with pytest.raises(_AbortError, match="unknown or closed session"):
            worker._score(request, "mallory")
        with pytest.raises(_AbortError, match="unknown or closed session"):
            worker._close(pb.Session(session_id=sid), "mallory")
    second._score(request, "alice")
    first._close(pb.Session(session_id=sid), "alice")
    with pytest.raises(_AbortError, match="unknown or closed session"):
        second._score(request, "alice")


def test_replacement_workers_that_cannot_start_stop_the_server_with_an_error(
    model_file: Path, tmp_path: Path
) -> None:
    """A worker dies and its replacements fail to start (here: the model file is gone): the
    serving loop notices, backs off, and after a few failed starts gives up with the reason,
    instead of respawning forever."""
    import shutil
    import threading

    from veil.errors import ConfigurationError

    path = tmp_path / "model.json"
    shutil.copy(model_file, path)
    server = ScoringServer(ServerConfig(model_path=str(path), workers=1, insecure=True)).start()
    outcome: list[BaseException | None] = []

    def serve() -> None:
        try:
            server.wait(poll=0.05, max_failed_starts=1)
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    try:
        path.unlink()
        server._processes[0].kill()
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        thread.join(timeout=60)
        assert outcome, "the serving loop is still respawning workers that cannot start"
        assert isinstance(outcome[0], ConfigurationError)
        assert "failed to start" in str(outcome[0])
        assert "model.json" in str(outcome[0])
    finally:
        server.stop()
