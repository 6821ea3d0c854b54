"""The encrypted scoring service over gRPC, and its client.

The schema is ``veil/he/proto/scoring.proto`` (service ``veil.he.v1.Scoring``): ``Describe``
returns the model's public spec; ``UploadKeys`` receives a client's public evaluation keys as a
stream of chunks (a bundle is megabytes, more than gRPC's 4 MiB default message) and opens a
session; ``Score`` evaluates one query; ``CloseSession`` forgets the keys.

The server runs several worker processes, because SEAL holds the GIL for the whole of an
evaluation: each worker is a gRPC server bound to the same port with ``SO_REUSEPORT``, so the
kernel spreads connections over them. Sessions are public material, so they are kept on disk in
a directory private to the server (one file per session) and each worker caches the evaluators
it has built (least recently used first out). Limits: the key bundle's size, the number of
sessions, the size of each message and ciphertext, the count of ciphertexts per query. A bundle
with anything but evaluation keys (a secret key) is refused, and so is every malformed,
truncated or oversized input, with ``INVALID_ARGUMENT`` or ``RESOURCE_EXHAUSTED``; the worker
carries on.

TLS: ``ServerConfig.tls`` (mutual TLS: the server authenticates clients with the CA given) or
``insecure=True``, which the command line allows on loopback only.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import itertools
import json
import logging
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

from veil.errors import (
    ConfigurationError,
    DataError,
    MissingDependencyError,
    RemoteProtocolError,
    VeilError,
)
from veil.he.model import LinearModel
from veil.he.scoring import Mode, Packing, Scorer, ScoringClient, ScoringSession
from veil.tls import TlsFiles

try:
    import grpc

    from veil.he.proto import scoring_pb2 as pb
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("grpcio", "he") from exc

__all__ = ["RemoteScorer", "ScoringServer", "ServerConfig"]

SERVICE = "veil.he.v1.Scoring"
CHUNK_BYTES = 1 << 20
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{32}$")
_MODES = {pb.MODE_LOGIT: Mode.LOGIT, pb.MODE_PROBABILITY: Mode.PROBABILITY}
_PACKINGS = {pb.PACKING_SINGLE: Packing.SINGLE, pb.PACKING_BATCH: Packing.BATCH}
log = logging.getLogger("veil.he.service")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How ``veil he serve`` runs."""

    model_path: str
    host: str = "127.0.0.1"
    port: int = 0
    """0: any free port (see :attr:`ScoringServer.port`)."""
    workers: int = 2
    tls: TlsFiles | None = None
    insecure: bool = False
    max_key_bytes: int = 64 << 20
    max_request_bytes: int = 48 << 20
    max_sessions: int = 200
    max_store_bytes: int = 2 << 30
    """Key bundles kept on disk at once, all sessions together."""
    session_ttl: float = 3600.0
    """Seconds a session lives after its keys were uploaded."""
    cached_sessions: int = 8
    threads_per_worker: int = 4
    allow_batch: bool = False
    """Accept batch sessions. Batch mode gives the whole model away (unit vectors as applicants
    return every weight and the bias in one query): for trusted clients only."""


class _AbortError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _peer(context: grpc.ServicerContext) -> str:
    """The common name of the client's certificate (verified by mutual TLS); "" without TLS."""
    names = context.auth_context().get("x509_common_name") or [b""]
    return bytes(names[0]).decode(errors="replace")


