"""The client agent: a hospital's side of the federation, training on data that never leaves it.

``veil fl join`` runs :class:`Agent`: it joins the coordinator (its certificate names it), asks
for the next round that includes it, trains on its local data with the simulator's trainer
(:func:`~veil.federated.training.train_clients`), and, under secure aggregation, runs
:class:`~veil.federated.secure.SecureClient` through the round's stages, so only its masked
update leaves the machine. When the coordinator is unreachable it retries with backoff and
rejoins; when a round goes on without it (it was late) it waits for the next one.

Local data is a ``.npz`` file with arrays ``x`` (examples by features) and ``y`` (labels
``0..C-1``), or a CSV file with a header row, numeric features and a label column.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from veil.deploy import codec
from veil.deploy.config import ModelSpec
from veil.errors import (
    ConfigurationError,
    DataError,
    ProtocolError,
    RemoteProtocolError,
    VeilError,
)
from veil.federated.messages import TrainConfig, TrainInstruction, TrainResult
from veil.federated.secure import RoundGuard, SecureAggregation, SecureClient
from veil.privacy.random import SecureRandom
from veil.secagg.crypto import SigningKey
from veil.tls import TlsFiles

try:
    import grpc

    from veil.deploy.proto import federation_pb2 as pb
except ImportError as exc:  # pragma: no cover - depends on the environment
    from veil.errors import MissingDependencyError

    raise MissingDependencyError("grpcio", "deploy") from exc

__all__ = ["Agent", "AgentReport", "load_data"]

SERVICE = "veil.fl.v1.Coordinator"
log = logging.getLogger("veil.deploy.agent")


def load_data(path: str | Path, *, target: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """Features (float32) and labels (int64) from a ``.npz`` or a CSV file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files or "y" not in npz.files:
                raise DataError(f"{path} must hold arrays x and y; it has {npz.files}")
            x, y = npz["x"], npz["y"]
    else:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or target not in header:
                raise DataError(f"{path} has no column {target!r} (use --target)")
            col = header.index(target)
            rows = list(reader)
        try:
            table = np.array(rows, dtype=np.float64)
        except ValueError:
            raise DataError(f"{path}: every value must be a number") from None
        if table.ndim != 2 or table.shape[0] == 0:
            raise DataError(f"{path} has no rows")
        y = table[:, col]
        x = np.delete(table, col, axis=1)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != np.shape(y)[0] or x.shape[0] == 0:
        raise DataError(f"{path}: expected x of shape (examples, features) and one label each")
    labels = np.asarray(y)
    if not np.all(labels == np.round(labels)) or labels.min() < 0:
        raise DataError(f"{path}: labels must be integers 0, 1, ...")
    return x, labels.astype(np.int64)


@dataclasses.dataclass
class AgentReport:
    rounds: list[int] = dataclasses.field(default_factory=list)
    """Rounds this agent completed."""
    missed: list[int] = dataclasses.field(default_factory=list)
    """Rounds that went on without it."""
    bytes_sent: int = 0
    bytes_received: int = 0
    finished: bool = False


