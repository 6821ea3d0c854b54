"""The coordinator: the round protocol's state machines behind a gRPC service.

One driver thread moves :class:`~veil.federated.protocol.FederatedServer` (and, under secure
aggregation, a :class:`~veil.federated.secure.SecureServerRound` per round) exactly as the
simulator does. gRPC handler threads only translate: each checks that the caller's certificate
names an enrolled client (before it reads a byte of the payload), parses its request, checks
that the message belongs to the stage the round is in, drops it in the stage's inbox, and
waits until the driver closes the stage and publishes the answer for it. A stage closes when
every expected client has answered or when its deadline (``stage_seconds``) passes; whoever has
not answered by then is a dropout for the rest of the round (secure aggregation recovers its
masks), and a late message is refused with ``FAILED_PRECONDITION``. A client that comes back
asks for the next round.

Authentication: mutual TLS; the caller's identity is the common name of its certificate, which
must be one of the federation's enrolled clients (``PERMISSION_DENIED`` otherwise; a certificate
from another CA fails the handshake). Every request is parsed from raw bytes here, so a
malformed one gets ``INVALID_ARGUMENT`` and one over the size limit ``RESOURCE_EXHAUSTED``;
neither reaches the driver. A client may have ``MAX_CALLS_PER_CLIENT`` calls in progress and
one long poll for a task (a newer one ends the older), and the thread pool has room for all of
them, so no client can starve the others' calls.

Checkpoints and budget: see :mod:`veil.deploy.store`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np

from veil.deploy import codec
from veil.deploy.config import FederationConfig
from veil.deploy.roster import load_roster
from veil.deploy.store import StateStore
from veil.errors import (
    BudgetExceededError,
    ConfigurationError,
    RemoteProtocolError,
    ScopeNotFoundError,
    VeilError,
)
from veil.federated.dp import DpAggregator
from veil.federated.messages import TrainConfig, TrainInstruction, TrainResult
from veil.federated.protocol import FederatedServer, RoundOutcome, Stage
from veil.federated.secure import SecureAggregation, SecureServerRound
from veil.federated.strategies import (
    Strategy,
    SummedUpdates,
    fedadagrad,
    fedadam,
    fedavg,
    fedprox,
    fedyogi,
)
from veil.ledger import Ledger, Reservation
from veil.privacy.random import InsecureSeededRandom, RandomSource, SecureRandom
from veil.secagg import crypto
from veil.secagg.protocol import AdvertiseKeys, KeyDirectory, ShareKeys, UnmaskShares
from veil.tls import TlsFiles

try:
    import grpc

    from veil.deploy.proto import federation_pb2 as pb
except ImportError as exc:  # pragma: no cover - depends on the environment
    from veil.errors import MissingDependencyError

    raise MissingDependencyError("grpcio", "deploy") from exc

__all__ = ["SERVICE", "Coordinator", "build_strategy"]

SERVICE = "veil.fl.v1.Coordinator"
MAX_MESSAGE_BYTES = 4 << 20
"""Largest single gRPC message accepted (vectors come in 1 MiB chunks)."""
_GRACE_SECONDS = 2.0
MAX_CALLS_PER_CLIENT = 4
"""Calls one client may have in progress; more are refused with ``RESOURCE_EXHAUSTED`` (an
agent makes one at a time; ``veil fl status`` with its certificate is a second)."""
MAX_VECTOR = 50_000_000
"""Largest vector (values) a client may announce."""
log = logging.getLogger("veil.deploy")


def emit(event: str, **fields: Any) -> None:
    """One structured log line: a JSON object with the event's name and fields."""
    log.info(json.dumps({"t": round(time.time(), 3), "event": event, **fields}, default=str))


class _AbortError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def build_strategy(config: FederationConfig) -> Strategy:
    """The strategy of ``config``: its server optimiser, with DP's aggregator if private."""
    aggregator = (
        DpAggregator(noise_multiplier=config.noise_multiplier, clip_norm=config.clip_norm)
        if config.private
        else None
    )
    if config.strategy == "fedavg":
        return fedavg(aggregator)
    if config.strategy == "fedprox":
        return fedprox(mu=config.mu, aggregator=aggregator)
    makers = {"fedadam": fedadam, "fedyogi": fedyogi, "fedadagrad": fedadagrad}
    return makers[config.strategy](learning_rate=config.server_learning_rate, aggregator=aggregator)


_STAGE_MESSAGES: dict[str, tuple[Any, Callable[[Any], Any], str]] = {
    "Advertise": (pb.AdvertiseKeys, codec.advertise_from_pb, "advertise"),
    "Share": (pb.ShareKeys, codec.share_keys_from_pb, "share"),
    "Consistency": (pb.ConsistencyCheck, codec.consistency_from_pb, "consistency"),
    "Unmask": (pb.UnmaskShares, codec.unmask_from_pb, "unmask"),
}
"""The secure round's unary stage messages: method -> (protobuf class, conversion to the
protocol's message, which checks its content, and the stage that takes it)."""


@dataclasses.dataclass
class _Round:
    number: int
    instructions: dict[str, TrainInstruction]
    header: bytes
    model: list[bytes]
    """The model's data chunks, serialised."""
    stage: str = "starting"
    expected: frozenset[str] = frozenset()
    inbox: dict[str, Any] = dataclasses.field(default_factory=dict)
    published: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    closed: bool = False
    present: frozenset[str] = frozenset()
    """Clients that were asking for a task when the round started."""
    fetched: set[str] = dataclasses.field(default_factory=set)
    """Clients that received the round's task."""
    opened: float = 0.0
    """When the current stage opened (monotonic clock)."""
    disconnected: dict[str, str] = dataclasses.field(default_factory=dict)
    """Clients whose call ended (connection lost) while they waited for a stage to close."""


