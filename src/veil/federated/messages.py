"""The messages of a federated round: typed, frozen, and free of any transport.

A round is four kinds of message. The server sends each sampled client a
:class:`TrainInstruction` (the global model as one flat vector, and how to train); the client
answers with a :class:`TrainResult` (its update, the number of examples it trained on, and a few
metrics) or a :class:`TrainFailure`; a client that does not answer before the deadline is
recorded as dropped. The simulator passes these objects by reference; the gRPC transport
(a later part) serialises exactly these fields.

Vectors are numpy arrays made read-only on construction, so a message cannot be changed after
it is sent.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError, RemoteProtocolError
from veil.secagg.planning import RoundPlan
from veil.secagg.quantize import Quantizer

__all__ = [
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
