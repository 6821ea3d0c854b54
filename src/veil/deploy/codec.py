"""Translation between veil's protocol messages and the protobuf messages on the wire.

Nothing here decides anything: each function maps the fields of one typed message onto its
protobuf twin or back, and refuses (:class:`~veil.errors.RemoteProtocolError`) what cannot be
a well-formed message: wrong types, sizes out of range, vectors whose byte count does not match
their header. Vectors travel as a header then chunks of little-endian bytes (:func:`chunks`,
:class:`VectorReader`), each chunk well below gRPC's message limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from veil.errors import RemoteProtocolError
from veil.federated.messages import TrainConfig
from veil.federated.secure import Encoding, SecureRoundSpec
from veil.secagg.planning import RoundPlan
from veil.secagg.protocol import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencyProof,
    KeyDirectory,
    ShareKeys,
    SharesForYou,
    UnmaskRequest,
    UnmaskShares,
)

from .proto import federation_pb2 as pb

__all__ = ["CHUNK_BYTES", "VectorReader", "chunks"]

CHUNK_BYTES = 1 << 20
"""Bytes of vector data per chunk (gRPC's default limit on a message is 4 MiB)."""
DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "uint32": np.dtype("<u4"),
}
_MAX_SHARE_BYTES = 64
_MAX_KEY_BYTES = 256


def _dtype(name: str) -> np.dtype[Any]:
    try:
        return DTYPES[name]
    except KeyError:
        raise RemoteProtocolError(
            f"unknown vector type {name!r}; expected one of {sorted(DTYPES)}"
        ) from None


def chunks(header: pb.Chunk, vector: npt.NDArray[Any]) -> Iterator[pb.Chunk]:
    """``header``, then ``vector``'s little-endian bytes in pieces of :data:`CHUNK_BYTES`."""
    yield header
    data = np.ascontiguousarray(vector).tobytes()
    view = memoryview(data)
    for lo in range(0, len(data), CHUNK_BYTES):
        yield pb.Chunk(data=bytes(view[lo : lo + CHUNK_BYTES]))


class VectorReader:
    """Reassembles a vector from its data chunks, refusing more bytes than announced."""

    def __init__(self, dtype: str, length: int, *, max_length: int) -> None:
        if length > max_length:
            raise RemoteProtocolError(
                f"a vector of {length} values was announced; at most {max_length} are accepted"
            )
        self.dtype = _dtype(dtype)
        self.expected = length * self.dtype.itemsize
        self.buffer = bytearray(self.expected)
        self.filled = 0

    def add(self, data: bytes) -> None:
        end = self.filled + len(data)
        if end > self.expected:
            raise RemoteProtocolError(
                f"more vector data than announced ({self.expected} bytes); refused"
            )
        self.buffer[self.filled : end] = data
        self.filled = end

    def vector(self) -> npt.NDArray[Any]:
        if self.filled != self.expected:
            raise RemoteProtocolError(
                f"the vector stream ended after {self.filled} of {self.expected} bytes"
            )
        out = np.frombuffer(self.buffer, dtype=self.dtype)
        return out.astype(self.dtype.newbyteorder("="), copy=False)


def parse(message_class: Any, raw: bytes) -> Any:
    """A protobuf message from bytes, or :class:`RemoteProtocolError` if they are not one."""
    try:
        return message_class.FromString(raw)
    except Exception:
        raise RemoteProtocolError(
            f"malformed {message_class.DESCRIPTOR.name} message ({len(raw)} bytes)"
        ) from None


# -- instructions --------------------------------------------------------------------------------


def config_to_pb(config: TrainConfig) -> pb.TrainConfig:
    return pb.TrainConfig(
        local_epochs=config.local_epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size or 0,
        proximal_mu=config.proximal_mu,
        clip_norm=config.clip_norm or 0.0,
    )


def config_from_pb(msg: pb.TrainConfig) -> TrainConfig:
    return TrainConfig(
        local_epochs=int(msg.local_epochs),
        learning_rate=float(msg.learning_rate),
        batch_size=int(msg.batch_size) or None,
        proximal_mu=float(msg.proximal_mu),
        clip_norm=float(msg.clip_norm) or None,
    )