class Coordinator:
    """``veil fl serve``: serve ``config``'s federation until its last round (module docstring).

    ``tls`` are the coordinator's certificate, key and the consortium CA; ``insecure=True``
    serves plaintext and takes the client's name on trust from its request metadata (for
    tests on one machine only).
    """

    def __init__(
        self,
        config: FederationConfig,
        *,
        tls: TlsFiles | None = None,
        insecure: bool = False,
        port: int | None = None,
    ) -> None:
        if tls is None and not insecure:
            raise ConfigurationError(
                "the coordinator needs its TLS files ([tls] dir, from `veil certs`) or --insecure"
            )
        self.config = config
        self.tls = tls
        self.enrolled = frozenset(config.clients)
        if config.seed is not None:
            log.warning(
                "federation.seed is set: the coordinator's randomness (and any noise it adds) "
                "is predictable from it; for tests only"
            )
        model = config.model.build()
        from veil.federated.training import ParamLayout

        self.dimension = ParamLayout(model).size
        initial = ParamLayout(model).vector()
        secure = None
        if config.secure != "none":
            secure = SecureAggregation(
                graph=config.secure,  # type: ignore[arg-type]
                dropout=config.secure_dropout,
                clip=config.secure_clip,
                distributed_dp=config.dp == "distributed",
                active=config.secure_active,
            )
        enrolled = None
        if config.secure_active:
            assert config.roster is not None
            enrolled = load_roster(config.roster)
            missing = sorted(set(config.clients) - enrolled.keys())
            if missing:
                raise ConfigurationError(
                    f"the roster {config.roster} has no signing key for {', '.join(missing)}"
                )
        self.server = FederatedServer(
            parameters=initial,
            clients=config.clients,
            strategy=build_strategy(config),
            config=TrainConfig(
                local_epochs=config.local_epochs,
                learning_rate=config.learning_rate,
                batch_size=config.batch_size,
            ),
            rounds=config.rounds,
            secure_aggregation=secure,
            enrolled=enrolled,
        )
        # Before anything is settled: a second coordinator of this state would take the
        # running one's pending reservation for a crash's and abandon it while it releases.
        self._state_lock: int | None = _lock_state(config.state)
        try:
            self.store = StateStore(config.state)
            self.ledger: Ledger | None = None
            if config.private:
                assert config.ledger is not None
                self.ledger = Ledger(str(config.ledger), actor=f"veil fl serve {config.name}")
                try:
                    self.ledger.status(config.scope)
                except ScopeNotFoundError:
                    if config.epsilon is None:
                        raise ConfigurationError(
                            f"scope {config.scope} has no budget in {config.ledger}: set "
                            "dp.epsilon or `veil ledger set-budget`"
                        ) from None
                    self.ledger.set_budget(config.scope, epsilon=config.epsilon, delta=config.delta)
            self.resumed_from = self._resume()
            self._cv = threading.Condition()
            self._round: _Round | None = None
            self._seen: dict[str, float] = {}
            self._paid_by: str | None = None
            """The ledger entry paying for the running round."""
            self._polls: dict[str, int] = {}
            """Clients asking for a task now: the token of each one's (single) long poll."""
            self._poll_seq = 0
            self._calls: dict[str, int] = {}
            """Calls in progress per client (at most ``MAX_CALLS_PER_CLIENT``)."""
            self._told: set[str] = set()
            self._history: list[dict[str, Any]] = self.store.history()
            self._bytes_in = 0
            self._bytes_out = 0
            self._stopped = threading.Event()
            self.finished = threading.Event()
            self.error: str | None = None
            self.stopped: str | None = None
            self._grpc = grpc.server(
                # every enrolled client can have all its calls in progress at once, with room
                # for refusing strangers: long polls cannot starve the other calls
                futures.ThreadPoolExecutor(
                    max_workers=MAX_CALLS_PER_CLIENT * len(config.clients) + 8
                ),
                handlers=[self._handler()],
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ],
            )
            host, _, default_port = config.listen.rpartition(":")
            address = f"{host}:{default_port if port is None else port}"
            if tls is not None:
                creds = grpc.ssl_server_credentials(
                    [(tls.private_key, tls.certificate)],
                    root_certificates=tls.ca,
                    require_client_auth=True,
                )
                self.port = self._grpc.add_secure_port(address, creds)
            else:
                self.port = self._grpc.add_insecure_port(address)
            if self.port == 0:
                raise ConfigurationError(f"could not listen on {address}")
            self._driver = threading.Thread(target=self._drive, name="veil-driver", daemon=True)
        except BaseException:
            self._unlock_state()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._grpc.start()
        emit(
            "serving",
            federation=self.config.name,
            port=self.port,
            tls=self.tls is not None,
            resumed_from=self.resumed_from,
            rounds=self.config.rounds,
        )
        self._driver.start()

    def wait(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    def linger(self, seconds: float) -> None:
        """After the last round, keep answering until every client that took part has been
        told the federation is over (or ``seconds`` pass), so none keeps retrying."""
        deadline = time.monotonic() + seconds
        with self._cv:
            while time.monotonic() < deadline and not self._seen.keys() <= self._told:
                self._cv.wait(timeout=0.2)

    def stop(self, grace: float = 1.0) -> None:
        self._stopped.set()
        with self._cv:
            self._cv.notify_all()
        self._grpc.stop(grace).wait()
        self.store.close()
        if self.ledger is not None:
            self.ledger.close()
        self._unlock_state()

    def _unlock_state(self) -> None:
        if self._state_lock is not None:
            os.close(self._state_lock)  # closing the descriptor releases the lock
            self._state_lock = None

    # -- resuming ----------------------------------------------------------------------------

    def _purpose(self, number: int) -> str:
        return f"{self.config.name}: DP-FedAvg round {number}"

    def _round_of(self, entry: Any) -> int | None:
        """The round a ledger entry of this federation paid for (None: not one of ours)."""
        prefix = self._purpose(0)[:-1]
        tail = entry.purpose[len(prefix) :] if entry.purpose.startswith(prefix) else ""
        return int(tail) if tail.isdigit() else None

    def _resume(self) -> int:
        """Restore the last checkpoint; settle every reservation a crash left pending.

        Each pending reservation of this federation is settled by what of its round could have
        left the coordinator: a checkpointed round's is committed (its result may have left);
        one for the round after the checkpoint is abandoned, since nothing of that round left
        (its model was neither stored nor sent, and it is run again under a new reservation),
        unless under distributed DP the coordinator had already asked for the unmasking shares
        (it could have seen the noisy sum: then it is closed as failed, which counts); any
        other is closed as failed. None stays pending: no release is charged twice, none is
        left uncounted."""
        latest = self.store.latest()
        done = 0
        if latest is not None:
            done, state = latest
            self.server.restore(state)
        if self.ledger is not None:
            for entry in self.ledger.history(self.config.scope):
                if entry.kind != "reserve" or entry.status != "pending":
                    continue
                # the round it paid for (a coordinator of an older version noted a reservation
                # it carried over from an aborted round under the next round too)
                number = self.store.round_of(entry.entry_id) or self._round_of(entry)
                if number is None:
                    continue
                reservation = self._reservation_of(entry)
                if number <= done:
                    reservation.commit()
                    emit("reservation_committed_on_resume", round=number)
                elif (
                    number == done + 1
                    # ours: noted for that round, or a crash came before the note
                    and self.store.reservation(number) in (None, entry.entry_id)
                    and self.store.meta(f"exposed:{entry.entry_id}") is None
                ):
                    reservation.abandon(
                        f"round {number} was cut short by a coordinator restart before anything "
                        "of it was released; it runs again under a new reservation"
                    )
                    emit("reservation_abandoned_on_resume", round=number)
                else:
                    reservation.fail("cut short by a coordinator restart (counted)")
                    emit("reservation_failed_on_resume", round=number)
        if latest is not None:
            emit("resumed", round=done)
        return done

    def _reservation_of(self, entry: Any) -> Reservation:
        assert self.ledger is not None
        status = self.ledger.status(self.config.scope)
        return Reservation(
            self.ledger,
            entry_id=entry.entry_id,
            scope=status.budget.scope,
            event=entry.event,
            purpose=entry.purpose,
            seq=entry.seq,
            spent_epsilon=status.spent_epsilon,
            budget_epsilon=status.budget.epsilon,
            alerts=(),
        )

    def _pay(self, number: int) -> Reservation | None:
        """A new reservation for round ``number`` (None if the round spends nothing). The
        ledger reserves first and the store notes it second: a crash between them leaves a
        pending entry that :meth:`_resume` finds by its purpose."""
        event = self.server.round_event()
        if event is None:
            return None
        assert self.ledger is not None
        reservation = self.ledger.reserve(self.config.scope, event, purpose=self._purpose(number))
        self.store.reserved(number, reservation.id)
        return reservation

    def _released(self, reservation: Reservation, *, aggregated: bool) -> bool:
        """Whether round output may have left: the round aggregated (under central DP it
        always does, noise even over an empty sum, and the moved model is checkpointed and
        sent with the next round), or, under distributed DP, the unmasking shares were asked
        for (the coordinator could see the noisy sum). Otherwise its reservation is abandoned."""
        return aggregated or self.store.meta(f"exposed:{reservation.id}") is not None

    def round_rng(self, number: int) -> RandomSource:
        """The randomness of round ``number`` (sampling, and the noise of central DP): the
        operating system's secure generator, or, when the federation file sets a ``seed``
        (tests only), a stream derived from (seed, round). Derived rather than one stream for
        the run: a restarted coordinator would replay that stream from its start and add the
        noise of round 1 again. A round that is run again after a crash gets its noise again,
        which is harmless: that round's first result never left the coordinator."""
        if self.config.seed is None:
            return SecureRandom()
        sequence = np.random.SeedSequence(entropy=self.config.seed, spawn_key=(number,))
        return InsecureSeededRandom(int(sequence.generate_state(1, np.uint64)[0]))

    # -- the driver --------------------------------------------------------------------------

    def _drive(self) -> None:
        try:
            while self.server.stage is Stage.IDLE and not self._stopped.is_set():
                self._one_round()
        except BudgetExceededError as exc:
            self.stopped = str(exc)  # a clean end: the next round would overspend
            emit("stopped", reason=str(exc))
        except Exception as exc:  # keep the process alive for status; say what happened
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("the round driver failed")
        finally:
            with self._cv:
                self._round = None
                self._cv.notify_all()
            if self.server.stage is Stage.FINISHED:
                emit("finished", rounds=self.server.round)
            self.finished.set()

    def _wait_for_clients(self, number: int) -> None:
        """Block until ``min_clients`` enrolled agents are connected (asking for a task), for as
        long as it takes: a round that started without them would still spend its privacy
        budget. Says who it waits for every ``start_seconds``."""
        need = self.config.min_clients
        with self._cv:
            next_log = time.monotonic()
            while len(self._polls.keys() & self.enrolled) < need and not self._stopped.is_set():
                now = time.monotonic()
                if now >= next_log:
                    emit(
                        "waiting_for_clients",
                        round=number,
                        connected=sorted(self._polls.keys() & self.enrolled),
                        min_clients=need,
                    )
                    next_log = now + self.config.start_seconds
                self._cv.wait(timeout=max(0.0, min(0.5, next_log - now)))

    def _one_round(self) -> None:
        number = self.server.round + 1
        self._wait_for_clients(number)
        if self._stopped.is_set():
            return
        started = time.perf_counter()
        in0, out0 = self._bytes_in, self._bytes_out
        with self._cv:
            present = frozenset(self._polls)
            if len(present & self.enrolled) < self.config.min_clients:
                return  # one left between the wait and now: wait again, nothing was paid
        reservation = self._pay(number)
        self._paid_by = None if reservation is None else reservation.id
        aggregating = False  # from close_round on, central DP's noise may have been drawn
        try:
            rng = self.round_rng(number)
            instructions = self.server.start_round(rng, reservation=reservation)
            first = instructions[0] if instructions else None
            model = [] if first is None else codec_model(first)
            current = _Round(
                number,
                {i.client_id: i for i in instructions},
                b"" if first is None else _header(first, self.config.stage_seconds),
                model,
                present=present,
            )
            emit("round_started", round=number, sampled=len(instructions))
            summed = None
            if self.server.secure is None:
                self._plain_round(current)
            else:
                summed = self._secure_round(current, rng)
            aggregating = True
            outcome = self.server.close_round(rng, summed=summed)
            if self.server.secure is None:
                done = pb.RoundDone(round=current.number, aggregated=outcome.aggregated)
                self._publish(current, "update", dict.fromkeys(outcome.completed, done))
        except BaseException as exc:
            if reservation is not None:
                if self._released(reservation, aggregated=aggregating):
                    reservation.fail(f"round failed: {type(exc).__name__}")
                else:
                    reservation.abandon(
                        f"round failed before anything of it was released: {type(exc).__name__}"
                    )
            raise
        finally:
            with self._cv:
                if self._round is not None:
                    self._round.closed = True
                self._cv.notify_all()
        record = self._record(outcome, started, in0, out0, reservation)
        released = reservation is None or self._released(reservation, aggregated=outcome.aggregated)
        if not released:
            # distributed DP, aborted before any unmasking share was asked for: the model did
            # not move and the coordinator holds only masked vectors. Abandoned before the
            # checkpoint: a crash in between reruns the round under a new reservation.
            assert reservation is not None
            record["epsilon_spent"] = None
            record["reservation"] = "abandoned: the round released nothing"
            reservation.abandon("the round aborted before anything of it was released")
            emit("reservation_abandoned", round=number)
        self.store.checkpoint(number, self.server.state(), record)
        if reservation is not None and released:
            reservation.commit()
        self._history.append(record)
        emit("round_closed", **record)

    def _record(
        self,
        outcome: RoundOutcome,
        started: float,
        in0: int,
        out0: int,
        reservation: Reservation | None,
    ) -> dict[str, Any]:
        return {
            "round": outcome.round,
            "sampled": len(outcome.sampled),
            "completed": len(outcome.completed),
            "dropped": sorted(outcome.dropped),
            "aggregated": outcome.aggregated,
            # under DP the clients' metrics are not noised: they are not released either
            "metrics": {} if self.config.private else outcome.metrics,
            "seconds": round(time.perf_counter() - started, 4),
            "bytes_received": self._bytes_in - in0,
            "bytes_sent": self._bytes_out - out0,
            "epsilon_spent": None if reservation is None else reservation.spent_epsilon,
        }

    def _open(self, current: _Round, stage: str, expected: set[str]) -> None:
        with self._cv:
            self._open_locked(current, stage, expected)

    def _open_locked(self, current: _Round, stage: str, expected: set[str]) -> None:
        current.stage = stage
        current.expected = frozenset(expected)
        current.inbox = {}
        current.opened = time.monotonic()
        if self._round is not current:
            self._round = current
        self._cv.notify_all()

    def _collect(self, current: _Round, stage: str, expected: set[str]) -> dict[str, Any]:
        """Open ``stage`` for ``expected`` clients (unless :meth:`_publish` opened it with the
        previous stage's answers); their messages once all are in or the deadline passed."""
        if current.stage != stage:
            self._open(current, stage, expected)
        opened = current.opened
        deadline = opened + self.config.stage_seconds
        first = stage in ("advertise", "update")
        grace = opened + min(self.config.stage_seconds, _GRACE_SECONDS)

        def done() -> bool:
            if expected <= current.inbox.keys():
                return True
            # a round's first stage does not wait out its deadline for clients that were not
            # connected when it started and have not fetched their task since
            awaited = expected & (current.present | current.fetched)
            return first and time.monotonic() >= grace and awaited <= current.inbox.keys()

        with self._cv:
            while not done() and not self._stopped.is_set() and time.monotonic() < deadline:
                self._cv.wait(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            got = dict(current.inbox)
            current.stage = f"{stage}:closed"
            lost = dict(current.disconnected)
        missing = sorted(expected - got.keys())
        emit("stage_closed", round=current.number, stage=stage, got=len(got), missing=missing)
        for name in missing:
            if name in lost:
                reason = lost[name]
            elif first and name not in current.present | current.fetched:
                reason = "not connected when the round started"
            else:
                reason = f"no {stage} message before the deadline (slow, or gone between calls)"
            _drop(current.number, stage, name, reason)
        return got

    def _publish(
        self,
        current: _Round,
        stage: str,
        replies: dict[str, Any],
        *,
        then: tuple[str, set[str]] | None = None,
    ) -> None:
        """Answer ``stage``'s messages; with ``then`` (the next stage and who it expects),
        open that stage in the same step, so a client that answers at once is never early."""
        with self._cv:
            if then is not None:
                self._open_locked(current, *then)
            current.published[stage] = replies
            self._cv.notify_all()

    def _plain_round(self, current: _Round) -> None:
        """Collect the plain updates (the caller closes the round and answers them)."""
        got = self._collect(current, "update", set(current.instructions))
        for cid, result in got.items():
            try:
                self.server.receive(result)
            except RemoteProtocolError as exc:
                emit("update_refused", round=current.number, client=cid, reason=str(exc))

    def _secure_round(self, current: _Round, rng: RandomSource) -> SummedUpdates | None:
        spec = getattr(self.server, "spec", None)  # set by start_round
        if spec is None:
            self._open(current, "idle", set())
            return None
        sround = SecureServerRound(spec, rng=rng)
        number = {c: spec.number(c) for c in spec.clients}
        try:
            adverts = self._collect(current, "advertise", set(spec.clients))
            adverts = _valid_keys(current.number, adverts, active=spec.active)
            directory = sround.collect_keys([adverts[c] for c in spec.clients if c in adverts])
            reply = codec.directory_to_pb(directory)
            self._publish(
                current, "advertise", dict.fromkeys(adverts, reply), then=("share", set(adverts))
            )
            shares = self._collect(current, "share", set(adverts))
            shares = _valid_shares(current.number, shares, directory)
            routed = sround.collect_shares([shares[c] for c in spec.clients if c in shares])
            sharing = {c for c in shares if number[c] in routed}
            self._publish(
                current,
                "share",
                {c: codec.shares_for_you_to_pb(routed[number[c]]) for c in sharing},
                then=("masked", sharing),
            )
            masked = self._collect(current, "masked", sharing)
            request: Any = sround.collect_masked([masked[c] for c in spec.clients if c in masked])
            if self.config.dp == "distributed" and self._paid_by is not None:
                # durably before any client is asked for its unmasking shares: from here the
                # coordinator could see the noisy sum, so a crash must not make it free
                self.store.set_meta(f"exposed:{self._paid_by}", "1")
            survivors = set(masked)
            self._publish(
                current,
                "masked",
                dict.fromkeys(masked, codec.request_to_pb(request)),
                then=("consistency" if spec.active else "unmask", survivors),
            )
            if spec.active:
                checks = self._collect(current, "consistency", survivors)
                request = sround.collect_consistency(
                    [checks[c] for c in spec.clients if c in checks]
                )
                survivors = set(checks)
                self._publish(
                    current,
                    "consistency",
                    dict.fromkeys(checks, codec.proof_to_pb(request)),
                    then=("unmask", survivors),
                )
            answers = self._collect(current, "unmask", survivors)
            summed = _finish(
                current.number, sround, [answers[c] for c in spec.clients if c in answers]
            )
        except RemoteProtocolError as exc:
            emit("secure_round_aborted", round=current.number, reason=str(exc))
            self._publish(current, "aborted", {})
            return None
        done = pb.RoundDone(round=current.number, aggregated=True)
        self._publish(current, "unmask", dict.fromkeys(answers, done))
        return summed

    # -- gRPC handlers: translate, check, hand to the driver -----------------------------------

    def _identity(self, context: grpc.ServicerContext) -> str:
        if self.tls is None:
            meta = dict(context.invocation_metadata())
            name = str(meta.get("veil-client", ""))
        else:
            names = context.auth_context().get("x509_common_name") or []
            name = names[0].decode() if names else ""
        if name not in self.enrolled:
            emit("refused", client=name or "<no name>", peer=context.peer())
            raise _AbortError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate name {name!r} is not enrolled in federation {self.config.name!r}",
            )
        with self._cv:
            self._seen[name] = time.time()
            if self._calls.get(name, 0) >= MAX_CALLS_PER_CLIENT:
                raise _AbortError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{name!r} already has {MAX_CALLS_PER_CLIENT} calls in progress; retry "
                    "when one has ended",
                )
            self._calls[name] = self._calls.get(name, 0) + 1

        def release() -> None:
            with self._cv:
                self._calls[name] -= 1

        if not context.add_callback(release):  # the call has already ended
            release()
        return name

    def _guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return fn(request, context)
            except _AbortError as exc:
                context.abort(exc.code, str(exc))
            except RemoteProtocolError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except VeilError as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            except Exception:
                log.exception("internal error in a handler")
                context.abort(grpc.StatusCode.INTERNAL, "internal error (see the coordinator log)")

        return call

    def _guard_stream(self, fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from fn(request, context)
            except _AbortError as exc:
                context.abort(exc.code, str(exc))
            except RemoteProtocolError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except Exception:
                log.exception("internal error in a handler")
                context.abort(grpc.StatusCode.INTERNAL, "internal error (see the coordinator log)")

        return call

    def _count_out(self, message: Any) -> bytes:
        data: bytes = message if isinstance(message, bytes) else message.SerializeToString()
        self._bytes_out += len(data)
        return data

    def _raw(self, raw: bytes) -> bytes:
        self._bytes_in += len(raw)
        return raw

    def _handler(self) -> grpc.GenericRpcHandler:
        uu = grpc.unary_unary_rpc_method_handler
        us = grpc.unary_stream_rpc_method_handler
        su = grpc.stream_unary_rpc_method_handler
        common = {"request_deserializer": self._raw, "response_serializer": self._count_out}
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Join": uu(self._guard(self._join), **common),
                "NextTask": us(self._guard_stream(self._next_task), **common),
                **{
                    method: uu(self._guard(self._stage_handler(method)), **common)
                    for method in _STAGE_MESSAGES
                },
                "SubmitMasked": su(self._guard(self._submit_masked), **common),
                "SubmitUpdate": su(self._guard(self._submit_update), **common),
                "Status": uu(self._guard(self._status), **common),
            },
        )

    def _join(self, raw: bytes, context: grpc.ServicerContext) -> pb.JoinReply:
        name = self._identity(context)
        codec.parse(pb.JoinRequest, raw)
        emit("joined", client=name, peer=context.peer())
        return pb.JoinReply(
            federation=self.config.name,
            client_id=name,
            model_json=self.config.model.to_json(),
            rounds=self.config.rounds,
            round=self.server.round,
            secure=self.server.secure is not None,
        )

    def _next_task(self, raw: bytes, context: grpc.ServicerContext) -> Iterator[pb.Chunk | bytes]:
        """A long poll for the next round. One per client: a newer one ends the older with
        ``TASK_WAIT`` (an agent that reconnects is not locked out by its dead call)."""
        name = self._identity(context)
        request = codec.parse(pb.TaskRequest, raw)
        wait = float(request.wait_seconds)
        wait = min(max(wait, 0.0), 60.0) if math.isfinite(wait) else 0.0  # NaN would spin
        deadline = time.monotonic() + wait
        first = "advertise" if self.server.secure is not None else "update"
        with self._cv:
            self._poll_seq += 1
            token = self._poll_seq
            self._polls[name] = token
            self._cv.notify_all()
            outcome = pb.TASK_TRAIN
            try:
                while True:
                    r = self._round
                    if self._polls.get(name) != token:
                        outcome = pb.TASK_WAIT  # superseded by a newer poll of this client
                        break
                    if (
                        r is not None
                        and r.number > request.after_round
                        and name in r.instructions
                        and r.stage == first
                    ):
                        r.fetched.add(name)
                        break
                    if self.finished.is_set() or self._stopped.is_set():
                        outcome = pb.TASK_FINISHED
                        break
                    left = deadline - time.monotonic()
                    if left <= 0 or not context.is_active():
                        outcome = pb.TASK_WAIT
                        break
                    self._cv.wait(timeout=min(left, 0.5))
            finally:
                if self._polls.get(name) == token:
                    del self._polls[name]
        if outcome != pb.TASK_TRAIN:
            yield pb.Chunk(task=pb.TaskHeader(kind=outcome))
            if outcome == pb.TASK_FINISHED:
                with self._cv:
                    self._told.add(name)
                    self._cv.notify_all()
            return
        assert r is not None
        header = pb.TaskHeader.FromString(r.header)
        header.client_id = name
        instruction = r.instructions[name]
        if instruction.secure is not None:
            header.secure.CopyFrom(codec.spec_to_pb(instruction.secure))
        yield pb.Chunk(task=header)
        yield from r.model  # serialised once for every client of the round

    def _deliver(
        self, name: str, number: int, stage: str, message: Any, context: grpc.ServicerContext
    ) -> Any:
        """Put ``message`` in the inbox of ``stage``; the driver's answer when it closes. A
        caller whose call ends meanwhile (its process or link died) is noted as disconnected,
        the reason the round's log gives when it then misses a stage."""
        with self._cv:
            r = self._round
            if r is None or r.number != number:
                current = "none" if r is None else str(r.number)
                raise _AbortError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"round {number} is not running (current round: {current}); "
                    "ask for the next round",
                )
            if r.stage != stage or name not in r.expected:
                raise _AbortError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"round {number} is not taking {stage} messages from {name!r} (stage "
                    f"{r.stage}): late or out of order; you are a dropout of this round",
                )
            if name in r.inbox:
                raise _AbortError(grpc.StatusCode.ALREADY_EXISTS, f"{name!r} already sent {stage}")
            r.inbox[name] = message
            self._cv.notify_all()
            limit = time.monotonic() + 2 * self.config.stage_seconds + 5
            while (
                stage not in r.published
                and "aborted" not in r.published
                and not r.closed
                and not self._stopped.is_set()
            ):
                if time.monotonic() > limit:
                    break
                if not context.is_active():
                    r.disconnected[name] = f"its call ended while it waited on {stage} (gone)"
                    emit("client_disconnected", round=number, stage=stage, client=name)
                    break
                self._cv.wait(timeout=0.5)
            reply = r.published.get(stage, {}).get(name)
        if reply is None:
            raise _AbortError(
                grpc.StatusCode.ABORTED,
                f"round {number} went on without {name!r} after stage {stage} (dropped or "
                "aborted); ask for the next round",
            )
        return reply

    def _spec_number(self, name: str, number: int) -> int:
        spec = getattr(self.server, "spec", None)  # set by start_round
        if spec is None or spec.round != number or name not in spec.clients:
            raise _AbortError(
                grpc.StatusCode.FAILED_PRECONDITION, f"{name!r} is not in secure round {number}"
            )
        return int(spec.number(name))

    def _check_sender(self, name: str, number: int, claimed: int) -> None:
        if claimed != self._spec_number(name, number):
            raise RemoteProtocolError(f"{name!r} signed a message as another client ({claimed})")

    def _stage_handler(self, method: str) -> Callable[[bytes, grpc.ServicerContext], Any]:
        """The handler of a stage message (see ``_STAGE_MESSAGES``): who is calling first (an
        enrolled certificate name), then the payload is parsed and checked, then delivered."""
        cls, convert, stage = _STAGE_MESSAGES[method]

        def handle(raw: bytes, context: grpc.ServicerContext) -> Any:
            name = self._identity(context)
            msg = codec.parse(cls, raw)
            message = convert(msg)
            self._check_sender(name, msg.round, msg.client)
            return self._deliver(name, msg.round, stage, message, context)

        return handle

    def _read_vector(
        self, raws: Iterator[bytes], check: Callable[[pb.ChunkHeader], int]
    ) -> tuple[pb.ChunkHeader, np.ndarray]:
        """The header, checked by ``check`` (which returns the length it allows) before any
        data is read, and the vector."""
        first = codec.parse(pb.Chunk, next(raws, b""))
        if first.WhichOneof("part") != "header":
            raise RemoteProtocolError("a vector stream must start with its header")
        header = first.header
        allowed = min(check(header), MAX_VECTOR)
        reader = codec.VectorReader(header.dtype, int(header.length), max_length=allowed)
        for raw in raws:
            chunk = codec.parse(pb.Chunk, raw)
            if chunk.WhichOneof("part") != "data":
                raise RemoteProtocolError("only data may follow a vector's header")
            reader.add(chunk.data)
        return header, reader.vector()

    def _submit_masked(self, raws: Iterator[bytes], context: grpc.ServicerContext) -> Any:
        name = self._identity(context)

        def check(header: pb.ChunkHeader) -> int:
            self._check_sender(name, header.round, header.client)
            spec = getattr(self.server, "spec", None)  # set by start_round
            return MAX_VECTOR if spec is None else int(spec.length)

        header, vector = self._read_vector(raws, check)
        spec = getattr(self.server, "spec", None)
        assert spec is not None
        if header.dtype != "uint32" or vector.size != spec.length:
            raise RemoteProtocolError(
                f"a masked vector must be {spec.length} uint32 words; got {vector.size} "
                f"{header.dtype}"
            )
        from veil.secagg.protocol import MaskedInput

        masked = MaskedInput(header.client, vector.astype(np.uint32))
        return self._deliver(name, header.round, "masked", masked, context)

    def _submit_update(self, raws: Iterator[bytes], context: grpc.ServicerContext) -> Any:
        name = self._identity(context)
        header, vector = self._read_vector(raws, lambda _: self.dimension)
        if header.dtype not in ("float32", "float64"):
            raise RemoteProtocolError(f"an update must be float32 or float64, not {header.dtype}")
        if vector.size != self.dimension:
            raise RemoteProtocolError(
                f"an update must have {self.dimension} values; got {vector.size}"
            )
        result = TrainResult(
            int(header.round),
            name,
            vector,
            self._check_examples(name, int(header.num_examples)),
            _check_metrics(dict(header.metrics)),
        )
        return self._deliver(name, header.round, "update", result, context)

    def _check_examples(self, name: str, count: int) -> int:
        """A plain update's example count weighs it in FedAvg: at most ``max_examples``."""
        cap = self.config.max_examples
        if cap is not None and count > cap:
            raise RemoteProtocolError(
                f"{name!r} reports {count} examples; this federation allows at most {cap} "
                "(federation.max_examples)"
            )
        return count

    def _status(self, raw: bytes, context: grpc.ServicerContext) -> pb.StatusReply:
        self._identity(context)
        codec.parse(pb.StatusRequest, raw)
        return pb.StatusReply(json=json.dumps(self.status(), default=str))

    def status(self) -> dict[str, Any]:
        """What ``veil fl status`` shows."""
        with self._cv:
            r = self._round
            seen = dict(self._seen)
        now = time.time()
        out: dict[str, Any] = {
            "federation": self.config.name,
            "rounds": self.config.rounds,
            "round": self.server.round,
            "stage": "finished" if self.finished.is_set() else (r.stage if r else "waiting"),
            "resumed_from": self.resumed_from,
            "clients": {
                c: (None if c not in seen else round(now - seen[c], 1)) for c in self.enrolled
            },
            "history": self._history[-20:],
            "bytes_received": self._bytes_in,
            "bytes_sent": self._bytes_out,
            "error": self.error,
            "stopped": self.stopped,
        }
        if self.ledger is not None:
            spent = self.ledger.status(self.config.scope)
            out["privacy"] = {
                "scope": self.config.scope,
                "epsilon_spent": spent.spent_epsilon,
                "epsilon_budget": spent.budget.epsilon,
                "pending": spent.pending,
                "abandoned": spent.abandoned,
            }
        return out


