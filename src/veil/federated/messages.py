"""The messages of a federated round: typed, frozen, and free of any transport.

A round is four kinds of message. The server sends each sampled client a
:class:`TrainInstruction` (the global model as one flat vector, and how to train); the client
answers with a :class:`TrainResult` (its update, the number of examples it trained on, and a few
metrics) or a :class:`TrainFailure`; a client that does not answer before the deadline is
recorded as dropped. The simulator passes these objects by reference; the gRPC transport
serialises exactly these fields.

:class:`CohortResult` is the answers of several clients of one round at once, their updates the
rows of one matrix: the simulator trains a cohort together and hands the server its answers in
one message instead of one :class:`TrainResult` each. It is a sequence of exactly those
:class:`TrainResult` messages (built when one is asked for), so anything that reads results one
by one sees the same thing; what it saves is the per-client objects, checks and copies where
nobody needs them (the server's validation and FedAvg work on the whole matrix).

Vectors are numpy arrays made read-only on construction, so a message cannot be changed after
it is sent.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError, RemoteProtocolError
from veil.secagg.planning import RoundPlan
from veil.secagg.quantize import Quantizer

__all__ = [
    "CohortResult",
    "Encoding",
    "SecureRoundSpec",
    "TrainConfig",
    "TrainFailure",
    "TrainInstruction",
    "TrainResult",
]

FloatVector = npt.NDArray[np.floating[Any]]


def _frozen_vector(name: str, value: object, error: type[Exception]) -> FloatVector:
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.ndim != 1 or arr.dtype.kind != "f":
        raise error(f"{name} must be a flat vector of floats, got {arr.dtype} of shape {arr.shape}")
    if arr.flags.writeable:
        arr = arr.view()
        arr.flags.writeable = False
    return arr


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a client trains in one round.

    ``batch_size=None`` means full-batch gradient descent (one step per epoch).
    ``proximal_mu > 0`` adds FedProx's term ``mu/2 ||w - w_global||²`` to the local loss.
    ``clip_norm`` (set by client-level DP) makes the client clip its update to that L2 norm
    before sending it and report whether it was already within it (``metrics["within_clip"]``).
    """

    local_epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int | None = None
    proximal_mu: float = 0.0
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.local_epochs, int) or self.local_epochs < 1:
            raise ConfigurationError(
                f"local_epochs must be an integer >= 1, got {self.local_epochs!r}"
            )
        if not _positive_finite(self.learning_rate):
            raise ConfigurationError(
                f"learning_rate must be a finite number > 0, got {self.learning_rate!r}"
            )
        if self.batch_size is not None and (
            not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise ConfigurationError(
                f"batch_size must be an integer >= 1 or None, got {self.batch_size!r}"
            )
        if not isinstance(self.proximal_mu, int | float) or not (
            math.isfinite(self.proximal_mu) and self.proximal_mu >= 0
        ):
            raise ConfigurationError(
                f"proximal_mu must be a finite number >= 0, got {self.proximal_mu!r}"
            )
        if self.clip_norm is not None and not _positive_finite(self.clip_norm):
            raise ConfigurationError(
                f"clip_norm must be a finite number > 0, got {self.clip_norm!r}"
            )


def _positive_finite(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


class Encoding(enum.Enum):
    WEIGHTED = "weighted"
    CENTRAL_DP = "central DP"
    DISTRIBUTED_DP = "distributed DP"


@dataclasses.dataclass(frozen=True)
class SecureRoundSpec:
    """What every client of one secure round must agree on; sent with its instruction."""

    session: bytes
    round: int
    clients: tuple[str, ...]
    """The round's clients; client ``clients[i]`` is number ``i + 1`` in the protocol."""
    plan: RoundPlan
    encoding: Encoding
    dimension: int
    """Coordinates of the model's update."""
    clip: float
    max_weight: int = 1
    metric_keys: tuple[str, ...] = ()
    metric_bound: float = 1.0
    granularity: float = 1.0
    """Distributed DP: the grid spacing ``g``."""
    client_sigma: float = 0.0
    """Distributed DP: each client's discrete Gaussian parameter ``σ_c``, in grid steps."""
    verify_keys: tuple[bytes, ...] = ()
    """Active mode: the enrolled public signing key of each of ``clients``."""
    min_survivors: int = 0
    """The fewest survivors the round is unmasked with (distributed DP calibrates to it)."""

    @property
    def active(self) -> bool:
        return bool(self.verify_keys)

    def number(self, client_id: str) -> int:
        try:
            return self.clients.index(client_id) + 1
        except ValueError:
            raise RemoteProtocolError(f"client {client_id!r} is not in this round") from None

    @property
    def length(self) -> int:
        """Words in a client's vector: the update and what rides with it."""
        if self.encoding is Encoding.WEIGHTED:
            return self.dimension + 1 + len(self.metric_keys)
        return self.dimension + len(self.metric_keys)

    def quantizer(self) -> Quantizer:
        return Quantizer(clip=self.clip, clients=len(self.clients))

    @property
    def payload_bytes(self) -> int:
        return 16 + 8 * len(self.clients) + 64


@dataclasses.dataclass(frozen=True)
class TrainInstruction:
    """Server to client: train from ``parameters`` in round ``round`` with ``config``."""

    round: int
    client_id: str
    parameters: FloatVector
    config: TrainConfig
    secure: SecureRoundSpec | None = None
    """Under secure aggregation: the round's clients, graph, threshold and encoding."""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "parameters", _frozen_vector("parameters", self.parameters, ConfigurationError)
        )

    @classmethod
    def broadcast(
        cls,
        round: int,
        client_ids: Sequence[str],
        parameters: FloatVector,
        config: TrainConfig,
        secure: SecureRoundSpec | None = None,
    ) -> tuple[TrainInstruction, ...]:
        """One instruction per client, all with the same model, configuration and spec: the
        first is built (and checked) as usual, the others are copies of it with their own
        ``client_id`` (a round's instructions differ in nothing else; this skips a thousand
        identical checks at a thousand clients)."""
        if not client_ids:
            return ()
        first = cls(round, client_ids[0], parameters, config, secure)
        fields = first.__dict__
        out = [first]
        for cid in client_ids[1:]:
            copy = object.__new__(cls)
            copy.__dict__.update(fields)
            copy.__dict__["client_id"] = cid
            out.append(copy)
        return tuple(out)

    @property
    def payload_bytes(self) -> int:
        """Bytes of the model vector (and the secure round's spec): what any transport must
        carry at least."""
        spec = 0 if self.secure is None else self.secure.payload_bytes
        return int(self.parameters.nbytes) + spec


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Client to server: the client's update (local model minus the global model it got)."""

    round: int
    client_id: str
    update: FloatVector
    num_examples: int
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "update", _frozen_vector("update", self.update, RemoteProtocolError)
        )
        if not isinstance(self.num_examples, int) or self.num_examples < 0:
            raise RemoteProtocolError(
                f"client {self.client_id!r} reported num_examples={self.num_examples!r}; "
                "expected an integer >= 0"
            )
        metrics = dict(self.metrics)
        for key, value in metrics.items():
            if not isinstance(key, str) or not isinstance(value, int | float):
                raise RemoteProtocolError(
                    f"client {self.client_id!r} sent a metric {key!r}={value!r}; "
                    "metrics are names with numbers"
                )
            if type(value) is not float:
                metrics[key] = float(value)
        object.__setattr__(self, "metrics", MappingProxyType(metrics))

    @property
    def payload_bytes(self) -> int:
        """Bytes of the update vector and the metrics (8 bytes each)."""
        return int(self.update.nbytes) + 8 * (1 + len(self.metrics))


