"""Secure aggregation (Bonawitz et al., CCS 2017) over a neighbour graph (Bell et al., CCS 2020),
semi-honest server, as state machines with no I/O.

Clients are numbered ``1..n``. Every message goes through the server. Stages, and the set of
clients still present after each (``U1 ⊇ U2 ⊇ U3``):

==================  ============================================  ==============================
stage               client sends                                  server answers
==================  ============================================  ==============================
advertise keys      two X25519 public keys                        the directory of U1's keys
share keys          Shamir shares of its self-mask seed ``b_u``   each client's ciphertexts
                    and of its mask private key, sealed for each  from its neighbours in U2
                    neighbour
masked input        ``y_u = x_u + PRG(b_u) + Σ ±PRG(s_uv)``       who survived (U3) and who
                    over its neighbours ``v`` in U2               dropped (U2 \\ U3)
unmask              shares of ``b_v`` for survivors, of the mask  (the server reconstructs and
                    key for the dropped: never both for one ``v`` outputs ``Σ_{U3} x_u``)
==================  ============================================  ==============================

Pairwise masks cancel between two survivors; the server removes a survivor's self mask with its
reconstructed ``b_u`` and a dropped client's pairwise masks with its reconstructed key. The
round aborts when fewer than ``threshold`` clients are left at any stage. Keys are derived for
this session and round only, shares are sealed with the sender, recipient, session and round as
associated data, and a client refuses a survivor list that overlaps the dropped list, duplicate
public keys, or a threshold it cannot meet.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import struct
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError, DataError, LocalProtocolError, RemoteProtocolError
from veil.privacy.random import RandomSource, default_random
from veil.secagg import crypto, shamir

__all__ = [
    "AdvertiseKeys",
    "ClientStage",
    "ConsistencyCheck",
    "ConsistencyProof",
    "Expectation",
    "KeyDirectory",
    "MaskedInput",
    "SecAggClient",
    "SecAggServer",
    "ShareKeys",
    "SharesForYou",
    "UnmaskRequest",
    "UnmaskShares",
    "active_threshold_ok",
    "derived_graph",
    "neighbours_complete",
    "neighbours_harary",
]

Vector = npt.NDArray[np.uint32]


# -- messages ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdvertiseKeys:
    client: int
    mask_key: bytes
    share_key: bytes
    signature: bytes = b""
    """Active mode: the client's long-term Ed25519 signature over both keys, for this round."""


@dataclasses.dataclass(frozen=True)
class KeyDirectory:
    keys: Mapping[int, tuple[bytes, bytes]]
    """U1: client -> (mask public key, share public key)."""
    neighbours: Mapping[int, frozenset[int]]
    threshold: int
    signatures: Mapping[int, bytes] = dataclasses.field(default_factory=dict)
    """Active mode: client -> its signature over its keys."""


@dataclasses.dataclass(frozen=True)
class ShareKeys:
    client: int
    sealed: Mapping[int, bytes] = dataclasses.field(repr=False)
    """recipient -> sealed (b_u share, mask-key share)."""
    seed_commitment: bytes = b""
    """SHA-256 of the session, round and self-mask seed: the server checks what it rebuilds."""


@dataclasses.dataclass(frozen=True)
class SharesForYou:
    sealed: Mapping[int, bytes]
    """sender (in U2) -> the ciphertext it sealed for this client."""


@dataclasses.dataclass(frozen=True)
class MaskedInput:
    client: int
    vector: Vector


@dataclasses.dataclass(frozen=True)
class UnmaskRequest:
    survivors: frozenset[int]
    dropped: frozenset[int]


@dataclasses.dataclass(frozen=True)
class ConsistencyCheck:
    """Active mode: a client's signature over the survivor and dropped lists it was sent."""

    client: int
    signature: bytes


@dataclasses.dataclass(frozen=True)
class ConsistencyProof:
    """Active mode: the lists, and the signatures over them of at least ``threshold``
    survivors; a client unmasks only when they all signed the lists it signed."""

    request: UnmaskRequest
    signatures: Mapping[int, bytes]