def _has(cls: type, field: str) -> bool:
    return field in {f.name for f in dataclasses.fields(cls)}


def spec_to_pb(spec: SecureRoundSpec) -> pb.SecureRoundSpec:
    plan = spec.plan
    msg = pb.SecureRoundSpec(
        session=spec.session,
        round=spec.round,
        clients=list(spec.clients),
        plan=pb.RoundPlan(
            graph=plan.graph,
            clients=plan.clients,
            degree=plan.degree,
            threshold=plan.threshold,
            abort_probability=plan.abort_probability,
        ),
        encoding=spec.encoding.value,
        dimension=spec.dimension,
        clip=spec.clip,
        max_weight=spec.max_weight,
        metric_keys=list(spec.metric_keys),
        metric_bound=spec.metric_bound,
        granularity=spec.granularity,
        client_sigma=spec.client_sigma,
        verify_keys=list(spec.verify_keys),
    )
    # the fewest survivors a round unmasks with (planning that states it)
    msg.plan.min_survivors = int(getattr(plan, "min_survivors", 0))
    msg.min_survivors = int(getattr(spec, "min_survivors", 0))
    return msg


def spec_from_pb(msg: pb.SecureRoundSpec) -> SecureRoundSpec:
    try:
        encoding = Encoding(msg.encoding)
    except ValueError:
        raise RemoteProtocolError(f"unknown secure encoding {msg.encoding!r}") from None
    if msg.plan.graph not in ("secagg", "secagg+"):
        raise RemoteProtocolError(f"unknown secure aggregation graph {msg.plan.graph!r}")
    extra: dict[str, Any] = {}
    if _has(RoundPlan, "min_survivors"):
        extra["min_survivors"] = int(msg.plan.min_survivors)
    plan = RoundPlan(
        graph=msg.plan.graph,  # type: ignore[arg-type]
        clients=int(msg.plan.clients),
        degree=int(msg.plan.degree),
        threshold=int(msg.plan.threshold),
        abort_probability=float(msg.plan.abort_probability),
        **extra,
    )
    fields: dict[str, Any] = {}
    if _has(SecureRoundSpec, "min_survivors"):
        fields["min_survivors"] = int(msg.min_survivors)
    return SecureRoundSpec(
        **fields,
        session=bytes(msg.session),
        round=int(msg.round),
        clients=tuple(msg.clients),
        plan=plan,
        encoding=encoding,
        dimension=int(msg.dimension),
        clip=float(msg.clip),
        max_weight=int(msg.max_weight),
        metric_keys=tuple(msg.metric_keys),
        metric_bound=float(msg.metric_bound),
        granularity=float(msg.granularity),
        client_sigma=float(msg.client_sigma),
        verify_keys=tuple(bytes(k) for k in msg.verify_keys),
    )


# -- secure aggregation's stages -----------------------------------------------------------------


def _key(value: bytes, what: str) -> bytes:
    if len(value) > _MAX_KEY_BYTES:
        raise RemoteProtocolError(f"{what} of {len(value)} bytes is too long")
    return bytes(value)


def advertise_to_pb(round: int, msg: AdvertiseKeys) -> pb.AdvertiseKeys:
    return pb.AdvertiseKeys(
        round=round,
        client=msg.client,
        mask_key=msg.mask_key,
        share_key=msg.share_key,
        signature=msg.signature,
    )


def advertise_from_pb(msg: pb.AdvertiseKeys) -> AdvertiseKeys:
    return AdvertiseKeys(
        client=int(msg.client),
        mask_key=_key(msg.mask_key, "a mask key"),
        share_key=_key(msg.share_key, "a share key"),
        signature=_key(msg.signature, "a signature"),
    )


def directory_to_pb(directory: KeyDirectory) -> pb.KeyDirectory:
    return pb.KeyDirectory(
        keys=[
            pb.AdvertiseKeys(
                client=c,
                mask_key=keys[0],
                share_key=keys[1],
                signature=directory.signatures.get(c, b""),
            )
            for c, keys in sorted(directory.keys.items())
        ],
        neighbours=[
            pb.Neighbours(client=c, neighbours=sorted(n))
            for c, n in sorted(directory.neighbours.items())
        ],
        threshold=directory.threshold,
    )