class _Servicer:
    """One worker's handlers. Translate, call the scorer, map errors to status codes."""

    def __init__(self, config: ServerConfig, store: Path) -> None:
        self.config = config
        self.scorer = Scorer(LinearModel.load(config.model_path))
        self.spec_json = json.dumps(self.scorer.spec)
        self.store = store
        store.mkdir(mode=0o700, exist_ok=True)
        # session id -> (session, the time it expires, the certificate name that opened it)
        self._cache: collections.OrderedDict[str, tuple[ScoringSession, float, str]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        self._now = time.time  # the clock (tests move it)

    def _guard(self, context: grpc.ServicerContext, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except _AbortError as exc:
            context.abort(exc.code, str(exc))
        except DataError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except VeilError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except Exception:  # a bug or a library failure: keep serving, say nothing of inputs
            log.exception("internal error")
            context.abort(grpc.StatusCode.INTERNAL, "internal error")
        return None  # pragma: no cover - abort raises

    # -- Describe
    def describe(self, request: pb.DescribeRequest, context: grpc.ServicerContext) -> Any:
        return pb.DescribeReply(
            spec_json=self.spec_json,
            max_key_bytes=self.config.max_key_bytes,
            chunk_bytes=CHUNK_BYTES,
        )

    # -- UploadKeys
    def upload_keys(self, chunks: Iterator[pb.KeyChunk], context: grpc.ServicerContext) -> Any:
        return self._guard(context, self._upload, chunks, _peer(context))

    def _upload(self, chunks: Iterator[pb.KeyChunk], owner: str = "") -> pb.Session:
        """``owner``: the client certificate's name; only it may use or close the session."""
        limit = self.config.max_key_bytes
        first = next(chunks, None)
        if first is None:
            raise DataError("no key chunks were sent")
        total = first.total_size
        if total == 0:
            raise DataError("the first key chunk must give total_size")
        if total > limit:
            raise _AbortError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"key bundle of {total} bytes exceeds this server's limit of {limit}",
            )
        if first.mode not in _MODES or first.packing not in _PACKINGS:
            raise DataError("unknown mode or packing")
        mode, packing = _MODES[first.mode], _PACKINGS[first.packing]
        if packing is Packing.BATCH and not self.config.allow_batch:
            raise _AbortError(
                grpc.StatusCode.PERMISSION_DENIED,
                "this server does not score batches: batch mode returns the whole model to the "
                "client, so the operator enables it for trusted clients only (--allow-batch)",
            )
        sid = self._reserve(total)  # before reading the keys, atomically across workers
        placeholder = self.store / f".{sid}.reserved"
        try:
            return self._receive(sid, first, chunks, mode, packing, owner)
        finally:
            placeholder.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        """An exclusive lock on the store, shared by every worker process."""
        fd = os.open(self.store / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _reserve(self, total: int) -> str:
        """Check the limits for a bundle of ``total`` bytes and hold a place for it: a
        placeholder file of that (sparse) size, counted like a stored bundle until the upload
        ends one way or the other."""
        with self._store_lock():
            self._expire()
            stored = self._stored_sizes()
            if len(stored) >= self.config.max_sessions:
                raise _AbortError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "too many open sessions; close one or try later",
                )
            if sum(stored) + total > self.config.max_store_bytes:
                raise _AbortError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "the server holds as many keys as it may; close a session or try later",
                )
            sid = secrets.token_urlsafe(24)
            fd = os.open(
                self.store / f".{sid}.reserved", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
            )
            try:
                os.ftruncate(fd, total)
            finally:
                os.close(fd)
        return sid

    def _receive(
        self,
        sid: str,
        first: pb.KeyChunk,
        chunks: Iterator[pb.KeyChunk],
        mode: Mode,
        packing: Packing,
        owner: str,
    ) -> pb.Session:
        total = first.total_size
        parts: list[bytes] = []
        size = 0
        for chunk in itertools.chain([first], chunks):
            size += len(chunk.data)
            if size > total:
                raise _AbortError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"key chunks exceed the announced total of {total} bytes",
                )
            parts.append(chunk.data)
        if size != total:
            raise DataError(f"key upload truncated: {size} of {total} bytes arrived")
        bundle = b"".join(parts)
        session = self.scorer.open_session(bundle, mode, packing)  # validates every key
        meta = json.dumps({"mode": mode.value, "packing": packing.value, "owner": owner})
        tmp = self.store / f".{sid}.tmp"
        tmp.write_bytes(bundle)
        (self.store / f"{sid}.json").write_text(meta)
        tmp.rename(self.store / f"{sid}.bundle")
        self._remember(sid, session, self._now() + self.config.session_ttl, owner)
        return pb.Session(session_id=sid)

    def _stored_sizes(self) -> list[int]:
        """Stored bundles and reserved places (``.*.reserved``), in bytes."""
        sizes = []
        paths = itertools.chain(self.store.glob("*.bundle"), self.store.glob(".*.reserved"))
        for path in paths:
            try:
                sizes.append(path.stat().st_size)
            except FileNotFoundError:  # closed meanwhile by another worker
                continue
        return sizes

    def _expire(self) -> None:
        """Forget sessions older than the TTL (any worker may do it for all)."""
        cutoff = self._now() - self.config.session_ttl
        paths = itertools.chain(self.store.glob("*.bundle"), self.store.glob(".*.reserved"))
        for path in paths:  # (a reservation left by a worker that died mid-upload, too)
            try:
                if path.stat().st_mtime < cutoff:
                    self._forget(path.name.split(".")[0] or path.name.split(".")[1])
            except FileNotFoundError:  # another worker got there first
                continue

    def _forget(self, sid: str) -> None:
        for name in (f"{sid}.bundle", f"{sid}.json", f".{sid}.reserved"):
            (self.store / name).unlink(missing_ok=True)
        with self._lock:
            self._cache.pop(sid, None)

    def _remember(self, sid: str, session: ScoringSession, expires: float, owner: str) -> None:
        with self._lock:
            self._cache[sid] = (session, expires, owner)
            self._cache.move_to_end(sid)
            while len(self._cache) > self.config.cached_sessions:
                self._cache.popitem(last=False)

    def _session(self, sid: str, owner: str = "") -> ScoringSession:
        """The session ``sid`` if it is alive and ``owner`` opened it; to anyone else it does
        not exist (NOT_FOUND, as for a closed one)."""
        if not _SESSION_ID.match(sid):
            raise DataError("malformed session id")
        gone = _AbortError(
            grpc.StatusCode.NOT_FOUND, "unknown or closed session; upload the keys again"
        )
        now = self._now()
        with self._lock:
            found = self._cache.get(sid)
            alive = found is not None and found[1] > now
            if alive and found is not None and (self.store / f"{sid}.bundle").exists():
                if found[2] != owner:
                    raise gone
                self._cache.move_to_end(sid)
                return found[0]
            self._cache.pop(sid, None)  # closed or expired (perhaps by another worker)
        if found is not None and not alive:
            self._forget(sid)
            raise gone
        path = self.store / f"{sid}.bundle"
        try:
            expires = path.stat().st_mtime + self.config.session_ttl
            if expires <= now:
                self._forget(sid)
                raise gone
            meta = json.loads((self.store / f"{sid}.json").read_text())
            if meta.get("owner", "") != owner:
                raise gone
            bundle = path.read_bytes()
        except FileNotFoundError:
            raise gone from None
        session = self.scorer.open_session(bundle, Mode(meta["mode"]), Packing(meta["packing"]))
        self._remember(sid, session, expires, owner)
        return session

    # -- Score
    def score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> Any:
        return self._guard(context, self._score, request, _peer(context))

    def _score(self, request: pb.ScoreRequest, owner: str = "") -> pb.ScoreReply:
        session = self._session(request.session_id, owner)
        return pb.ScoreReply(ciphertext=self.scorer.score(session, list(request.ciphertexts)))

    # -- CloseSession
    def close(self, request: pb.Session, context: grpc.ServicerContext) -> Any:
        return self._guard(context, self._close, request, _peer(context))

    def _close(self, request: pb.Session, owner: str = "") -> pb.Closed:
        sid = request.session_id
        if not _SESSION_ID.match(sid):
            raise DataError("malformed session id")
        try:
            theirs = json.loads((self.store / f"{sid}.json").read_text()).get("owner", "")
        except FileNotFoundError:
            theirs = owner  # already gone: closing again is harmless
        if theirs != owner:
            raise _AbortError(
                grpc.StatusCode.NOT_FOUND, "unknown or closed session; upload the keys again"
            )
        self._forget(sid)
        return pb.Closed()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Describe": grpc.unary_unary_rpc_method_handler(
                    self.describe,
                    request_deserializer=pb.DescribeRequest.FromString,
                    response_serializer=pb.DescribeReply.SerializeToString,
                ),
                "UploadKeys": grpc.stream_unary_rpc_method_handler(
                    self.upload_keys,
                    request_deserializer=pb.KeyChunk.FromString,
                    response_serializer=pb.Session.SerializeToString,
                ),
                "Score": grpc.unary_unary_rpc_method_handler(
                    self.score,
                    request_deserializer=pb.ScoreRequest.FromString,
                    response_serializer=pb.ScoreReply.SerializeToString,
                ),
                "CloseSession": grpc.unary_unary_rpc_method_handler(
                    self.close,
                    request_deserializer=pb.Session.FromString,
                    response_serializer=pb.Closed.SerializeToString,
                ),
            },
        )