def codec_model(instruction: TrainInstruction) -> list[bytes]:
    """The model's little-endian bytes as serialised data chunks (the same for every client of
    a round)."""
    params = instruction.parameters
    data = np.ascontiguousarray(params, dtype=params.dtype.newbyteorder("<")).tobytes()
    view = memoryview(data)
    return [
        pb.Chunk(data=bytes(view[lo : lo + codec.CHUNK_BYTES])).SerializeToString()
        for lo in range(0, len(data), codec.CHUNK_BYTES)
    ]


def _header(instruction: TrainInstruction, stage_seconds: float) -> bytes:
    data: bytes = pb.TaskHeader(
        kind=pb.TASK_TRAIN,
        round=instruction.round,
        config=codec.config_to_pb(instruction.config),
        dtype=str(instruction.parameters.dtype),
        length=int(instruction.parameters.size),
        stage_seconds=stage_seconds,
    ).SerializeToString()
    return data


MAX_METRICS = 8
"""Metrics one plain update may report (names of at most 64 characters, finite values of
magnitude at most ``METRIC_BOUND``)."""
METRIC_BOUND = 1e6


def _check_metrics(metrics: dict[str, float]) -> dict[str, float]:
    if len(metrics) > MAX_METRICS:
        raise RemoteProtocolError(f"an update may report {MAX_METRICS} metrics, not {len(metrics)}")
    for key, value in metrics.items():
        if not key or len(key) > 64:
            raise RemoteProtocolError("a metric's name must have 1 to 64 characters")
        if not math.isfinite(value) or abs(value) > METRIC_BOUND:
            raise RemoteProtocolError(
                f"metric {key!r} must be finite and at most {METRIC_BOUND:g} in magnitude"
            )
    return metrics