def directory_from_pb(msg: pb.KeyDirectory) -> KeyDirectory:
    keys = {int(k.client): (bytes(k.mask_key), bytes(k.share_key)) for k in msg.keys}
    signatures = {int(k.client): bytes(k.signature) for k in msg.keys if k.signature}
    neighbours = {int(n.client): frozenset(int(v) for v in n.neighbours) for n in msg.neighbours}
    return KeyDirectory(keys, neighbours, int(msg.threshold), signatures)


def _sealed(items: Iterable[pb.Sealed]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for s in items:
        if int(s.peer) in out:
            raise RemoteProtocolError(f"two ciphertexts for peer {s.peer}")
        out[int(s.peer)] = bytes(s.ciphertext)
    return out


def share_keys_to_pb(round: int, msg: ShareKeys) -> pb.ShareKeys:
    return pb.ShareKeys(
        round=round,
        client=msg.client,
        sealed=[pb.Sealed(peer=p, ciphertext=c) for p, c in sorted(msg.sealed.items())],
        seed_commitment=msg.seed_commitment,
    )


def share_keys_from_pb(msg: pb.ShareKeys) -> ShareKeys:
    return ShareKeys(int(msg.client), _sealed(msg.sealed), bytes(msg.seed_commitment))


def shares_for_you_to_pb(msg: SharesForYou) -> pb.SharesForYou:
    return pb.SharesForYou(
        sealed=[pb.Sealed(peer=p, ciphertext=c) for p, c in sorted(msg.sealed.items())]
    )


def shares_for_you_from_pb(msg: pb.SharesForYou) -> SharesForYou:
    return SharesForYou(_sealed(msg.sealed))


def request_to_pb(msg: UnmaskRequest) -> pb.UnmaskRequest:
    return pb.UnmaskRequest(survivors=sorted(msg.survivors), dropped=sorted(msg.dropped))


def request_from_pb(msg: pb.UnmaskRequest) -> UnmaskRequest:
    return UnmaskRequest(
        frozenset(int(u) for u in msg.survivors), frozenset(int(u) for u in msg.dropped)
    )


def consistency_to_pb(round: int, msg: ConsistencyCheck) -> pb.ConsistencyCheck:
    return pb.ConsistencyCheck(round=round, client=msg.client, signature=msg.signature)


def consistency_from_pb(msg: pb.ConsistencyCheck) -> ConsistencyCheck:
    return ConsistencyCheck(int(msg.client), _key(msg.signature, "a signature"))


def proof_to_pb(msg: ConsistencyProof) -> pb.ConsistencyProof:
    return pb.ConsistencyProof(
        request=request_to_pb(msg.request),
        signatures=[pb.Signature(client=c, signature=s) for c, s in sorted(msg.signatures.items())],
    )


def proof_from_pb(msg: pb.ConsistencyProof) -> ConsistencyProof:
    return ConsistencyProof(
        request_from_pb(msg.request), {int(s.client): bytes(s.signature) for s in msg.signatures}
    )


def _shares_to_pb(shares: Mapping[int, int]) -> list[pb.Share]:
    return [
        pb.Share(peer=p, value=v.to_bytes((v.bit_length() + 7) // 8 or 1, "big"))
        for p, v in sorted(shares.items())
    ]


def _shares_from_pb(items: Iterable[pb.Share]) -> dict[int, int]:
    out: dict[int, int] = {}
    for s in items:
        if len(s.value) > _MAX_SHARE_BYTES:
            raise RemoteProtocolError(f"a share of {len(s.value)} bytes is too long")
        if int(s.peer) in out:
            raise RemoteProtocolError(f"two shares for peer {s.peer}")
        out[int(s.peer)] = int.from_bytes(s.value, "big")
    return out


def unmask_to_pb(round: int, msg: UnmaskShares) -> pb.UnmaskShares:
    return pb.UnmaskShares(
        round=round,
        client=msg.client,
        seed_shares=_shares_to_pb(msg.seed_shares),
        key_shares=_shares_to_pb(msg.key_shares),
    )


def unmask_from_pb(msg: pb.UnmaskShares) -> UnmaskShares:
    return UnmaskShares(
        int(msg.client), _shares_from_pb(msg.seed_shares), _shares_from_pb(msg.key_shares)
    )