@dataclasses.dataclass(frozen=True)
class TrainFailure:
    """Client to server: the client could not train this round (it counts as a dropout)."""

    round: int
    client_id: str
    reason: str


@dataclasses.dataclass(frozen=True, eq=False)
class CohortResult(Sequence[TrainResult]):
    """Clients to server: the answers of the clients ``client_ids`` of one round, trained
    together. Row ``i`` of ``updates``, ``num_examples[i]`` and ``metrics[name][i]`` are client
    ``client_ids[i]``'s; item ``i`` of the sequence is that client's :class:`TrainResult`.

    Every client reports the same metric names. The arrays are made read-only on
    construction; ``num_examples`` becomes an int64 vector and each metric a float64 one.
    """

    round: int
    client_ids: tuple[str, ...]
    updates: npt.NDArray[np.floating[Any]]
    num_examples: npt.NDArray[np.int64]
    metrics: Mapping[str, npt.NDArray[np.float64]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = tuple(self.client_ids)
        if not all(isinstance(c, str) for c in ids):
            raise RemoteProtocolError("client ids must be strings")
        if len(set(ids)) != len(ids):
            raise RemoteProtocolError("a cohort's answers name a client more than once")
        k = len(ids)
        updates = np.asarray(self.updates)
        if updates.ndim != 2 or updates.dtype.kind != "f" or updates.shape[0] != k:
            raise RemoteProtocolError(
                f"a cohort of {k} clients must send a ({k}, d) matrix of floats, got "
                f"{updates.dtype} of shape {updates.shape}"
            )
        examples = np.asarray(self.num_examples)
        if (
            examples.shape != (k,)
            or examples.dtype.kind not in "iu"
            or (k and int(examples.min()) < 0)
        ):
            raise RemoteProtocolError(
                f"a cohort of {k} clients must report {k} example counts, integers >= 0"
            )
        metrics: dict[str, npt.NDArray[np.float64]] = {}
        for key, values in dict(self.metrics).items():
            column = np.asarray(values)
            if not isinstance(key, str) or column.shape != (k,) or column.dtype.kind not in "fiu":
                raise RemoteProtocolError(
                    f"a cohort's metric {key!r} must be {k} numbers, one per client"
                )
            metrics[key] = _read_only(column.astype(np.float64))
        object.__setattr__(self, "client_ids", ids)
        object.__setattr__(self, "updates", _read_only(updates))
        object.__setattr__(self, "num_examples", _read_only(examples.astype(np.int64)))
        object.__setattr__(self, "metrics", MappingProxyType(metrics))

    def __len__(self) -> int:
        return len(self.client_ids)

    @overload
    def __getitem__(self, index: int) -> TrainResult: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[TrainResult]: ...

    def __getitem__(self, index: int | slice) -> TrainResult | Sequence[TrainResult]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        i = range(len(self))[index]
        return TrainResult(
            self.round,
            self.client_ids[i],
            self.updates[i],
            int(self.num_examples[i]),
            {key: float(column[i]) for key, column in self.metrics.items()},
        )

    def __iter__(self) -> Iterator[TrainResult]:
        return (self[i] for i in range(len(self)))

    @property
    def payload_bytes(self) -> int:
        """The sum of the clients' :attr:`TrainResult.payload_bytes`."""
        row = int(self.updates.shape[1]) * int(self.updates.itemsize)
        return len(self) * (row + 8 * (1 + len(self.metrics)))

    def select(self, rows: npt.ArrayLike) -> CohortResult:
        """The answers of the clients at ``rows``, in that order."""
        index = np.asarray(rows, dtype=np.intp)
        return CohortResult(
            self.round,
            tuple(self.client_ids[i] for i in index.tolist()),
            self.updates[index],
            self.num_examples[index],
            {key: column[index] for key, column in self.metrics.items()},
        )

    @classmethod
    def concatenate(cls, parts: Sequence[CohortResult]) -> CohortResult:
        """One message holding the answers of ``parts`` (one round, the same metric names)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        if len(parts) == 1:
            return parts[0]
        names = set(parts[0].metrics)
        if any(p.round != parts[0].round or set(p.metrics) != names for p in parts):
            raise RemoteProtocolError("cohorts of different rounds or metrics cannot be joined")
        return cls(
            parts[0].round,
            tuple(c for p in parts for c in p.client_ids),
            np.concatenate([p.updates for p in parts]),
            np.concatenate([p.num_examples for p in parts]),
            {key: np.concatenate([p.metrics[key] for p in parts]) for key in parts[0].metrics},
        )


def _read_only(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array