@dataclasses.dataclass(frozen=True)
class UnmaskShares:
    client: int
    seed_shares: Mapping[int, int] = dataclasses.field(repr=False)
    """survivor v -> this client's share of b_v."""
    key_shares: Mapping[int, int] = dataclasses.field(repr=False)
    """dropped v -> this client's share of v's mask private key."""


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What a client itself requires of a round, whatever the server says: the threshold,
    the graph's degree (None: complete), and the fewest survivors it will unmask for."""

    threshold: int
    degree: int | None = None
    min_survivors: int = 0


def neighbours_complete(clients: range | list[int]) -> dict[int, frozenset[int]]:
    """Plain SecAgg: every client is every other's neighbour."""
    ids = list(clients)
    return {u: frozenset(v for v in ids if v != u) for u in ids}


def neighbours_harary(
    clients: range | list[int], *, degree: int, rng: RandomSource | None = None
) -> dict[int, frozenset[int]]:
    """SecAgg+ (Bell et al. 2020): a randomly relabelled Harary graph, each client joined to
    the ``degree / 2`` clients on either side of it on a random cycle (``degree`` even). With
    ``degree`` of order ``log n`` the cost per client no longer grows with ``n``. The random
    order comes from ``rng`` (the CSPRNG by default): the server must not choose it freely."""
    ids = list(clients)
    n = len(ids)
    if not isinstance(degree, int) or degree < 2 or degree % 2 or degree >= n:
        raise ConfigurationError(
            f"degree must be an even integer in [2, {n - 1}] for {n} clients, got {degree!r}"
        )
    source = default_random(rng)
    keys = source.words(n)
    order = [ids[i] for i in np.argsort(keys, kind="stable")]
    graph: dict[int, set[int]] = {u: set() for u in ids}
    for i, u in enumerate(order):
        for step in range(1, degree // 2 + 1):
            v = order[(i + step) % n]
            graph[u].add(v)
            graph[v].add(u)
    return {u: frozenset(vs) for u, vs in graph.items()}


def _context(label: bytes, session: bytes, round: int) -> bytes:
    """A domain label, then the session (length-prefixed) and the round."""
    return label + struct.pack(">Q", len(session)) + session + struct.pack(">Q", round)


def _keys_message(session: bytes, round: int, client: int, mask: bytes, share: bytes) -> bytes:
    return _context(b"veil-secagg-keys|", session, round) + struct.pack(">Q", client) + mask + share


def _lists_message(session: bytes, round: int, request: UnmaskRequest) -> bytes:
    survivors = b"".join(struct.pack(">Q", u) for u in sorted(request.survivors))
    dropped = b"".join(struct.pack(">Q", u) for u in sorted(request.dropped))
    return (
        _context(b"veil-secagg-lists|", session, round)
        + struct.pack(">QQ", len(request.survivors), len(request.dropped))
        + survivors
        + dropped
    )


class _SeededWords:
    """64-bit words from AES-CTR under a key: randomness every party can recompute."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @property
    def is_secure(self) -> bool:
        return True  # a secret-independent, public choice: pseudorandom from a hash

    def words(self, n: int) -> npt.NDArray[np.uint64]:
        return crypto.mask(self._key, 2 * n).view(np.uint64)


def derived_graph(
    session: bytes, round: int, keys: Mapping[int, tuple[bytes, bytes]], degree: int | None
) -> dict[int, frozenset[int]]:
    """The round's neighbour graph over the clients that advertised ``keys``: complete when
    ``degree`` is None or reaches them all, else SecAgg+'s Harary graph relabelled by a hash
    of every advertised key. Every client recomputes it, so the server cannot place a client
    among neighbours of its choosing; changing the graph means changing someone's keys, and a
    graph that puts chosen clients around a target is too rare to find by trying keys."""
    ids = sorted(keys)
    if degree is None or degree >= len(ids) - 1:
        return neighbours_complete(ids)
    digest = hashlib.sha256(_context(b"veil-secagg-graph|", session, round))
    for u in ids:
        digest.update(struct.pack(">Q", u) + keys[u][0] + keys[u][1])
    return dict(_graph_from_digest(tuple(ids), degree, digest.digest()))


@functools.lru_cache(maxsize=64)
def _graph_from_digest(
    ids: tuple[int, ...], degree: int, digest: bytes
) -> MappingProxyType[int, frozenset[int]]:
    """The Harary graph for a digest: every party of a round computes the same one."""
    return MappingProxyType(neighbours_harary(list(ids), degree=degree, rng=_SeededWords(digest)))


def active_threshold_ok(threshold: int, group: int) -> bool:
    """Whether ``threshold`` is above two thirds of ``group``, as the active mode needs."""
    return 3 * threshold > 2 * group


def _aad(session: bytes, round: int, sender: int, recipient: int) -> bytes:
    return b"veil-secagg-share|" + session + struct.pack(">QQQ", round, sender, recipient)


def _pair_seed(secret: bytes, session: bytes, round: int, u: int, v: int) -> bytes:
    low, high = min(u, v), max(u, v)
    return crypto.derive(secret, session=session, round=round, purpose=f"pair/{low}/{high}")


def _pair_mask(secret: bytes, session: bytes, round: int, u: int, v: int, size: int) -> Vector:
    return crypto.mask(_pair_seed(secret, session, round, u, v), size)


def _commit(seed: bytes, session: bytes, round: int) -> bytes:
    return hashlib.sha256(b"veil-secagg-seed|" + session + struct.pack(">Q", round) + seed).digest()


def _connected(nodes: frozenset[int], graph: Mapping[int, frozenset[int]]) -> bool:
    """Whether ``nodes`` form one connected piece of ``graph`` (a split would let the server
    sum each piece on its own: the pairwise masks cancel inside every piece)."""
    if not nodes:
        return True
    start = next(iter(nodes))
    seen = {start}
    todo = [start]
    while todo:
        u = todo.pop()
        for v in graph.get(u, ()):
            if v in nodes and v not in seen:
                seen.add(v)
                todo.append(v)
    return seen == set(nodes)


def _ring_vector(vector: npt.ArrayLike) -> Vector:
    arr = np.asarray(vector)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(
            f"a client's vector must be integers in Z_2^32 (encode floats with Quantizer), "
            f"got {arr.dtype}"
        )
    return arr.astype(np.uint32).reshape(-1)


def _self_mask(seed: bytes, session: bytes, round: int, size: int) -> Vector:
    return crypto.mask(crypto.derive(seed, session=session, round=round, purpose="self"), size)


# -- the client --------------------------------------------------------------------------------


class ClientStage(enum.Enum):
    ADVERTISE = "advertise"
    SHARE = "share"
    MASK = "mask"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"


class SecAggClient:
    """One client's side of one round: ``advertise``, then answer each server message."""

    def __init__(
        self,
        client: int,
        *,
        session: bytes,
        round: int,
        vector: npt.ArrayLike | None = None,
        signing_key: crypto.SigningKey | None = None,
        verify_keys: Mapping[int, bytes] | None = None,
        expect: Expectation | None = None,
    ) -> None:
        """``signing_key`` (this client's long-term key) and ``verify_keys`` (every client's
        public signing key, from the federation's enrolment, not from the server) turn on the
        active mode. ``expect`` is what this client itself requires of the round (threshold,
        graph, fewest survivors); without it, it takes the server's word for them."""
        if not isinstance(client, int) or client < 1:
            raise ConfigurationError(f"client ids are integers >= 1, got {client!r}")
        if (signing_key is None) != (verify_keys is None):
            raise ConfigurationError("the active mode needs both signing_key and verify_keys")
        if (
            verify_keys is not None
            and signing_key is not None
            and verify_keys.get(client) != signing_key.public
        ):
            raise ConfigurationError(
                f"client {client}'s signing key is not the one enrolled for it"
            )
        self._signing_key = signing_key
        self._verify_keys = None if verify_keys is None else dict(verify_keys)
        self._expect_round = expect
        self.client = client
        self.session = bytes(session)
        self.round = round
        # The vector may come later, with masked_input: keys are exchanged while it trains.
        self.vector = None if vector is None else _ring_vector(vector)
        self.stage = ClientStage.ADVERTISE
        self._mask_key = crypto.AgreementKey()
        self._share_key = crypto.AgreementKey()
        self._directory: KeyDirectory | None = None
        self._received: dict[int, tuple[int, int]] = {}  # owner -> (b share, key share)
        self._channels: dict[int, bytes] = {}

    def _expect(self, stage: ClientStage) -> None:
        if self.stage is not stage:
            raise LocalProtocolError(f"client {self.client} is at {self.stage.value}")

    @property
    def active(self) -> bool:
        return self._signing_key is not None

    def advertise(self) -> AdvertiseKeys:
        self._expect(ClientStage.ADVERTISE)
        self.stage = ClientStage.SHARE
        mask, share = self._mask_key.public, self._share_key.public
        signature = b""
        if self._signing_key is not None:
            message = _keys_message(self.session, self.round, self.client, mask, share)
            signature = self._signing_key.sign(message)
        return AdvertiseKeys(self.client, mask, share, signature)

    def _check_signed_keys(self, directory: KeyDirectory) -> None:
        """Active mode: every advertised key pair carries its owner's signature for this
        round, so the server cannot substitute keys of its own."""
        assert self._verify_keys is not None
        for v, (mask, share) in directory.keys.items():
            enrolled = self._verify_keys.get(v)
            signature = directory.signatures.get(v)
            if enrolled is None or not signature:
                raise RemoteProtocolError(f"client {v}'s keys are not signed by an enrolled key")
            try:
                crypto.verify(
                    enrolled, signature, _keys_message(self.session, self.round, v, mask, share)
                )
            except RemoteProtocolError:
                raise RemoteProtocolError(
                    f"client {v}'s keys carry a bad signature: the round aborts"
                ) from None

    def _channel_key(self, peer: int) -> bytes:
        """The key of the channel with ``peer``, agreed once and kept for the round (it seals
        the shares this client sends and opens those it receives)."""
        assert self._directory is not None
        key = self._channels.get(peer)
        if key is None:
            shared = self._share_key.exchange(self._directory.keys[peer][1])
            low, high = min(self.client, peer), max(self.client, peer)
            key = crypto.derive(
                shared, session=self.session, round=self.round, purpose=f"share/{low}/{high}"
            )
            self._channels[peer] = key
        return key

    def share_keys(self, directory: KeyDirectory) -> ShareKeys:
        self._expect(ClientStage.SHARE)
        mine = directory.neighbours.get(self.client)
        if mine is None or self.client not in directory.keys:
            raise RemoteProtocolError(f"the directory leaves out client {self.client}")
        present = frozenset(v for v in mine if v in directory.keys)
        if len(present) + 1 < directory.threshold:
            raise RemoteProtocolError(
                f"client {self.client} has {len(present)} neighbours left; the threshold "
                f"{directory.threshold} cannot be met"
            )
        if directory.threshold < 2:
            raise RemoteProtocolError("a threshold below 2 would let one share reveal a secret")
        expected = self._expect_round
        if expected is not None:
            if directory.threshold != expected.threshold:
                raise RemoteProtocolError(
                    f"the server set threshold {directory.threshold}; this client requires "
                    f"{expected.threshold}: the round aborts"
                )
            graph = derived_graph(self.session, self.round, directory.keys, expected.degree)
            if dict(directory.neighbours) != graph:
                raise RemoteProtocolError(
                    "the server's neighbour graph is not the one the advertised keys determine: "
                    "the round aborts"
                )
        if self.active:
            if not active_threshold_ok(directory.threshold, len(mine) + 1):
                raise RemoteProtocolError(
                    f"threshold {directory.threshold} is not above two thirds of this client's "
                    f"{len(mine) + 1} (itself and its neighbours), as the active mode needs"
                )
            self._check_signed_keys(directory)
        publics = [k for pair in directory.keys.values() for k in pair]
        if len(set(publics)) != len(publics):
            raise RemoteProtocolError("the directory holds duplicate public keys")
        self._directory = directory
        seed = crypto.random_seed()
        self._self_seed = seed
        holders = sorted(present | {self.client})
        b_shares = shamir.split(seed, threshold=directory.threshold, holders=holders)
        k_shares = shamir.split(
            self._mask_key.private_bytes(), threshold=directory.threshold, holders=holders
        )
        self._received[self.client] = (b_shares[self.client], k_shares[self.client])
        sealed = {}
        for v in sorted(present):
            plain = b_shares[v].to_bytes(33, "big") + k_shares[v].to_bytes(33, "big")
            sealed[v] = crypto.seal(
                self._channel_key(v),
                plain,
                associated_data=_aad(self.session, self.round, self.client, v),
            )
        self.stage = ClientStage.MASK
        return ShareKeys(self.client, sealed, _commit(seed, self.session, self.round))

    def masked_input(
        self, shares: SharesForYou, vector: npt.ArrayLike | None = None
    ) -> MaskedInput:
        """The masked vector; ``vector`` here if it was not given when the client was made."""
        self._expect(ClientStage.MASK)
        assert self._directory is not None
        if (vector is None) == (self.vector is None):
            raise LocalProtocolError("give the client's vector once: when made or here")
        if vector is not None:
            self.vector = _ring_vector(vector)
        assert self.vector is not None
        neighbours = self._directory.neighbours[self.client]
        for sender, blob in shares.sealed.items():
            if sender not in neighbours or sender not in self._directory.keys:
                raise RemoteProtocolError(f"a share from {sender}, who is not a neighbour")
            plain = crypto.open_sealed(
                self._channel_key(sender),
                blob,
                associated_data=_aad(self.session, self.round, sender, self.client),
            )
            self._received[sender] = (
                int.from_bytes(plain[:33], "big"),
                int.from_bytes(plain[33:], "big"),
            )
        self._u2 = frozenset(shares.sealed)
        if len(self._u2) + 1 < self._directory.threshold:
            # masking with fewer neighbours than that would let the server unmask this
            # client alone with the shares of its self-mask
            raise RemoteProtocolError(
                f"only {len(self._u2)} neighbours shared keys with client {self.client}; the "
                f"threshold is {self._directory.threshold}: the round aborts"
            )
        y = _self_mask(self._self_seed, self.session, self.round, self.vector.size)
        y += self.vector
        masker = crypto.Masker(y.size)
        for v in sorted(self._u2):
            secret = self._mask_key.exchange(self._directory.keys[v][0])
            seed = _pair_seed(secret, self.session, self.round, self.client, v)
            masker.add(y, seed, subtract=self.client > v)
        self.stage = ClientStage.CONSISTENCY if self.active else ClientStage.UNMASK
        return MaskedInput(self.client, y)

    def consistency(self, request: UnmaskRequest) -> ConsistencyCheck:
        """Active mode: sign the survivor and dropped lists the server sent this client."""
        self._expect(ClientStage.CONSISTENCY)
        assert self._signing_key is not None
        self._check_lists(request)
        self._signed = request
        self.stage = ClientStage.UNMASK
        return ConsistencyCheck(
            self.client, self._signing_key.sign(_lists_message(self.session, self.round, request))
        )

    def unmask(self, request: UnmaskRequest | ConsistencyProof) -> UnmaskShares:
        """The shares the server needs; in the active mode ``request`` must be the
        :class:`ConsistencyProof` that at least ``threshold`` survivors signed the same lists
        as this client."""
        self._expect(ClientStage.UNMASK)
        assert self._directory is not None
        if self.active:
            if not isinstance(request, ConsistencyProof):
                raise RemoteProtocolError("the active mode unmasks only with a consistency proof")
            request = self._check_proof(request)
        elif isinstance(request, ConsistencyProof):
            request = request.request
        self._check_lists(request)
        seed_shares = {v: self._received[v][0] for v in request.survivors if v in self._received}
        key_shares = {v: self._received[v][1] for v in request.dropped if v in self._received}
        self.stage = ClientStage.DONE
        return UnmaskShares(self.client, seed_shares, key_shares)

    def _check_proof(self, proof: ConsistencyProof) -> UnmaskRequest:
        assert self._directory is not None
        assert self._verify_keys is not None
        request = proof.request
        if request != self._signed:
            raise RemoteProtocolError(
                "the server sent this client other survivor lists than it signed: the round aborts"
            )
        message = _lists_message(self.session, self.round, request)
        signers = set(proof.signatures)
        if not signers <= request.survivors:
            raise RemoteProtocolError("the consistency proof holds signatures of non-survivors")
        t = self._directory.threshold
        if len(signers) < t:
            raise RemoteProtocolError(
                f"only {len(signers)} survivors confirmed the lists; the threshold is "
                f"{t}: the round aborts"
            )
        # Before revealing a share of peer v, at least t of v's own neighbourhood must have
        # signed these lists: two contradicting proofs would need 2t > k + 1 signers there.
        graph = self._directory.neighbours
        for v in (request.survivors | request.dropped) & graph[self.client]:
            around = (graph[v] | {v}) & signers
            if len(around) < t:
                raise RemoteProtocolError(
                    f"only {len(around)} of client {v}'s neighbourhood confirmed the lists; "
                    f"the threshold is {t}: the round aborts"
                )
        for v, signature in proof.signatures.items():
            try:
                crypto.verify(self._verify_keys[v], signature, message)
            except RemoteProtocolError:
                raise RemoteProtocolError(
                    f"client {v} did not sign these survivor lists: the round aborts"
                ) from None
        return request

    def _check_lists(self, request: UnmaskRequest) -> None:
        assert self._directory is not None
        if request.survivors & request.dropped:
            raise RemoteProtocolError("the server lists a client as both surviving and dropped")
        if self.client not in request.survivors:
            raise RemoteProtocolError("the server asks a client it lists as dropped")
        if len(request.survivors) < self._directory.threshold:
            raise RemoteProtocolError("fewer survivors than the threshold: the round aborts")
        if not (request.survivors | request.dropped) <= set(self._directory.keys):
            raise RemoteProtocolError("the server names clients that never took part")
        mine = self._directory.neighbours[self.client]
        named = (request.survivors | request.dropped) & mine
        if not named <= self._u2:
            # a survivor or dropout this client never masked with: its mask would not cancel
            raise RemoteProtocolError(
                "the server names neighbours that never shared keys with this client"
            )
        if len(request.survivors & self._u2) + 1 < self._directory.threshold:
            raise RemoteProtocolError(
                "too few of this client's neighbours survive to keep its input hidden"
            )
        least = self._expect_round.min_survivors if self._expect_round else 0
        if len(request.survivors) < least:
            raise RemoteProtocolError(
                f"{len(request.survivors)} survivors; this client requires at least {least} "
                "(its noise is calibrated for them): the round aborts"
            )
        if not _connected(request.survivors, self._directory.neighbours):
            raise RemoteProtocolError(
                "the survivors do not form one connected group: the server could sum a part"
            )


# -- the server --------------------------------------------------------------------------------


class SecAggServer:
    """The server's side of one round. Each ``collect_*`` takes the messages that arrived before
    the stage's deadline (the clients missing from them have dropped out) and returns what to
    send next; :meth:`finish` returns the sum of the survivors' vectors in ``Z_2^32``."""

    def __init__(
        self,
        *,
        session: bytes,
        round: int,
        threshold: int,
        dimension: int,
        neighbours: Mapping[int, frozenset[int]],
        active: bool = False,
        degree: int | None = None,
        min_survivors: int | None = None,
        verify_keys: Mapping[int, bytes] | None = None,
    ) -> None:
        """``neighbours`` names the clients (and is the graph, unless ``degree`` is given:
        then the graph is :func:`derived_graph` of the advertised keys, which clients check).
        ``active=True``: the clients sign their keys and the survivor lists, and the threshold
        must exceed two thirds of every neighbourhood; with ``verify_keys`` the server drops
        what does not verify instead of passing it on. ``min_survivors`` (at least the
        threshold) aborts a round that keeps fewer."""
        n = len(neighbours)
        if not isinstance(threshold, int) or not 2 <= threshold <= n:
            raise ConfigurationError(f"threshold must be in [2, {n}], got {threshold!r}")
        for u, vs in neighbours.items():
            if u in vs or any(u not in neighbours.get(v, ()) for v in vs):
                raise ConfigurationError("the neighbour graph must be symmetric without loops")
        least = min(len(vs) for vs in neighbours.values()) + 1
        if degree is not None:
            if not isinstance(degree, int) or degree < 2:
                raise ConfigurationError(f"degree must be an integer >= 2, got {degree!r}")
            least = min(least, degree + 1)
        if threshold > least:
            raise ConfigurationError(
                f"threshold {threshold} exceeds the smallest neighbourhood ({least} with the "
                "client itself): no client could share its secrets"
            )
        if active:
            smallest = least
            if not active_threshold_ok(threshold, smallest):
                raise ConfigurationError(
                    f"the active mode needs a threshold above two thirds of every "
                    f"neighbourhood ({smallest} clients): {threshold} is too low"
                )
        self.active = active
        self.degree = degree
        self.verify_keys = None if verify_keys is None else dict(verify_keys)
        self.min_survivors = max(threshold, min_survivors or 0)
        self.session = bytes(session)
        self.round = round
        self.threshold = threshold
        self.dimension = dimension
        self.neighbours = {u: frozenset(vs) for u, vs in neighbours.items()}
        self._done: list[str] = []
        self._answers: list[UnmaskShares] | None = None
        """The unmasking answers of a :meth:`finish` that failed (None: none failed, or one
        succeeded since), which :meth:`finish_without` retries without one client's."""

    def _stage(self, name: str, previous: str | None) -> None:
        """Each stage runs once, in order: a second unmask request would let the server ask
        some clients for a peer's seed share and others for its key share."""
        if name in self._done or (previous is not None and self._done[-1:] != [previous]):
            raise LocalProtocolError(f"the server cannot {name} now (done: {self._done})")
        self._done.append(name)

    def _enough(self, clients: set[int] | frozenset[int], stage: str) -> None:
        if len(clients) < self.threshold:
            raise RemoteProtocolError(
                f"only {len(clients)} clients left after {stage}; the threshold is "
                f"{self.threshold}: the round aborts"
            )

    def _signed(self, client: int, signature: bytes, message: bytes) -> bool:
        if self.verify_keys is None:
            return True
        try:
            crypto.verify(self.verify_keys.get(client, b""), signature, message)
        except (RemoteProtocolError, ConfigurationError):
            return False
        return True

    def collect_keys(self, messages: list[AdvertiseKeys]) -> KeyDirectory:
        self._stage("collect keys", None)
        keys = {
            m.client: (m.mask_key, m.share_key)
            for m in messages
            if m.client in self.neighbours
            and self._signed(
                m.client,
                m.signature,
                _keys_message(self.session, self.round, m.client, m.mask_key, m.share_key),
            )
        }
        self._enough(set(keys), "advertising keys")
        self.keys = keys
        if self.degree is not None:
            self.neighbours = derived_graph(self.session, self.round, keys, self.degree)
            least = min(len(vs) for vs in self.neighbours.values()) + 1
            if least < self.threshold:
                raise RemoteProtocolError(
                    f"too few clients advertised keys for a graph of degree {self.degree} "
                    f"and threshold {self.threshold}: the round aborts"
                )
        signatures = {m.client: m.signature for m in messages if m.client in keys}
        return KeyDirectory(
            MappingProxyType(dict(keys)),
            MappingProxyType(dict(self.neighbours)),
            self.threshold,
            MappingProxyType(signatures),
        )

    def collect_shares(self, messages: list[ShareKeys]) -> dict[int, SharesForYou]:
        self._stage("collect shares", "collect keys")
        sealed = {m.client: dict(m.sealed) for m in messages if m.client in self.keys}
        self.commitments = {m.client: m.seed_commitment for m in messages if m.client in sealed}
        self.u2 = frozenset(sealed)
        self._enough(self.u2, "sharing keys")
        return {
            v: SharesForYou(
                {u: box[v] for u, box in sealed.items() if v in box and u in self.neighbours[v]}
            )
            for v in self.u2
        }

    def collect_masked(self, messages: list[MaskedInput]) -> UnmaskRequest:
        self._stage("collect masked inputs", "collect shares")
        inputs = {m.client: m.vector for m in messages if m.client in self.u2}
        for u, y in inputs.items():
            if y.dtype != np.uint32 or y.shape != (self.dimension,):
                raise RemoteProtocolError(f"client {u} sent a vector of the wrong shape or type")
        self.inputs = inputs
        survivors = frozenset(inputs)
        self._enough(survivors, "sending masked inputs")
        if len(survivors) < self.min_survivors:
            raise RemoteProtocolError(
                f"only {len(survivors)} clients sent masked inputs; the round needs "
                f"{self.min_survivors}: the round aborts"
            )
        self.request = UnmaskRequest(survivors, self.u2 - survivors)
        return self.request

    def collect_consistency(self, messages: list[ConsistencyCheck]) -> ConsistencyProof:
        """Active mode: the survivors' signatures over the lists, passed to every survivor."""
        self._stage("collect consistency checks", "collect masked inputs")
        if not self.active:
            raise LocalProtocolError("the consistency round is for the active mode")
        message = _lists_message(self.session, self.round, self.request)
        signatures = {
            m.client: m.signature
            for m in messages
            if m.client in self.request.survivors and self._signed(m.client, m.signature, message)
        }
        self._enough(set(signatures), "the consistency check")
        return ConsistencyProof(self.request, MappingProxyType(signatures))

    def finish(self, messages: list[UnmaskShares]) -> Vector:
        """The survivors' sum, unmasked with the survivors' answers to the one unmask request.

        Raises :class:`~veil.errors.RemoteProtocolError` if too few answered or if the shares
        of a secret do not rebuild it (a client sent bad shares); then :meth:`finish_without`
        may retry without one client's answer."""
        self._stage(
            "finish", "collect consistency checks" if self.active else "collect masked inputs"
        )
        answers = [m for m in messages if m.client in self.request.survivors]
        self._answers = answers
        total = self._unmask(answers)
        self._answers = None
        return total

    def finish_without(self, client: int) -> Vector:
        """Retry a :meth:`finish` that failed, with the same answers but ``client``'s.

        A survivor's answer only helps rebuild the others' secrets (its own masked input stays
        in the sum), so the sum without it is the same sum whenever the other answers still
        reach the threshold. Each retry starts again from the answers the failed
        :meth:`finish` was given: nothing new is asked of any client and no answer can be
        added, so the server learns nothing the failed call's answers did not already hold.
        Allowed until a retry succeeds; raises
        :class:`~veil.errors.RemoteProtocolError` as :meth:`finish` does."""
        if self._done[-1:] != ["finish"] or self._answers is None:
            raise LocalProtocolError(
                "finish_without retries a finish that failed; the server's finish "
                + ("succeeded" if self._done[-1:] == ["finish"] else "has not run")
            )
        answers = [m for m in self._answers if m.client != client]
        if len(answers) == len(self._answers):
            raise LocalProtocolError(f"client {client} sent no unmasking answer to leave out")
        total = self._unmask(answers)
        self._answers = None
        return total

    def _unmask(self, answers: list[UnmaskShares]) -> Vector:
        self._enough({m.client for m in answers}, "unmasking")
        total = np.zeros(self.dimension, dtype=np.uint32)
        for y in self.inputs.values():
            total += y
        masker = crypto.Masker(self.dimension)
        for u in self.request.survivors:
            shares = {m.client: m.seed_shares[u] for m in answers if u in m.seed_shares}
            seed = shamir.combine(shares, threshold=self.threshold)
            if _commit(seed, self.session, self.round) != self.commitments.get(u):
                raise RemoteProtocolError(f"the shares of client {u}'s seed are inconsistent")
            self_seed = crypto.derive(seed, session=self.session, round=self.round, purpose="self")
            masker.add(total, self_seed, subtract=True)
        for v in self.request.dropped:
            partners = self.neighbours[v] & self.request.survivors
            if not partners:  # nobody carries a mask shared with v
                continue
            shares = {m.client: m.key_shares[v] for m in answers if v in m.key_shares}
            key = crypto.AgreementKey.from_private_bytes(
                shamir.combine(shares, threshold=self.threshold)
            )
            if key.public != self.keys[v][0]:
                raise RemoteProtocolError(f"the shares of client {v}'s key are inconsistent")
            for u in partners:
                secret = key.exchange(self.keys[u][0])
                seed = _pair_seed(secret, self.session, self.round, u, v)
                masker.add(total, seed, subtract=u < v)
        return total