class Agent:
    """One client of a federation (see the module docstring)."""

    def __init__(
        self,
        target: str,
        *,
        x: np.ndarray,
        y: np.ndarray,
        tls: TlsFiles | None = None,
        name: str = "",
        retry_seconds: float = 300.0,
        straggle: float = 0.0,
        secure: SecureAggregation | None = None,
        noise_multiplier: float | None = None,
        guard_file: Path | None = None,
        allow_plain: bool = False,
        roster: Mapping[str, bytes] | None = None,
        signing_key: SigningKey | None = None,
    ) -> None:
        """``secure`` (and, for distributed DP, ``noise_multiplier``) are the federation's
        secure-aggregation settings as this hospital knows them: each round's graph,
        threshold and noise are checked against them and a round asking for less is refused.
        Without them the agent takes the coordinator's word (a semi-honest coordinator).

        ``guard_file`` keeps the rounds this agent took part in (a small JSON file, written
        before it sends anything for a round): a restarted agent still refuses to take part
        twice in a round of its federation. Without it that memory lasts while it runs.

        ``allow_plain``: take part in rounds without secure aggregation, where the coordinator
        sees this hospital's update itself. Off by default: such a federation is refused at
        join, and such a round (a coordinator that says one thing at join and does another)
        is refused and skipped; with ``secure`` settings a plain round is always refused.

        ``roster`` (every hospital's public Ed25519 key, from the consortium) and this
        hospital's ``signing_key`` run secure aggregation's active mode: the agent signs its
        keys and the survivor lists, checks the others' signatures against the roster, and
        refuses a round that lists a client the roster does not name. ``secure`` must then
        say ``active=True``."""
        if tls is None and not name:
            raise ConfigurationError("without TLS the agent must say its --name")
        self.target = target
        self.x, self.y = x, y
        self.tls = tls
        self.metadata = () if tls is not None else (("veil-client", name),)
        self.retry_seconds = retry_seconds
        self.straggle = straggle
        self.report = AgentReport()
        self._channel: Any = None
        self.client_id = name
        self._warm = False
        self.secure = secure
        self.noise_multiplier = noise_multiplier
        # refuses a round of this federation it already took part in, whatever the session
        self.guard = RoundGuard(guard_file)
        self.federation = ""
        self.allow_plain = allow_plain
        pinned = roster is not None
        if pinned != (signing_key is not None) or pinned != (secure is not None and secure.active):
            raise ConfigurationError(
                "the active mode takes all three: secure aggregation settings with active, "
                "the consortium's roster and this hospital's signing key"
            )
        self.roster = None if roster is None else dict(roster)
        self.signing_key = signing_key

    # -- transport ------------------------------------------------------------------------------

    def _connect(self) -> None:
        options = [
            ("grpc.max_receive_message_length", 4 << 20),
            ("grpc.max_send_message_length", 4 << 20),
        ]
        if self.tls is None:
            self._channel = grpc.insecure_channel(self.target, options=options)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=self.tls.ca,
                private_key=self.tls.private_key,
                certificate_chain=self.tls.certificate,
            )
            self._channel = grpc.secure_channel(self.target, creds, options=options)

    def _count_out(self, message: Any) -> bytes:
        data: bytes = message.SerializeToString()
        self.report.bytes_sent += len(data)
        return data

    def _reader(self, cls: Any) -> Any:
        def parse(raw: bytes) -> Any:
            self.report.bytes_received += len(raw)
            return cls.FromString(raw)

        return parse

    def _unary(self, method: str, request: Any, reply: Any, timeout: float) -> Any:
        call = self._channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=self._count_out,
            response_deserializer=self._reader(reply),
        )
        return call(request, timeout=timeout, metadata=self.metadata)

    def _stream_in(self, method: str, chunks: Iterator[Any], reply: Any, timeout: float) -> Any:
        call = self._channel.stream_unary(
            f"/{SERVICE}/{method}",
            request_serializer=self._count_out,
            response_deserializer=self._reader(reply),
        )
        return call(chunks, timeout=timeout, metadata=self.metadata)

    # -- the loop -------------------------------------------------------------------------------

    def join(self) -> Any:
        """Join (retrying while the coordinator is unreachable, up to ``retry_seconds``)."""
        give_up = time.monotonic() + self.retry_seconds
        delay = 0.2
        while True:
            if self._channel is None:
                self._connect()
            try:
                reply = self._unary("Join", pb.JoinRequest(agent_version="1"), pb.JoinReply, 10.0)
            except grpc.RpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    if time.monotonic() > give_up:
                        raise ProtocolError(
                            f"the coordinator at {self.target} is unreachable: {exc.details()}"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                raise ProtocolError(f"the coordinator refused to join: {exc.details()}") from None
            self.client_id = reply.client_id
            self.federation = str(reply.federation)
            if self.roster is not None and self.signing_key is not None:
                pinned = self.roster.get(self.client_id)
                if pinned != self.signing_key.public:
                    raise ConfigurationError(
                        f"the roster's signing key for {self.client_id!r} is not this "
                        "hospital's (--signing-key): check both files"
                    )
            log.info("joined %s as %s at round %d", reply.federation, reply.client_id, reply.round)
            return reply

    def run(self) -> AgentReport:
        """Take part in rounds until the federation finishes."""
        import torch

        torch.set_num_threads(1)
        while True:
            joined = self.join()
            if not joined.secure and (not self.allow_plain or self.secure is not None):
                raise ConfigurationError(
                    f"federation {joined.federation!r} runs without secure aggregation: the "
                    "coordinator would see this hospital's model update itself. Join only if "
                    "the consortium agreed to that, with --allow-plain-updates"
                )
            spec = ModelSpec.from_json(joined.model_json)
            if spec.features != self.x.shape[1]:
                raise DataError(
                    f"the model takes {spec.features} features; the local data has "
                    f"{self.x.shape[1]}"
                )
            from veil.federated.training import ClientData, ParamLayout

            self.layout = ParamLayout(spec.build())
            self.data = ClientData(torch.from_numpy(self.x), torch.from_numpy(self.y))
            if not self._warm:
                # the first call of the batched trainer traces it (seconds on a busy machine):
                # pay that now, not inside a round's deadline
                from veil.federated.training import train_clients

                train_clients(
                    self.layout,
                    self.layout.vector(),
                    [self.data],
                    TrainConfig(),
                    generator=torch.Generator(),
                )
                self._warm = True
            after = int(joined.round)
            try:
                while True:
                    header, model = self._next_task(after)
                    if header.kind == pb.TASK_FINISHED:
                        self.report.finished = True
                        return self.report
                    if header.kind != pb.TASK_TRAIN:
                        continue
                    after = int(header.round)
                    try:
                        started = time.perf_counter()
                        sent, received = self.report.bytes_sent, self.report.bytes_received
                        compute = self._round(header, model)
                        self.report.rounds.append(after)
                        log.info(
                            json.dumps(
                                {
                                    "event": "round_done",
                                    "round": after,
                                    "client": self.client_id,
                                    "seconds": round(time.perf_counter() - started, 4),
                                    "compute_seconds": round(compute, 4),
                                    "bytes_sent": self.report.bytes_sent - sent,
                                    "bytes_received": self.report.bytes_received - received,
                                }
                            )
                        )
                    except RemoteProtocolError as exc:
                        # the round asks for less than this hospital accepts (or a peer sent
                        # something bad): refuse this round, stay for the next
                        log.warning("refused round %d: %s", after, exc)
                        self.report.missed.append(after)
                        continue
                    except grpc.RpcError as exc:
                        if exc.code() in (
                            grpc.StatusCode.ABORTED,
                            grpc.StatusCode.FAILED_PRECONDITION,
                        ):
                            log.warning("round %d went on without us: %s", after, exc.details())
                            self.report.missed.append(after)
                            continue
                        raise
            except grpc.RpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.CANCELLED,
                ):
                    raise ProtocolError(
                        f"the coordinator refused a request: {exc.code().name}: {exc.details()}"
                    ) from None
                if after >= int(joined.rounds):
                    # the last round is done and the coordinator has gone: the run is over
                    self.report.finished = True
                    return self.report
                log.warning("lost the coordinator (%s); rejoining", exc.code().name)
                self._channel.close()
                self._channel = None

    def _next_task(self, after: int) -> tuple[pb.TaskHeader, np.ndarray | None]:
        call = self._channel.unary_stream(
            f"/{SERVICE}/NextTask",
            request_serializer=self._count_out,
            response_deserializer=self._reader(pb.Chunk),
        )
        stream = call(
            pb.TaskRequest(after_round=after, wait_seconds=20.0),
            timeout=60.0,
            metadata=self.metadata,
        )
        first = next(iter(stream))
        if first.WhichOneof("part") != "task":
            raise ProtocolError("the coordinator's task did not start with its header")
        header = first.task
        if header.kind != pb.TASK_TRAIN:
            return header, None
        # the model is the one this agent built from the federation's spec: nothing larger
        expected = self.layout.size
        if int(header.length) != expected:
            raise ProtocolError(
                f"the coordinator sent a model of {header.length} values; this federation's "
                f"model has {expected}"
            )
        reader = codec.VectorReader(header.dtype, expected, max_length=expected)
        for chunk in stream:
            reader.add(chunk.data)
        return header, reader.vector()

    def _train(self, instruction: TrainInstruction) -> TrainResult:
        import torch

        from veil.federated.training import train_clients

        generator = torch.Generator()
        generator.manual_seed(int(SecureRandom().words(1)[0] >> np.uint64(1)))
        out = train_clients(
            self.layout,
            instruction.parameters,
            [self.data],
            instruction.config,
            generator=generator,
        )[0]
        wire = instruction.parameters.dtype
        return TrainResult(
            instruction.round,
            instruction.client_id,
            out.update.astype(wire, copy=False),
            out.num_examples,
            out.metrics,
        )

    def _round(self, header: pb.TaskHeader, model: np.ndarray | None) -> float:
        """Take part in one round; the seconds spent computing (training, encoding and
        masking), as opposed to waiting for the coordinator and the network."""
        assert model is not None
        number = int(header.round)
        spec = codec.spec_from_pb(header.secure) if header.HasField("secure") else None
        instruction = TrainInstruction(
            number, self.client_id, model, codec.config_from_pb(header.config), spec
        )
        budget = 3 * float(header.stage_seconds) + 10.0
        if spec is None and (not self.allow_plain or self.secure is not None):
            raise RemoteProtocolError(
                f"round {number} has no secure aggregation (the coordinator would see this "
                "hospital's update), which this agent did not agree to: refused"
            )
        if spec is None:
            clock = time.perf_counter()
            result = self._train(instruction)
            compute = time.perf_counter() - clock
            if self.straggle:
                time.sleep(self.straggle)
            head = pb.Chunk(
                header=pb.ChunkHeader(
                    round=number,
                    dtype=str(result.update.dtype),
                    length=int(result.update.size),
                    num_examples=result.num_examples,
                    metrics=dict(result.metrics),
                )
            )
            self._stream_in("SubmitUpdate", codec.chunks(head, result.update), pb.RoundDone, budget)
            return compute
        client = SecureClient(
            instruction,
            rng=SecureRandom(),
            settings=self.secure,
            noise_multiplier=self.noise_multiplier,
            guard=self.guard,
            guard_scope=("veil-federation|" + self.federation).encode(),
            signing_key=self.signing_key,
            enrolled=self.roster,
        )
        directory = self._unary(
            "Advertise", codec.advertise_to_pb(number, client.advertise()), pb.KeyDirectory, budget
        )
        shares = self._unary(
            "Share",
            codec.share_keys_to_pb(number, client.share_keys(codec.directory_from_pb(directory))),
            pb.SharesForYou,
            budget,
        )
        clock = time.perf_counter()
        result = self._train(instruction)
        masked = client.masked_input(codec.shares_for_you_from_pb(shares), result)
        compute = time.perf_counter() - clock
        if self.straggle:
            time.sleep(self.straggle)
        head = pb.Chunk(
            header=pb.ChunkHeader(
                round=number, dtype="uint32", length=int(masked.vector.size), client=masked.client
            )
        )
        request = self._stream_in(
            "SubmitMasked", codec.chunks(head, masked.vector), pb.UnmaskRequest, budget
        )
        try:
            unmask_request: Any = codec.request_from_pb(request)
            if spec.active:
                check = client.consistency(unmask_request)
                proof = self._unary(
                    "Consistency",
                    codec.consistency_to_pb(number, check),
                    pb.ConsistencyProof,
                    budget,
                )
                unmask_request = codec.proof_from_pb(proof)
            shares_out = client.unmask(unmask_request)
        except VeilError as exc:
            raise ProtocolError(f"round {number}: refused to unmask: {exc}") from None
        self._unary("Unmask", codec.unmask_to_pb(number, shares_out), pb.RoundDone, budget)
        return compute
