"""The simulator: a whole federation in one process, no Ray, no sockets.

:class:`Simulation` drives the same :class:`~veil.federated.protocol.FederatedServer` that the
gRPC coordinator drives: each round it asks for the round's privacy cost and reserves it in the
ledger, starts the round, trains the sampled clients (together, ``max_parallel`` at a time, with
``torch.func``), feeds their answers back as messages, and closes the round. Only the cohort in
training holds per-client copies of the model, so memory grows with ``max_parallel``, not with
the number of clients.

Threads: the cohort already batches the work, and the tensors of a small model are too small
for PyTorch's intra-op threads to pay for their synchronisation (on a busy machine they cost
10x); ``threads=1`` (the default) runs the simulation on one, ``None`` leaves PyTorch's setting.
The setting is restored when :meth:`Simulation.run` returns.

Randomness: with ``seed`` set, client sampling, dropouts, shuffling and DP noise are
reproducible, and DP noise then comes from :class:`~veil.privacy.InsecureSeededRandom`; that is
a simulation, not a release. With ``seed=None`` sampling and noise use
:class:`~veil.privacy.SecureRandom`.

Privacy budgets: client-level DP charges each round to ``client_scope`` (one unit = one client);
record-level DP-SGD charges each client's local training to that party's own scope,
``record_scope`` with ``@<client id>`` appended. A round the budget cannot pay for is not run and
the history says why; a client whose budget is spent drops out.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from veil.errors import (
    BudgetExceededError,
    ConfigurationError,
    DataError,
    LocalProtocolError,
    RemoteProtocolError,
)
from veil.federated.data import FederatedData
from veil.federated.dp import DpSgd
from veil.federated.messages import (
    CohortResult,
    Encoding,
    TrainConfig,
    TrainFailure,
    TrainInstruction,
    TrainResult,
)
from veil.federated.protocol import ClientSampling, FederatedServer, uniform
from veil.federated.secure import RoundGuard, SecureAggregation, SecureClient, SecureServerRound
from veil.federated.strategies import Strategy, SummedUpdates, fedavg
from veil.federated.training import ParamLayout, evaluate, train_central, train_clients, train_dpsgd
from veil.ledger import Ledger, Reservation, Scope
from veil.privacy.random import InsecureSeededRandom, RandomSource, SecureRandom
from veil.secagg.crypto import SigningKey
from veil.secagg.protocol import ConsistencyProof, UnmaskRequest

__all__ = ["RoundRecord", "Simulation", "SimulationResult"]


@dataclasses.dataclass(frozen=True)
class RoundRecord:
    """One round as the simulator saw it.

    Under client-level DP the fields that describe who took part (``sampled``, ``completed``,
    ``dropped``, the byte counts, which follow from them) and the clients' exact training loss
    are None and NaN: with Poisson sampling, how many clients took part says who did, and the
    guarantee covers only the noisy model. Test metrics come from the server's own held-out
    data, which no guarantee covers.
    """

    round: int
    sampled: int | None
    completed: int | None
    dropped: int | None
    train_loss: float
    test_loss: float
    test_accuracy: float
    bytes_sent: int | None
    bytes_received: int | None
    seconds: float
    epsilon_spent: float | None
    """Client-level spend of the run so far (the ledger's bound), if it is private."""
    record_epsilon_max: float | None = None
    """Largest spend of any party's record-level scope so far."""


@dataclasses.dataclass(frozen=True)
class SimulationResult:
    """The history of a run and its final model."""

    rounds: tuple[RoundRecord, ...]
    parameters: np.ndarray
    stopped: str | None
    """Why the run ended before its last round (a budget), or None."""
    central: dict[str, float] | None = None
    """Test metrics of the centrally trained baseline, if it was run."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": [dataclasses.asdict(r) for r in self.rounds],
            "stopped": self.stopped,
            "central": self.central,
        }


class Simulation:
    """A federation of ``data.client_ids`` training ``model`` (see the module docstring)."""

    def __init__(
        self,
        *,
        model: nn.Module,
        data: FederatedData,
        rounds: int,
        config: TrainConfig,
        strategy: Strategy | None = None,
        sampling: ClientSampling | None = None,
        record_dp: DpSgd | None = None,
        ledger: Ledger | None = None,
        client_scope: str | Scope | None = None,
        record_scope: str | Scope | None = None,
        dropout: float = 0.0,
        max_parallel: int = 256,
        seed: int | None = None,
        evaluate_every: int = 1,
        threads: int | None = 1,
        secure_aggregation: SecureAggregation | None = None,
    ) -> None:
        self.layout = ParamLayout(model)
        self.data = data
        self.strategy = strategy or fedavg()
        self.config = config
        self.record_dp = record_dp
        self.ledger = ledger
        self.client_scope = None if client_scope is None else Scope.parse(client_scope)
        self.record_scope = None if record_scope is None else Scope.parse(record_scope)
        private_rounds = self.strategy.aggregator.round_event(sampling_probability=1.0) is not None
        if private_rounds and (ledger is None or self.client_scope is None):
            raise ConfigurationError(
                "client-level DP spends budget every round: pass ledger= and client_scope="
            )
        if record_dp is not None and (ledger is None or self.record_scope is None):
            raise ConfigurationError(
                "record-level DP spends each party's budget: pass ledger= and record_scope="
            )
        if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
            raise ConfigurationError(f"dropout must be in [0, 1), got {dropout!r}")
        if not isinstance(max_parallel, int) or max_parallel < 1:
            raise ConfigurationError(f"max_parallel must be an integer >= 1, got {max_parallel!r}")
        self.dropout = float(dropout)
        self.max_parallel = max_parallel
        self.seed = seed
        self.evaluate_every = evaluate_every
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ConfigurationError(f"threads must be an integer >= 1 or None, got {threads!r}")
        self.threads = threads
        self.server = FederatedServer(
            parameters=self.layout.vector(),
            clients=data.client_ids,
            strategy=self.strategy,
            config=config,
            rounds=rounds,
            sampling=sampling,
            wire_dtype=np.float64 if _dtype(model) == torch.float64 else np.float32,
            secure_aggregation=secure_aggregation,
            enrolled=self._enrol(secure_aggregation, data.client_ids),
        )
        self.aborted: list[str] = []
        # whether the current secure round asked for unmasking shares (see _run)
        self._unmask_requested = False
        self.rng: RandomSource = SecureRandom() if seed is None else InsecureSeededRandom(seed)
        self.generator = torch.Generator()
        self.generator.manual_seed(
            int(SecureRandom().words(1)[0] >> np.uint64(1)) if seed is None else seed
        )
        self._index = {cid: i for i, cid in enumerate(data.client_ids)}
        self._exhausted: set[str] = set()
        self._party_spent: dict[str, float] = {}
        self._initial = self.layout.vector()

    def _enrol(
        self, secure: SecureAggregation | None, clients: tuple[str, ...]
    ) -> dict[str, bytes] | None:
        """The active mode's enrolment, simulated: one long-term signing key per client."""
        self._signing: dict[str, SigningKey] = {}
        self._enrolment: dict[str, bytes] | None = None
        self._guards: dict[str, RoundGuard] = {}
        if secure is None or not secure.active:
            return None
        self._signing = {c: SigningKey() for c in clients}
        self._enrolment = {c: k.public for c, k in self._signing.items()}
        return dict(self._enrolment)

    def party_scope(self, client_id: str) -> Scope:
        assert self.record_scope is not None
        return Scope(self.record_scope.dataset, self.record_scope.unit, client_id)

    # -- one round ------------------------------------------------------------------------------

    def _survivors(self, instructions: tuple[TrainInstruction, ...]) -> list[TrainInstruction]:
        """The sampled clients that do not drop out of the round."""
        alive = list(instructions)
        if self.dropout and alive:
            stays = uniform(self.rng, len(alive)) >= self.dropout
            alive = [i for i, keep in zip(alive, stays, strict=True) if keep]
        return alive

    def _answers(
        self, instructions: tuple[TrainInstruction, ...]
    ) -> list[TrainResult | TrainFailure]:
        """One message per client that answers (secure aggregation and DP-SGD need them)."""
        alive = self._survivors(instructions)
        if self.record_dp is not None:
            return [self._train_private(ins) for ins in alive]
        return [result for cohort in self._train_cohorts(alive) for result in cohort]

    def _cohort_answers(self, instructions: tuple[TrainInstruction, ...]) -> list[CohortResult]:
        """The answers of the clients that do not drop out, one message per cohort trained
        together (the batched path of the protocol: see ``FederatedServer.receive_cohort``)."""
        return self._train_cohorts(self._survivors(instructions))

    def _train_cohorts(self, alive: list[TrainInstruction]) -> list[CohortResult]:
        answers: list[CohortResult] = []
        for lo in range(0, len(alive), self.max_parallel):
            cohort = alive[lo : lo + self.max_parallel]
            if not cohort:
                continue
            outcomes = train_clients(
                self.layout,
                cohort[0].parameters,
                self.data.cohort([self._index[i.client_id] for i in cohort]),
                cohort[0].config,
                generator=self.generator,
            )
            wire = cohort[0].parameters.dtype
            names = list(outcomes[0].metrics)
            answers.append(
                CohortResult(
                    cohort[0].round,
                    tuple(ins.client_id for ins in cohort),
                    np.stack([out.update for out in outcomes]).astype(wire, copy=False),
                    np.array([out.num_examples for out in outcomes], dtype=np.int64),
                    {
                        name: np.array([out.metrics[name] for out in outcomes], dtype=np.float64)
                        for name in names
                    },
                )
            )
        return answers

    def _secure_round(
        self, instructions: tuple[TrainInstruction, ...]
    ) -> tuple[SummedUpdates | None, tuple[int, int]]:
        """One round under secure aggregation: every sampled client exchanges keys, trains
        (or drops out), and sends its masked update; the server unmasks the sum. Returns the
        sums (None if the round aborted) and the bytes the secure round sent and received."""
        self._unmask_requested = False
        if not instructions:
            self.aborted.append(
                f"round {self.server.round}: fewer than 3 clients sampled, too few to hide "
                "anyone in a sum"
            )
            return None, (0, 0)
        spec = instructions[0].secure
        assert spec is not None
        settings = self.server.secure
        assert settings is not None
        aggregator = self.strategy.aggregator
        z = getattr(aggregator, "noise_multiplier", None) if settings.distributed_dp else None
        server = SecureServerRound(spec, rng=self.rng)
        try:
            # each client checks the round against its own settings, keys and memory
            clients = {
                ins.client_id: SecureClient(
                    ins,
                    rng=self.rng,
                    settings=settings,
                    signing_key=self._signing.get(ins.client_id),
                    enrolled=self._enrolment,
                    noise_multiplier=z,
                    guard=self._guards.setdefault(ins.client_id, RoundGuard()),
                )
                for ins in instructions
            }
            directory = server.collect_keys([c.advertise() for c in clients.values()])
            routed = server.collect_shares(
                [clients[cid].share_keys(directory) for cid in spec.clients]
            )
            results = [a for a in self._answers(instructions) if isinstance(a, TrainResult)]
            masked = []
            sent = []
            for r in results:
                try:
                    masked.append(
                        clients[r.client_id].masked_input(routed[spec.number(r.client_id)], r)
                    )
                except (DataError, LocalProtocolError):
                    continue  # a client that cannot encode its update drops out
                sent.append(r)
            results = sent
            request: UnmaskRequest | ConsistencyProof = server.collect_masked(masked)
            self._unmask_requested = True
            if spec.active:
                assert isinstance(request, UnmaskRequest)
                request = server.collect_consistency(
                    [clients[r.client_id].consistency(request) for r in results]
                )
            answers = [clients[r.client_id].unmask(request) for r in results]
            summed = server.finish(answers)
        except RemoteProtocolError as exc:
            self.aborted.append(f"round {spec.round}: {exc}")
            return None, (server.bytes_sent, server.bytes_received)
        return summed, (server.bytes_sent, server.bytes_received)

    def _train_private(self, ins: TrainInstruction) -> TrainResult | TrainFailure:
        assert self.record_dp is not None
        assert self.ledger is not None
        client = self.data.client(self._index[ins.client_id])
        event = self.record_dp.event(len(client), ins.config.local_epochs)
        try:
            reservation = self.ledger.reserve(
                self.party_scope(ins.client_id), event, purpose=f"DP-SGD, round {ins.round}"
            )
        except BudgetExceededError as exc:
            self._exhausted.add(ins.client_id)
            return TrainFailure(ins.round, ins.client_id, f"privacy budget exhausted: {exc}")
        self._party_spent[ins.client_id] = reservation.spent_epsilon
        with reservation:
            out = train_dpsgd(
                self.layout, ins.parameters, client, ins.config, self.record_dp, rng=self.rng
            )
        update = out.update.astype(ins.parameters.dtype, copy=False)
        # the realised Poisson batch sizes stay with the party (dividing by the public B hides
        # them); only the clipping indicator travels. The record count is treated as public.
        sent = {k: v for k, v in out.metrics.items() if k == "within_clip"}
        return TrainResult(ins.round, ins.client_id, update, out.num_examples, sent)

    def run(
        self,
        *,
        central_baseline: bool = False,
        on_round: Callable[[RoundRecord], None] | None = None,
    ) -> SimulationResult:
        """Run every round (or until a budget stops it); optionally the central baseline."""
        before = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            return self._run(central_baseline, on_round)
        finally:
            torch.set_num_threads(before)

    def _run(
        self, central_baseline: bool, on_round: Callable[[RoundRecord], None] | None
    ) -> SimulationResult:
        history: list[RoundRecord] = []
        stopped: str | None = None
        server = self.server
        last_eval = {"loss": math.nan, "accuracy": math.nan}
        while server.round < server.rounds:
            started = time.perf_counter()
            event = server.round_event()
            reservation: Reservation | None = None
            if event is not None:
                assert self.ledger is not None
                assert self.client_scope is not None
                try:
                    reservation = self.ledger.reserve(
                        self.client_scope, event, purpose=f"DP-FedAvg, round {server.round + 1}"
                    )
                except BudgetExceededError as exc:
                    stopped = f"round {server.round + 1} not run: {exc}"
                    break
            traffic = (0, 0)
            unreleased = False
            try:
                instructions = server.start_round(self.rng, reservation=reservation)
                if server.secure is not None:
                    summed, traffic = self._secure_round(instructions)
                    outcome = server.close_round(self.rng, summed=summed)
                    # Under distributed DP the noise is the clients', inside the masked sum: a
                    # round that aborted before anyone was asked for unmasking shares released
                    # nothing (central DP releases its noise even of nothing, so it pays).
                    unreleased = (
                        summed is None
                        and server.encoding is Encoding.DISTRIBUTED_DP
                        and not self._unmask_requested
                    )
                elif self.record_dp is not None:
                    for answer in self._answers(instructions):
                        server.receive(answer)
                    outcome = server.close_round(self.rng)
                else:
                    for cohort in self._cohort_answers(instructions):
                        server.receive_cohort(cohort)
                    outcome = server.close_round(self.rng)
            except BaseException as exc:
                if reservation is not None:
                    reservation.fail(f"round failed: {type(exc).__name__}")
                raise
            if reservation is not None:
                if unreleased:
                    reservation.abandon("secure round aborted before unmasking: nothing released")
                else:
                    reservation.commit()
            if self.evaluate_every and (
                server.round % self.evaluate_every == 0 or server.round == server.rounds
            ):
                last_eval = evaluate(self.layout, server.parameters, self.data.test)
            withheld = server.private  # see RoundRecord
            record = RoundRecord(
                round=outcome.round,
                sampled=None if withheld else len(outcome.sampled),
                completed=None if withheld else len(outcome.completed),
                dropped=None if withheld else len(outcome.dropped),
                train_loss=math.nan if withheld else outcome.metrics.get("train_loss", math.nan),
                test_loss=last_eval["loss"],
                test_accuracy=last_eval["accuracy"],
                bytes_sent=None if withheld else outcome.bytes_sent + traffic[0],
                bytes_received=None if withheld else outcome.bytes_received + traffic[1],
                seconds=time.perf_counter() - started,
                epsilon_spent=None if reservation is None else reservation.spent_epsilon,
                record_epsilon_max=self._record_spend(),
            )
            history.append(record)
            if on_round is not None:
                on_round(record)
            if self.record_dp is not None and len(self._exhausted) == len(self.data.client_ids):
                stopped = f"after round {outcome.round}: every party's budget is spent"
                break
        central = None
        if central_baseline:
            central = self.central_baseline()
        return SimulationResult(tuple(history), server.parameters, stopped, central)

    def _record_spend(self) -> float | None:
        """The largest spend of any party so far, as the ledger recorded it at reservation."""
        if self.record_dp is None or not self._party_spent:
            return None
        return max(self._party_spent.values())

    def central_baseline(self) -> dict[str, float]:
        """The same model trained on the pooled data for as many epochs as a client trains in
        the whole run (rounds x local epochs), from the same initial model; test metrics."""
        epochs = self.server.rounds * self.config.local_epochs
        params = train_central(
            self.layout,
            self._initial,
            self.data.pooled(),
            self.config,
            epochs=epochs,
            generator=self.generator,
        )
        return evaluate(self.layout, params, self.data.test)


def _dtype(model: nn.Module) -> torch.dtype:
    return next(iter(model.parameters())).dtype