def _config_to_json(config: ServerConfig, port: int, store: str) -> bytes:
    fields = dataclasses.asdict(config)
    if config.tls is not None:
        fields["tls"] = {
            "ca": config.tls.ca.decode(),
            "certificate": config.tls.certificate.decode(),
            "private_key": config.tls.private_key.decode(),
        }
    return json.dumps({"config": fields, "port": port, "store": store}).encode()


def _config_from_json(data: bytes) -> tuple[ServerConfig, int, str]:
    raw = json.loads(data)
    fields = raw["config"]
    if fields["tls"] is not None:
        fields["tls"] = TlsFiles(**{k: v.encode() for k, v in fields["tls"].items()})
    return ServerConfig(**fields), int(raw["port"]), str(raw["store"])


def _watch_parent(parent: int) -> None:
    """Exit when the serving process is gone (even if it was killed with SIGKILL)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def worker_main() -> None:
    """One worker process (``python -m veil.he.service``): the configuration arrives on stdin
    (so the TLS key never touches the disk), ``ok`` or the error goes to stdout, then it serves
    until terminated."""
    import sys

    parent = os.getppid()
    try:
        config, port, store = _config_from_json(sys.stdin.buffer.read())
        servicer = _Servicer(config, Path(store))
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.threads_per_worker),
            handlers=[servicer.handler()],
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", config.max_request_bytes),
                ("grpc.max_send_message_length", config.max_request_bytes),
            ],
        )
        host = f"[{config.host}]" if ":" in config.host else config.host
        address = f"{host}:{port}"
        if config.tls is not None:
            creds = grpc.ssl_server_credentials(
                [(config.tls.private_key, config.tls.certificate)],
                root_certificates=config.tls.ca,
                require_client_auth=True,
            )
            bound = server.add_secure_port(address, creds)
        else:
            bound = server.add_insecure_port(address)
        if bound != port:
            raise ConfigurationError(f"could not bind {address}")
        server.start()
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
        return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exit cleanly: atexit hooks run
    print("ok", flush=True)
    server.wait_for_termination()


class ScoringServer:
    """The service in ``workers`` processes on one port. A context manager.

    Workers are fresh interpreters (``python -m veil.he.service``), not forks: gRPC does not
    survive ``fork``, and unlike ``multiprocessing``'s spawn they never re-import the caller's
    main module."""

    def __init__(self, config: ServerConfig) -> None:
        if config.tls is None and not config.insecure:
            raise ConfigurationError(
                "the scoring server needs TLS certificates (or insecure=True for loopback tests)"
            )
        if config.workers < 1:
            raise ConfigurationError(f"workers must be >= 1; got {config.workers}")
        LinearModel.load(config.model_path)  # fail here, not in every worker
        self.config = config
        self._socket: socket.socket | None = None
        self._processes: list[subprocess.Popen[bytes]] = []
        self.store = Path(tempfile.mkdtemp(prefix="veil-he-sessions-"))
        self.port = 0
        self._stopping = False

    def _spawn(self) -> tuple[subprocess.Popen[bytes], queue.Queue[str]]:
        import sys

        proc = subprocess.Popen(
            [sys.executable, "-m", "veil.he.service"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(_config_to_json(self.config, self.port, str(self.store)))
        proc.stdin.close()
        status: queue.Queue[str] = queue.Queue()
        stdout = proc.stdout

        def first_line() -> None:
            status.put(stdout.readline().decode(errors="replace").strip() or "exited")

        threading.Thread(target=first_line, daemon=True).start()
        return proc, status

    def start(self, timeout: float = 60.0) -> ScoringServer:
        sock = socket.socket(socket.AF_INET6 if ":" in self.config.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.config.host, self.config.port))
        self._socket = sock  # holds the port until the workers have bound it too
        self.port = sock.getsockname()[1]
        started = [self._spawn() for _ in range(self.config.workers)]
        self._processes = [proc for proc, _ in started]
        deadline = time.monotonic() + timeout
        for _, status in started:
            try:
                line = status.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = "did not start in time"
            if line != "ok":
                self.stop()
                raise ConfigurationError(f"a scoring worker failed to start: {line}")
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes]

    def alive(self) -> int:
        return sum(1 for p in self._processes if p.poll() is None)

    def wait(self, *, poll: float = 1.0, max_failed_starts: int = 5) -> None:
        """Serve until :meth:`stop` (``veil he serve``): a worker that dies (a crash in the HE
        library, say) is replaced, so one bad request cannot take the service down. A
        replacement must report that it started; after a failed start the next attempt waits
        twice as long (up to 60 polls), and after ``max_failed_starts`` failures in a row the
        server stops and raises :class:`ConfigurationError` with the worker's reason."""
        self._stopping = False
        starting: dict[int, queue.Queue[str]] = {}  # replacements not yet reported
        failures = 0
        next_try = 0.0
        while not self._stopping and self._processes:
            for i, proc in enumerate(list(self._processes)):
                status = starting.get(i)
                if status is not None:
                    try:
                        line = status.get_nowait()
                    except queue.Empty:
                        continue  # still starting
                    del starting[i]
                    if line == "ok":
                        failures = 0
                        continue
                    failures += 1
                    log.error("a replacement worker failed to start: %s", line)
                    if failures >= max_failed_starts:
                        self.stop()
                        raise ConfigurationError(
                            f"scoring workers failed to start {failures} times in a row; "
                            f"the last said: {line}"
                        )
                    next_try = time.monotonic() + poll * min(2**failures, 60)
                if proc.poll() is None or self._stopping or time.monotonic() < next_try:
                    continue
                log.warning("worker %s exited with %s; starting another", proc.pid, proc.returncode)
                self._processes[i], starting[i] = self._spawn()
            time.sleep(poll)

    def stop(self) -> None:
        self._stopping = True
        processes, self._processes = self._processes, []
        for p in processes:
            if p.poll() is None:
                p.terminate()
        for p in processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        shutil.rmtree(self.store, ignore_errors=True)

    def __enter__(self) -> ScoringServer:
        return self.start() if not self._processes else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RemoteScorer:
    """The client SDK: talks to a scoring server; encryption stays in :class:`ScoringClient`."""

    def __init__(self, target: str, *, tls: TlsFiles | None = None, timeout: float = 120.0) -> None:
        options = [
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ]
        if tls is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls.ca,
                private_key=tls.private_key,
                certificate_chain=tls.certificate,
            )
            self.channel = grpc.secure_channel(target, creds, options=options)
        self.target = target
        self.timeout = timeout
        self._describe = self.channel.unary_unary(
            f"/{SERVICE}/Describe",
            request_serializer=pb.DescribeRequest.SerializeToString,
            response_deserializer=pb.DescribeReply.FromString,
        )
        self._upload = self.channel.stream_unary(
            f"/{SERVICE}/UploadKeys",
            request_serializer=pb.KeyChunk.SerializeToString,
            response_deserializer=pb.Session.FromString,
        )
        self._score = self.channel.unary_unary(
            f"/{SERVICE}/Score",
            request_serializer=pb.ScoreRequest.SerializeToString,
            response_deserializer=pb.ScoreReply.FromString,
        )
        self._close = self.channel.unary_unary(
            f"/{SERVICE}/CloseSession",
            request_serializer=pb.Session.SerializeToString,
            response_deserializer=pb.Closed.FromString,
        )

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if code is grpc.StatusCode.UNAVAILABLE:
                raise RemoteProtocolError(
                    f"cannot reach the scoring server at {self.target}: {details}"
                ) from None
            name = code.name if code is not None else "UNKNOWN"
            raise RemoteProtocolError(f"the scoring server refused: {name}: {details}") from None

    def describe(self) -> dict[str, Any]:
        """The model's public spec."""
        with self._errors():
            reply = self._describe(pb.DescribeRequest(), timeout=self.timeout)
        spec: dict[str, Any] = json.loads(reply.spec_json)
        return spec

    def upload_keys(
        self, bundle: bytes, mode: Mode, packing: Packing, *, chunk_bytes: int = CHUNK_BYTES
    ) -> str:
        """Send the public bundle in chunks; the session id."""
        mode_pb = {v: k for k, v in _MODES.items()}[mode]
        packing_pb = {v: k for k, v in _PACKINGS.items()}[packing]

        def chunks() -> Iterator[pb.KeyChunk]:
            for i in range(0, max(len(bundle), 1), chunk_bytes):
                if i == 0:
                    yield pb.KeyChunk(
                        mode=mode_pb,
                        packing=packing_pb,
                        total_size=len(bundle),
                        data=bundle[:chunk_bytes],
                    )
                else:
                    yield pb.KeyChunk(data=bundle[i : i + chunk_bytes])

        with self._errors():
            return str(self._upload(chunks(), timeout=self.timeout).session_id)

    def open(self, client: ScoringClient) -> str:
        return self.upload_keys(client.public_bundle(), client.plan.mode, client.plan.packing)

    def score(self, session_id: str, ciphertexts: Sequence[bytes]) -> bytes:
        with self._errors():
            reply = self._score(
                pb.ScoreRequest(session_id=session_id, ciphertexts=list(ciphertexts)),
                timeout=self.timeout,
            )
        return bytes(reply.ciphertext)

    def close_session(self, session_id: str) -> None:
        with self._errors():
            self._close(pb.Session(session_id=session_id), timeout=self.timeout)

    def score_rows(self, client: ScoringClient, rows: Sequence[Mapping[str, str]]) -> list[float]:
        """Encode, encrypt, score remotely and decrypt ``rows``: one score per row."""
        session = self.open(client)
        try:
            x = client.encode(rows)
            results = [self.score(session, q) for q in client.encrypt(x)]
        finally:
            with contextlib.suppress(RemoteProtocolError):
                self.close_session(session)
        values = client.read(results, len(rows))
        return [float(v) for v in client.scores(values)]

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RemoteScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (where the command line allows no TLS)."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        import ipaddress

        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    worker_main()
