"""The server side of federated training as a state machine with no I/O.

:class:`FederatedServer` holds the global model and drives rounds. It never opens a socket,
reads a clock or starts a thread; a driver (the simulator, or the gRPC coordinator) moves it:

==========  ===================================  ==========  ====================================
stage       call                                 next stage  what happens
==========  ===================================  ==========  ====================================
IDLE        ``round_event()``                    IDLE        the privacy cost of the next round
IDLE        ``start_round(rng, reservation=)``   TRAINING    sample clients; one instruction each
TRAINING    ``receive(TrainResult|Failure)``     TRAINING    record the answer of a sampled client
TRAINING    ``receive_cohort(CohortResult)``     TRAINING    record the answers of several at once
TRAINING    ``close_round(rng)``                 IDLE        whoever has not answered is dropped;
                                                 or FINISHED aggregate; move the model
==========  ===================================  ==========  ====================================

``receive_cohort`` is ``receive`` for each of a cohort's answers, checked on the whole matrix
(all of them are refused if one is); FedAvg and the other aggregators then read the stacked
updates without a per-client copy. Nothing else differs: who completed, who dropped, the
example-weighted metrics (summed in the same order) and the bytes counted are the same as for
the same answers sent one by one.

A driver calls ``close_round`` when every sampled client has answered or when its deadline
passes; stragglers that answer later are refused (:class:`~veil.errors.RemoteProtocolError`).
The privacy cost of a round is known before it starts, so a driver reserves it in the ledger
first and never draws noise for a round the budget cannot pay for; a private round does not
start without the pending reservation of exactly that cost. Settings that cannot work (DP with
a sampling the accountant does not describe, adaptive clipping with too little count noise,
Krum with fewer clients than it needs) are refused when the server is built, before anything
is spent.

Client sampling (:class:`ClientSampling`) is Poisson (each client independently with
probability ``q``, as DP amplification assumes) or a uniform sample of fixed size; its randomness
comes from the :class:`~veil.privacy.RandomSource` passed to ``start_round``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError, LocalProtocolError, RemoteProtocolError
from veil.federated.messages import (
    CohortResult,
    TrainConfig,
    TrainFailure,
    TrainInstruction,
    TrainResult,
)
from veil.federated.secure import Encoding, SecureAggregation, make_spec
from veil.federated.strategies import RoundContext, Strategy, SummedUpdates
from veil.ledger import Reservation
from veil.privacy.events import Event
from veil.privacy.random import RandomSource
from veil.secagg import crypto

__all__ = ["ClientSampling", "FederatedServer", "RoundOutcome", "Stage"]

Vector = npt.NDArray[np.float64]


class Stage(enum.Enum):
    IDLE = "idle"
    TRAINING = "training"
    FINISHED = "finished"


def uniform(rng: RandomSource, n: int) -> npt.NDArray[np.float64]:
    """``n`` uniform draws in [0, 1) with 53 random bits each."""
    return (rng.words(n) >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclasses.dataclass(frozen=True)
class ClientSampling:
    """Which clients train in a round: each with probability ``fraction`` (``poisson=True``) or
    exactly ``max(min_clients, round(fraction · N))`` of them chosen uniformly."""

    fraction: float = 1.0
    poisson: bool = False
    min_clients: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.fraction, int | float) or not 0 < self.fraction <= 1:
            raise ConfigurationError(f"fraction must be in (0, 1], got {self.fraction!r}")
        if not isinstance(self.min_clients, int) or self.min_clients < 1:
            raise ConfigurationError(f"min_clients must be >= 1, got {self.min_clients!r}")

    def sample(self, clients: Sequence[str], rng: RandomSource) -> tuple[str, ...]:
        n = len(clients)
        if self.fraction == 1.0:
            return tuple(clients)
        if self.poisson:
            keep = uniform(rng, n) < self.fraction
            return tuple(c for c, k in zip(clients, keep, strict=True) if k)
        size = min(n, max(self.min_clients, round(self.fraction * n)))
        order = np.argsort(uniform(rng, n), kind="stable")[:size]
        return tuple(clients[i] for i in sorted(order))


@dataclasses.dataclass(frozen=True)
class RoundOutcome:
    """What one round did."""

    round: int
    sampled: tuple[str, ...]
    completed: tuple[str, ...]
    dropped: tuple[str, ...]
    metrics: dict[str, float]
    """Example-weighted means of the metrics the clients reported."""
    bytes_sent: int
    bytes_received: int
    aggregated: bool
    """False when no client answered: the model did not move."""


class FederatedServer:
    """The global model and the round protocol (see the module docstring).

    The server keeps the model in float64 and sends it as ``wire_dtype`` (the model's own
    precision, float32 by default).
    """

    def __init__(
        self,
        *,
        parameters: npt.ArrayLike,
        clients: Sequence[str],
        strategy: Strategy,
        config: TrainConfig,
        rounds: int,
        sampling: ClientSampling | None = None,
        min_completed: int = 1,
        wire_dtype: type[np.floating[Any]] = np.float32,
        secure_aggregation: SecureAggregation | None = None,
        enrolled: Mapping[str, bytes] | None = None,
    ) -> None:
        """``enrolled`` maps each client to its public Ed25519 signing key, for secure
        aggregation's active mode."""
        params = np.array(parameters, dtype=np.float64).reshape(-1)
        if params.size == 0 or not np.all(np.isfinite(params)):
            raise ConfigurationError("the initial parameters must be a non-empty finite vector")
        ids = tuple(clients)
        if not ids:
            raise ConfigurationError("a federation needs at least one client")
        if len(set(ids)) != len(ids):
            raise ConfigurationError("client ids must be unique")
        if not isinstance(rounds, int) or rounds < 1:
            raise ConfigurationError(f"rounds must be an integer >= 1, got {rounds!r}")
        if not isinstance(min_completed, int) or min_completed < 1:
            raise ConfigurationError(f"min_completed must be >= 1, got {min_completed!r}")
        self._parameters = params
        self.clients = ids
        self.strategy = strategy
        self.base_config = config
        self.rounds = rounds
        self.sampling = sampling or ClientSampling()
        self.min_completed = min_completed
        self.wire_dtype = np.dtype(wire_dtype)
        aggregator = strategy.aggregator
        self.secure = secure_aggregation
        self.enrolled = None if enrolled is None else dict(enrolled)
        if self.secure is not None and self.secure.active:
            missing = [c for c in ids if self.enrolled is None or c not in self.enrolled]
            if missing:
                raise ConfigurationError(
                    "secure aggregation's active mode needs each client's enrolled signing "
                    f"key: none for {', '.join(missing[:5])}"
                )
        self.encoding = None if self.secure is None else self.secure.encoding(aggregator)
        self.session = crypto.random_seed()[:16]
        self.private = aggregator.round_event(sampling_probability=1.0) is not None
        if (
            self.private
            and self.secure is None
            and not (self.sampling.poisson or self.sampling.fraction == 1.0)
        ):
            raise ConfigurationError(
                "client-level DP is accounted for Poisson sampling of clients: use "
                "ClientSampling(fraction=q, poisson=True) (or every client, fraction=1)"
            )
        if len(ids) < aggregator.min_results:
            raise ConfigurationError(
                f"{aggregator.describe()} needs at least {aggregator.min_results} updates per "
                f"round; the federation has {len(ids)} clients"
            )
        aggregator.check(population=len(ids), sampling_probability=self.sampling.fraction)
        aggregator.reset()
        strategy.optimizer.reset()
        self._paid: object | None = None
        self.stage = Stage.IDLE
        self.round = 0
        self._sampled: tuple[str, ...] = ()
        self._sampled_set: frozenset[str] = frozenset()
        self._results: dict[str, TrainResult] = {}
        self._failed: dict[str, str] = {}
        self._cohorts: list[CohortResult] = []
        self._in_cohort: dict[str, tuple[int, int]] = {}  # client -> (cohort, row)
        self._sent_bytes = 0

    @property
    def parameters(self) -> Vector:
        """The current global model (a copy)."""
        return self._parameters.copy()

    @property
    def waiting_for(self) -> frozenset[str]:
        """Sampled clients that have not answered this round."""
        return (
            self._sampled_set - self._results.keys() - self._failed.keys() - self._in_cohort.keys()
        )

    def _answered(self, client_id: str) -> bool:
        return (
            client_id in self._results or client_id in self._failed or client_id in self._in_cohort
        )

    def _expect(self, stage: Stage, action: str) -> None:
        if self.stage is not stage:
            raise LocalProtocolError(
                f"cannot {action} in stage {self.stage.value} (expected {stage.value})"
            )

    def round_event(self) -> Event | None:
        """The privacy cost of the next round, or None if the strategy is not private."""
        self._expect(Stage.IDLE, "ask for the next round's cost")
        # Under secure aggregation a private round is not amplified by sampling: the server
        # talks to the round's clients, and whether a round releases a sum at all (enough
        # clients sampled, enough survivors) depends on who took part. Accounted per round as
        # the Gaussian mechanism for one client's update replaced by zeros.
        q = 1.0 if self.secure is not None else self.sampling.fraction
        return self.strategy.aggregator.round_event(sampling_probability=q)

    def start_round(
        self, rng: RandomSource, *, reservation: Reservation | None = None
    ) -> tuple[TrainInstruction, ...]:
        """Sample the round's clients and return one instruction for each.

        A private round must be paid for first: pass the ledger's pending ``reservation`` of
        exactly :meth:`round_event`.
        """
        self._expect(Stage.IDLE, "start a round")
        if self.private:
            expected = self.round_event()
            if reservation is None or reservation.event != expected:
                raise LocalProtocolError(
                    "a private round must be paid for before it starts: reserve "
                    f"{expected.describe() if expected else ''} in the ledger and pass the "
                    "reservation to start_round"
                )
            if reservation.status != "pending":
                raise LocalProtocolError(
                    f"the reservation for this round is {reservation.status}, not pending"
                )
        self.round += 1
        self._sampled = self.sampling.sample(self.clients, rng)
        self._sampled_set = frozenset(self._sampled)
        self._results = {}
        self._failed = {}
        self._cohorts = []
        self._in_cohort = {}
        config = self.strategy.configure(self.base_config)
        model = self._parameters.astype(self.wire_dtype)
        model.flags.writeable = False
        spec = None
        if self.secure is not None:
            if len(self._sampled) < 3:
                # too few for a sum to hide anyone: nobody trains, the model does not move
                self._sampled, self._sampled_set = (), frozenset()
            else:
                spec = make_spec(
                    self.secure,
                    session=self.session,
                    round=self.round,
                    clients=self._sampled,
                    dimension=int(self._parameters.size),
                    aggregator=self.strategy.aggregator,
                    config=config,
                    enrolled=self.enrolled,
                )
        self.spec = spec
        instructions = TrainInstruction.broadcast(self.round, self._sampled, model, config, spec)
        # every instruction carries the same model and spec
        self._sent_bytes = len(instructions) * instructions[0].payload_bytes if instructions else 0
        self.stage = Stage.TRAINING
        return instructions

    def receive(self, message: TrainResult | TrainFailure) -> None:
        """Record a sampled client's answer for this round."""
        self._expect(Stage.TRAINING, "receive a client's answer")
        if message.round != self.round:
            raise RemoteProtocolError(
                f"client {message.client_id!r} answered round {message.round} during round "
                f"{self.round}"
            )
        if message.client_id not in self._sampled_set:
            raise RemoteProtocolError(f"client {message.client_id!r} was not sampled this round")
        if self._answered(message.client_id):
            raise RemoteProtocolError(f"client {message.client_id!r} already answered this round")
        if isinstance(message, TrainFailure):
            self._failed[message.client_id] = message.reason
            return
        if self.secure is not None:
            raise LocalProtocolError(
                "under secure aggregation an update reaches the server only inside the masked "
                "sum: pass the SecureServerRound's sums to close_round"
            )
        if message.update.size != self._parameters.size:
            raise RemoteProtocolError(
                f"client {message.client_id!r} sent {message.update.size} values; "
                f"the model has {self._parameters.size}"
            )
        if not np.isfinite(message.update).all():
            raise RemoteProtocolError(f"client {message.client_id!r} sent a non-finite update")
        self._results[message.client_id] = message

    def receive_cohort(self, message: CohortResult) -> None:
        """Record the answers of several sampled clients at once (see the module docstring):
        the same checks as :meth:`receive` for each, and none is recorded if one fails."""
        self._expect(Stage.TRAINING, "receive a cohort's answers")
        if message.round != self.round:
            raise RemoteProtocolError(
                f"a cohort answered round {message.round} during round {self.round}"
            )
        ids = message.client_ids
        if not self._sampled_set.issuperset(ids) or not self.waiting_for.issuperset(ids):
            for cid in ids:  # the first offender, with the message receive would give
                if cid not in self._sampled_set:
                    raise RemoteProtocolError(f"client {cid!r} was not sampled this round")
                if self._answered(cid):
                    raise RemoteProtocolError(f"client {cid!r} already answered this round")
        if self.secure is not None:
            raise LocalProtocolError(
                "under secure aggregation an update reaches the server only inside the masked "
                "sum: pass the SecureServerRound's sums to close_round"
            )
        if message.updates.shape[1] != self._parameters.size:
            raise RemoteProtocolError(
                f"a cohort sent {message.updates.shape[1]} values per client; "
                f"the model has {self._parameters.size}"
            )
        finite = np.isfinite(message.updates).all(axis=1)
        if not finite.all():
            bad = message.client_ids[int(np.flatnonzero(~finite)[0])]
            raise RemoteProtocolError(f"client {bad!r} sent a non-finite update")
        index = len(self._cohorts)
        self._cohorts.append(message)
        self._in_cohort.update({cid: (index, row) for row, cid in enumerate(ids)})

    def _round_results(self) -> Sequence[TrainResult]:
        """The answers of the clients that completed the round, in the order sampled."""
        if not self._in_cohort:
            return [self._results[c] for c in self._sampled if c in self._results]
        if self._results:  # some answers came one by one: a list of messages
            return [
                self._results[c]
                if c in self._results
                else self._cohorts[self._in_cohort[c][0]][self._in_cohort[c][1]]
                for c in self._sampled
                if c in self._results or c in self._in_cohort
            ]
        joined = CohortResult.concatenate(self._cohorts)
        if joined.client_ids == self._sampled:
            return joined
        position = {cid: i for i, cid in enumerate(joined.client_ids)}
        order = [position[c] for c in self._sampled if c in position]
        if order == list(range(len(order))):
            return joined
        return joined.select(order)

    def close_round(
        self, rng: RandomSource, *, summed: SummedUpdates | None = None
    ) -> RoundOutcome:
        """End the round: clients still awaited are dropped; aggregate what arrived.

        Under secure aggregation pass the secure round's sums as ``summed`` (None when the
        secure round aborted: the model does not move).
        """
        self._expect(Stage.TRAINING, "close a round")
        if self.secure is not None:
            return self._close_secure(rng, summed)
        if summed is not None:
            raise LocalProtocolError("sums are for secure aggregation, which is not configured")
        results = self._round_results()
        completed = (
            tuple(r.client_id for r in results)
            if not isinstance(results, CohortResult)
            else results.client_ids
        )
        done = set(completed)
        dropped = tuple(c for c in self._sampled if c not in done)
        context = self._context(rng)
        aggregator = self.strategy.aggregator
        private = self.private
        enough = len(results) >= max(self.min_completed, aggregator.min_results)
        # A private aggregator releases a noisy sum even of nothing: skipping the round would
        # say that nobody (or too few) took part.
        aggregated = (bool(results) and enough) or private
        if aggregated:
            update = aggregator.aggregate(results, context)
            self._parameters = self.strategy.optimizer.step(self._parameters, update)
            aggregator.after_round(results, context)
        self.stage = Stage.FINISHED if self.round >= self.rounds else Stage.IDLE
        return RoundOutcome(
            round=self.round,
            sampled=self._sampled,
            completed=completed,
            dropped=dropped,
            metrics=_weighted_metrics(results),
            bytes_sent=self._sent_bytes,
            bytes_received=_payload_bytes(results),
            aggregated=aggregated,
        )

    def _context(self, rng: RandomSource) -> RoundContext:
        return RoundContext(
            round=self.round,
            dimension=int(self._parameters.size),
            population=len(self.clients),
            sampled=len(self._sampled),
            sampling_probability=self.sampling.fraction,
            rng=rng,
        )

    def _close_secure(self, rng: RandomSource, summed: SummedUpdates | None) -> RoundOutcome:
        aggregator = self.strategy.aggregator
        context = self._context(rng)
        completed: tuple[str, ...] = ()
        metrics: dict[str, float] = {}
        aggregated = False
        if summed is not None:
            unknown = set(summed.contributors) - self._sampled_set
            if unknown:
                raise LocalProtocolError(f"sums over clients not sampled: {sorted(unknown)}")
            completed = summed.contributors
            update = aggregator.from_sum(summed, context)
            self._parameters = self.strategy.optimizer.step(self._parameters, update)
            aggregator.after_round_sum(summed, context)
            aggregated = True
            if summed.weight > 0 and not self.private:
                metrics = {k: v / summed.weight for k, v in sorted(summed.metrics.items())}
        elif self.private and self.encoding is Encoding.CENTRAL_DP:
            # as without secure aggregation: a private round releases its noise even of nothing
            empty = SummedUpdates(np.zeros(self._parameters.size), 0.0, {}, ())
            update = aggregator.from_sum(empty, context)
            self._parameters = self.strategy.optimizer.step(self._parameters, update)
            aggregator.after_round_sum(empty, context)
            aggregated = True
        self.stage = Stage.FINISHED if self.round >= self.rounds else Stage.IDLE
        done = set(completed)
        return RoundOutcome(
            round=self.round,
            sampled=self._sampled,
            completed=completed,
            dropped=tuple(c for c in self._sampled if c not in done),
            metrics=metrics,
            bytes_sent=self._sent_bytes,
            bytes_received=0,
            aggregated=aggregated,
        )

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the model, the round, the optimiser's moments."""
        return {
            "round": self.round,
            "parameters": self.parameters,
            "optimizer": self.strategy.optimizer.state(),
            "aggregator": self.strategy.aggregator.state(),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Resume from what :meth:`state` returned (a coordinator restarting from its
        checkpoint): the model, the round, the optimiser's moments, the aggregator's state."""
        self._expect(Stage.IDLE, "restore a checkpoint")
        params = np.array(state["parameters"], dtype=np.float64).reshape(-1)
        if params.shape != self._parameters.shape or not np.all(np.isfinite(params)):
            raise ConfigurationError(
                f"the checkpoint's model has {params.size} values; this federation's has "
                f"{self._parameters.size}"
            )
        round_ = int(state["round"])
        if not 0 <= round_ <= self.rounds:
            raise ConfigurationError(f"the checkpoint is of round {round_} of {self.rounds}")
        self._parameters = params
        self.round = round_
        self.strategy.optimizer.load_state(state["optimizer"])
        self.strategy.aggregator.load_state(state["aggregator"])
        self.stage = Stage.FINISHED if round_ >= self.rounds else Stage.IDLE


def _payload_bytes(results: Sequence[TrainResult]) -> int:
    if isinstance(results, CohortResult):
        return results.payload_bytes
    return sum(r.payload_bytes for r in results)


def _weighted_metrics(results: Sequence[TrainResult]) -> dict[str, float]:
    if isinstance(results, CohortResult):
        if not len(results):
            return {}
        # the running sums of the loop below, in the same order (cumsum adds one at a time)
        per_client = np.maximum(results.num_examples, 1).astype(np.float64)
        weight = float(np.cumsum(per_client)[-1])
        return {
            key: float(np.cumsum(per_client * results.metrics[key])[-1]) / weight
            for key in sorted(results.metrics)
        }
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for r in results:
        w = float(max(r.num_examples, 1))
        for key, value in r.metrics.items():
            totals[key] = totals.get(key, 0.0) + w * value
            weights[key] = weights.get(key, 0.0) + w
    return {k: totals[k] / weights[k] for k in sorted(totals)}