# -- what the coordinator checks before a message can sink a secure round ----------------------

_SEALED_SHARE_BYTES = crypto.NONCE_BYTES + 2 * 33 + 16
"""A sealed pair of Shamir shares: nonce, two 33-byte field elements, the GCM tag."""
_SIGNATURE_BYTES = 64
_COMMITMENT_BYTES = 32


def _lock_state(state: Path) -> int:
    """Hold ``<state>.lock`` exclusively, or refuse to start: one coordinator per state file.

    A restart settles the reservations its crashed predecessor left pending, and abandons the
    one of the round that was cut short. Were that predecessor still running (a restart while
    the old process hangs, the same command started twice), the round it is releasing would be
    abandoned under it and its privacy loss never counted. The kernel drops the lock when the
    process dies, even by SIGKILL, so a real restart is never refused."""
    path = Path(f"{state}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)  # as the state store does, a first start
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigurationError(
            f"another coordinator is running with the state {state} (it holds {path}): stop "
            "it before starting this one; two coordinators of one federation would settle "
            "each other's privacy-budget reservations"
        ) from None
    return fd


def _drop(round: int, stage: str, client: str, reason: str) -> None:
    emit("client_dropped", round=round, stage=stage, client=client, reason=reason)


def _valid_keys(
    round: int, adverts: dict[str, AdvertiseKeys], *, active: bool
) -> dict[str, AdvertiseKeys]:
    """The advertisements every peer can use. A key that is not a canonical 32-byte X25519
    point, or a low-order one (its shared secret with anyone is all zeros), a signature of
    the wrong length, or a key that another advertisement repeats would make every honest
    client refuse the round: its sender is dropped from the round instead (a dropout)."""
    probe = crypto.AgreementKey()
    good: dict[str, AdvertiseKeys] = {}
    for name, m in adverts.items():
        try:
            for key in (m.mask_key, m.share_key):
                probe.exchange(key)  # length, canonical encoding, low order
            expected = _SIGNATURE_BYTES if active else 0
            if len(m.signature) != expected:
                raise RemoteProtocolError(
                    f"a signature of {len(m.signature)} bytes (expected {expected})"
                )
        except VeilError as exc:
            _drop(round, "advertise", name, f"unusable public key: {exc}")
            continue
        good[name] = m
    counts: dict[bytes, int] = {}
    for m in good.values():
        for key in {m.mask_key, m.share_key}:
            counts[key] = counts.get(key, 0) + 1
    for name, m in list(good.items()):
        if m.mask_key == m.share_key or counts[m.mask_key] > 1 or counts[m.share_key] > 1:
            _drop(round, "advertise", name, "a public key that another advertisement repeats")
            del good[name]
    return good


def _valid_shares(
    round: int, shares: dict[str, ShareKeys], directory: KeyDirectory
) -> dict[str, ShareKeys]:
    """The share messages the recipients can open: one sealed share of the right size for
    exactly each neighbour that advertised keys (a sender that leaves one out would mask with
    a peer that does not unmask with it, and the sum would be wrong without anyone noticing),
    and a 32-byte commitment. A sender whose message is malformed is dropped (a dropout
    before it masked anything, which the protocol tolerates)."""
    good: dict[str, ShareKeys] = {}
    for name, m in shares.items():
        peers = {v for v in directory.neighbours.get(m.client, ()) if v in directory.keys}
        reason = None
        if set(m.sealed) != peers:
            reason = (
                f"shares for peers {sorted(m.sealed)}; its neighbours that advertised keys "
                f"are {sorted(peers)}"
            )
        elif any(len(b) != _SEALED_SHARE_BYTES for b in m.sealed.values()):
            reason = f"a sealed share that is not {_SEALED_SHARE_BYTES} bytes"
        elif len(m.seed_commitment) != _COMMITMENT_BYTES:
            reason = f"a seed commitment that is not {_COMMITMENT_BYTES} bytes"
        if reason is not None:
            _drop(round, "share", name, f"malformed key shares: {reason}")
            continue
        good[name] = m
    return good


def _finish(round: int, sround: SecureServerRound, answers: list[UnmaskShares]) -> SummedUpdates:
    """Unmask the sum. If the shares are inconsistent (one client sent bad ones), try again
    without each answer in turn (:meth:`~veil.secagg.protocol.SecAggServer.finish_without`):
    a survivor's shares only help rebuild the others' secrets (its own masked input stays in
    the sum), so leaving out one answer is correct whenever the rest still reach the
    threshold. The first answer whose removal works is dropped."""
    threshold = sround.spec.plan.threshold
    try:
        return sround.finish(answers)
    except RemoteProtocolError as exc:
        if len(answers) <= threshold:
            raise
        failure = exc
    names = dict(enumerate(sround.spec.clients, start=1))
    for culprit in answers:
        try:
            summed = sround.finish_without(culprit.client)
        except RemoteProtocolError:
            continue
        _drop(
            round,
            "unmask",
            names.get(culprit.client, str(culprit.client)),
            f"inconsistent unmasking shares ({failure}); the sum was rebuilt without them",
        )
        return summed
    raise failure
