"""Secure aggregation in federated rounds: the server learns only the sum of the updates.

With ``secure_aggregation=SecureAggregation(...)`` the :class:`~veil.federated.FederatedServer`
never receives a client's update. Each round it attaches a :class:`SecureRoundSpec` to the
instructions (the round's clients numbered ``1..n``, the graph and threshold chosen by
:func:`veil.secagg.planning.plan_round`, and how to encode an update); every sampled client
runs a :class:`SecureClient` and the server a :class:`SecureServerRound`, the state machines of
:mod:`veil.secagg.protocol` under them; the server gets back :class:`SummedUpdates` and closes
the round with them. Clients advertise and share keys before they train, so one that drops out
while training is recovered like any other dropout.

What a client encodes into ``Z_2^32``, by the strategy's aggregator:

``weighted`` (FedAvg, FedProx, FedAdam...: :class:`~veil.federated.strategies.WeightedMean`)
    its update clipped to L2 norm ``clip``, times its weight ``w = min(examples, max_weight) /
    max_weight``; ``w``; and ``w`` times its training loss (clipped to ``±metric_bound``), so
    the server can average the loss without seeing anyone's. One scale for every coordinate,
    chosen by :class:`~veil.secagg.Quantizer` so that the sum of ``n`` clients cannot overflow.
``central DP`` (:class:`~veil.federated.dp.DpAggregator`)
    its update clipped to the DP clip norm ``C`` (and, with adaptive clipping, ``C`` times the
    bit "my update was within ``C``"); the server adds the discrete Gaussian noise to the sum
    it unmasks, as without secure aggregation. The server sees the exact sum before noise.
``distributed DP`` (``distributed_dp=True`` with a :class:`~veil.federated.dp.DpAggregator`)
    its clipped update on a power-of-two grid ``g`` with unbiased random rounding, plus its own
    share of discrete Gaussian noise: the server never sees a sum without noise.

**Distributed DP** (Kairouz, Liu and Steinke, ICML 2021). A client's integer vector has L2
sensitivity ``Δ = C/g + √d`` (rounding moves each coordinate by less than 1). Each client adds
discrete Gaussian noise of parameter ``σ_c``; the round aborts unless at least ``t`` (the
threshold) clients are summed, and the sum of ``s ≥ t`` such noises makes the sum
``½ ε²``-concentrated DP with ``ε = Δ/(√s σ_c) + τ √d``, ``τ = 10 Σ_{k<s} exp(-2π²σ_c² k/(k+1))
≤ 10 (n - 1) exp(-π² σ_c²)`` (their Theorem 2, the bound without the L1 norm). Solving for
``ε = 1/z`` gives ``σ_c = Δ / (√t (1/z - τ√d))``; for the ``σ_c`` of thousands of grid steps
used here ``τ`` underflows to zero and the round is the Gaussian mechanism of multiplier ``z``.
The ledger charges each round ``GaussianEvent(z)`` *without* amplification by sampling: the
server talks to the clients of a round, so who took part is no secret from it, and the noise
grows with the number of survivors; the guarantee is for one client's update replaced by zeros
(the relation of Kairouz et al.). Adaptive clipping is refused in this mode (its count would
need distributed noise too).

What secure aggregation cannot do: check that a client clipped. The quantiser clips each
coordinate to the ring's range, so a malicious client moves the sum by at most ``n_coord ·
clip``, not ``clip``; bounding the L2 norm needs zero-knowledge proofs (not built).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError, DataError, LocalProtocolError, RemoteProtocolError
from veil.federated.messages import (
    Encoding,
    SecureRoundSpec,
    TrainConfig,
    TrainInstruction,
    TrainResult,
)
from veil.federated.strategies import Aggregator, SummedUpdates
from veil.privacy.random import RandomSource
from veil.privacy.samplers import discrete_gaussian
from veil.secagg.crypto import SigningKey
from veil.secagg.planning import plan_round
from veil.secagg.protocol import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencyProof,
    Expectation,
    KeyDirectory,
    MaskedInput,
    SecAggClient,
    SecAggServer,
    ShareKeys,
    SharesForYou,
    UnmaskRequest,
    UnmaskShares,
    neighbours_complete,
)
from veil.secagg.quantize import from_ring, stochastic_round, to_ring

__all__ = [
    "Encoding",
    "RoundGuard",
    "SecureAggregation",
    "SecureClient",
    "SecureRoundSpec",
    "SecureServerRound",
]

Vector = npt.NDArray[np.float64]

# The grid of distributed DP: C/g at least this many times √d (the rounding adds at most 0.1%
# to the sensitivity), and the sum must stay far inside the signed 32-bit range.
_GRID_STEPS = 1024
_RING_HALF = 2**31
_TAIL_SIGMAS = 40.0


def _positive(name: str, value: object) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class SecureAggregation:
    """How the rounds of a federation are aggregated securely (see the module docstring).

    ``graph`` is ``"secagg+"`` (a sparse random graph of degree ``O(log n)``) or ``"secagg"``
    (every client paired with every other); ``dropout`` is the dropout rate the graph and
    threshold must survive with probability ``1 - failure``. ``clip`` bounds the L2 norm of an
    update without DP (under DP the aggregator's clip norm is used); ``max_weight`` caps the
    example count that weights an update; ``metric_bound`` bounds the training loss summed.
    """

    graph: Literal["secagg", "secagg+"] = "secagg+"
    dropout: float = 0.1
    clip: float = 10.0
    max_weight: int = 10_000
    metric_bound: float = 100.0
    distributed_dp: bool = False
    failure: float = 2.0**-20
    active: bool = False
    """Against a server that deviates from the protocol: clients sign their keys and the
    survivor lists with enrolled Ed25519 keys, and the threshold exceeds two thirds."""

    def __post_init__(self) -> None:
        if self.graph not in ("secagg", "secagg+"):
            raise ConfigurationError(f"graph must be 'secagg' or 'secagg+', got {self.graph!r}")
        if not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ConfigurationError(f"dropout must be in [0, 1), got {self.dropout!r}")
        _positive("clip", self.clip)
        _positive("metric_bound", self.metric_bound)
        if not isinstance(self.max_weight, int) or self.max_weight < 1:
            raise ConfigurationError(f"max_weight must be an integer >= 1, got {self.max_weight!r}")
        if not isinstance(self.failure, float) or not 0 < self.failure < 1:
            raise ConfigurationError(f"failure must be in (0, 1), got {self.failure!r}")

    def encoding(self, aggregator: Aggregator) -> Encoding:
        """The encoding for this aggregator; refuses one that needs individual updates."""
        if not aggregator.summable:
            raise ConfigurationError(
                f"{aggregator.describe()} needs every client's update, and secure aggregation "
                "shows the server only their sum: use a mean (FedAvg, FedProx, FedAdam, "
                "FedYogi, FedAdagrad) or client-level DP"
            )
        if aggregator.client_dp:
            if not self.distributed_dp:
                return Encoding.CENTRAL_DP
            if getattr(aggregator, "adaptive", None) is not None:
                raise ConfigurationError(
                    "adaptive clipping is not available with distributed DP (its count would "
                    "need distributed noise too): give a fixed clip_norm"
                )
            return Encoding.DISTRIBUTED_DP
        if self.distributed_dp:
            raise ConfigurationError(
                "distributed_dp=True needs client-level DP (a DpAggregator) to say the noise"
            )
        return Encoding.WEIGHTED


def distributed_noise(
    *, clip: float, dimension: int, clients: int, threshold: int, noise_multiplier: float
) -> tuple[float, float]:
    """``(g, σ_c)``: the grid and each client's noise for distributed DP (module docstring)."""
    z = _positive("noise_multiplier", noise_multiplier)
    root_d = math.sqrt(dimension)
    g = 2.0 ** math.floor(math.log2(clip / (_GRID_STEPS * root_d)))
    for _ in range(64):
        sensitivity = clip / g + root_d
        sigma = sensitivity * z / math.sqrt(threshold)
        tau = 10.0 * (clients - 1) * math.exp(-(math.pi**2) * sigma**2)
        if tau * root_d * z >= 0.5:
            raise ConfigurationError(
                f"the noise per client ({sigma:.3g} grid steps) is too small for the sum of "
                "discrete Gaussians to be accounted; raise the noise multiplier"
            )
        sigma = sensitivity / (math.sqrt(threshold) * (1.0 / z - tau * root_d))
        bound = clients * (clip / g + 1.0) + _TAIL_SIGMAS * sigma * math.sqrt(clients)
        if bound < _RING_HALF and sigma < 2.0**25:
            return g, sigma
        g *= 2.0
    raise ConfigurationError(
        f"no grid fits the 32-bit ring for {clients} clients at noise multiplier {z:g}"
    )


def make_spec(
    settings: SecureAggregation,
    *,
    session: bytes,
    round: int,
    clients: Sequence[str],
    dimension: int,
    aggregator: Aggregator,
    config: TrainConfig,
    enrolled: Mapping[str, bytes] | None = None,
) -> SecureRoundSpec:
    """The round's spec: graph, threshold, and encoding for these clients (and, in the active
    mode, their ``enrolled`` public signing keys)."""
    plan = plan_round(
        len(clients),
        graph=settings.graph,
        dropout=settings.dropout,
        failure=settings.failure,
        active=settings.active,
    )
    encoding = settings.encoding(aggregator)
    verify_keys: tuple[bytes, ...] = ()
    if settings.active:
        missing = [c for c in clients if enrolled is None or c not in enrolled]
        if missing:
            raise ConfigurationError(
                f"the active mode needs every client's enrolled signing key; missing: {missing}"
            )
        assert enrolled is not None
        verify_keys = tuple(enrolled[c] for c in clients)
    common = {
        "session": session,
        "round": round,
        "clients": tuple(clients),
        "plan": plan,
        "encoding": encoding,
        "dimension": dimension,
        "verify_keys": verify_keys,
        "min_survivors": plan.min_survivors if settings.distributed_dp else plan.threshold,
    }
    if encoding is Encoding.WEIGHTED:
        return SecureRoundSpec(
            **common,  # type: ignore[arg-type]
            clip=settings.clip,
            max_weight=settings.max_weight,
            metric_keys=("train_loss",),
            metric_bound=settings.metric_bound,
        )
    clip = config.clip_norm
    if clip is None:
        raise ConfigurationError("client-level DP sets a clip norm; none was configured")
    if encoding is Encoding.CENTRAL_DP:
        adaptive = getattr(aggregator, "adaptive", None) is not None
        spec = SecureRoundSpec(
            **common,  # type: ignore[arg-type]
            clip=clip,
            metric_keys=("within_clip",) if adaptive else (),
        )
        if _rounding_slack(spec) >= clip / 2:
            raise ConfigurationError(
                f"{len(clients)} clients with {dimension} parameters leave too coarse a 32-bit "
                "ring for central DP's clip norm; sample fewer clients per round"
            )
        return spec
    g, sigma = distributed_noise(
        clip=clip,
        dimension=dimension,
        clients=len(clients),
        threshold=plan.min_survivors,
        noise_multiplier=aggregator.noise_multiplier,  # type: ignore[attr-defined]
    )
    return SecureRoundSpec(
        **common,  # type: ignore[arg-type]
        clip=clip,
        granularity=g,
        client_sigma=sigma,
    )


def _clip_l2(update: Vector, clip: float) -> Vector:
    norm = math.sqrt(float(np.einsum("i,i->", update, update)))  # no BLAS threads
    return update * (clip / norm) if norm > clip else update


def _rounding_slack(spec: SecureRoundSpec) -> float:
    return math.sqrt(spec.dimension) * spec.quantizer().resolution


def encode(spec: SecureRoundSpec, result: TrainResult, rng: RandomSource) -> npt.NDArray[np.uint32]:
    """A client's update (and metrics) as words of ``Z_2^32`` (see the module docstring)."""
    update = np.asarray(result.update, dtype=np.float64)
    if not np.isfinite(update).all():
        raise DataError("a client's update must be finite (no NaN or infinity)")
    if update.size != spec.dimension:
        raise LocalProtocolError(
            f"the update has {update.size} values; the round expects {spec.dimension}"
        )
    update = _clip_l2(update, spec.clip)
    if spec.encoding is Encoding.CENTRAL_DP:
        # the server noises the sum for contributions of L2 norm at most C; random rounding
        # moves each coordinate by less than one step, so clip to C - √d·step to stay within C
        update = _clip_l2(update, spec.clip - _rounding_slack(spec))
    if spec.encoding is Encoding.DISTRIBUTED_DP:
        grid = stochastic_round(update / spec.granularity, rng=rng)
        noise = discrete_gaussian(rng, grid.size, sigma=spec.client_sigma)
        return to_ring(grid + noise)
    if spec.encoding is Encoding.WEIGHTED:
        w = min(result.num_examples, spec.max_weight) / spec.max_weight
        metrics = [
            w * spec.clip * max(-1.0, min(1.0, result.metrics.get(k, 0.0) / spec.metric_bound))
            for k in spec.metric_keys
        ]
        values = np.concatenate([w * update, [w * spec.clip], metrics])
    else:
        extra = [spec.clip * float(result.metrics.get(k, 0.0) >= 0.5) for k in spec.metric_keys]
        values = np.concatenate([update, extra])
    return spec.quantizer().encode(values, rng=rng)  # type: ignore[no-any-return]


def decode(
    spec: SecureRoundSpec, total: npt.NDArray[np.uint32], contributors: tuple[str, ...]
) -> SummedUpdates:
    """The sums from the unmasked ring sum of ``contributors``' vectors."""
    d = spec.dimension
    if spec.encoding is Encoding.DISTRIBUTED_DP:
        update = from_ring(total).astype(np.float64) * spec.granularity
        return SummedUpdates(update, float(len(contributors)), {}, contributors, noised=True)
    values = spec.quantizer().decode(total)
    if spec.encoding is Encoding.WEIGHTED:
        weight = float(values[d]) / spec.clip
        metrics = {
            k: float(values[d + 1 + i]) / spec.clip * spec.metric_bound
            for i, k in enumerate(spec.metric_keys)
        }
        return SummedUpdates(values[:d].copy(), weight, metrics, contributors)
    metrics = {k: float(values[d + i]) / spec.clip for i, k in enumerate(spec.metric_keys)}
    return SummedUpdates(values[:d].copy(), float(len(contributors)), metrics, contributors)


class RoundGuard:
    """A client's memory of the rounds it took part in: a server that runs a (session, round)
    twice could subtract two sums over different survivors. Kept by the client across rounds.

    With ``path`` the memory survives a restart of the client: it is read from that JSON file
    when the guard is made and written to it, atomically and durably (a temporary file,
    ``fsync``, rename), inside :meth:`admit`, i.e. before the client sends anything for the
    round. A file that cannot be read is an error, not an empty memory: forgetting would let
    a server rerun a round. One client process per file.
    """

    _VERSION = 1

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._last: dict[bytes, int] = {}
        self.path = None if path is None else Path(path)
        if self.path is not None and self.path.exists():
            self._last = self._load(self.path)

    @classmethod
    def _load(cls, path: Path) -> dict[bytes, int]:
        try:
            raw = json.loads(path.read_text())
            if raw.get("version") != cls._VERSION:
                raise ValueError(f"version {raw.get('version')!r}")
            last = {bytes.fromhex(k): int(v) for k, v in raw["last"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigurationError(
                f"the round guard {path} cannot be read ({type(exc).__name__}: {exc}); it "
                "records the rounds this client took part in: restore it from a backup, or "
                "move it away only if this client never took part in a round of its federation"
            ) from None
        return last

    def _save(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(
            {"version": self._VERSION, "last": {k.hex(): v for k, v in sorted(self._last.items())}}
        ).encode()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself is durable
        finally:
            os.close(folder)

    def admit(self, session: bytes, round: int) -> None:
        last = self._last.get(session)
        if last is not None and round <= last:
            raise RemoteProtocolError(
                f"round {round} of this session is not newer than round {last}, which this "
                "client already took part in: refused"
            )
        self._last[session] = round
        if self.path is not None:
            try:
                self._save()
            except OSError as exc:
                if last is None:
                    del self._last[session]
                else:
                    self._last[session] = last
                raise ConfigurationError(
                    f"cannot record round {round} in the round guard {self.path}: {exc}"
                ) from None


class SecureClient:
    """One client's side of a secure round: keys first, its update once it has trained.

    What the client trusts comes from its own configuration, not from the server's spec:
    ``settings`` (the federation's secure aggregation, from which it recomputes the graph's
    degree, the threshold and the fewest survivors), ``enrolled`` (every client's public
    signing key) with its own ``signing_key`` for the active mode, ``noise_multiplier`` for
    distributed DP (it refuses less noise than that calls for), and a :class:`RoundGuard`.
    Without ``settings`` it takes the server's word (a test or a semi-honest server).
    """

    def __init__(
        self,
        instruction: TrainInstruction,
        *,
        rng: RandomSource,
        settings: SecureAggregation | None = None,
        signing_key: SigningKey | None = None,
        enrolled: Mapping[str, bytes] | None = None,
        noise_multiplier: float | None = None,
        guard: RoundGuard | None = None,
        guard_scope: bytes | None = None,
    ) -> None:
        spec = instruction.secure
        if spec is None:
            raise LocalProtocolError("this instruction is not for a secure round")
        if spec.round != instruction.round:
            raise RemoteProtocolError("the secure round's spec is for another round")
        self.spec = spec
        self.client_id = instruction.client_id
        self.rng = rng
        expect = None
        if settings is not None:
            expect = _check_spec(spec, settings, noise_multiplier)
        active = spec.active if settings is None else settings.active
        verify = None
        if active:
            if signing_key is None:
                raise ConfigurationError("the active mode needs this client's signing key")
            if enrolled is None:
                raise ConfigurationError(
                    "the active mode needs the federation's enrolled keys on the client"
                )
            missing = [c for c in spec.clients if c not in enrolled]
            if missing:
                raise RemoteProtocolError(f"clients that are not enrolled in the round: {missing}")
            verify = {i + 1: enrolled[c] for i, c in enumerate(spec.clients)}
        if guard is not None:
            # a scope the client knows (its federation) rather than the server's session: a
            # coordinator that restarts, or lies, gets a new session but not a new round
            guard.admit(spec.session if guard_scope is None else guard_scope, spec.round)
        self.inner = SecAggClient(
            spec.number(instruction.client_id),
            session=spec.session,
            round=spec.round,
            signing_key=signing_key if active else None,
            verify_keys=verify,
            expect=expect,
        )

    def advertise(self) -> AdvertiseKeys:
        return self.inner.advertise()

    def share_keys(self, directory: KeyDirectory) -> ShareKeys:
        return self.inner.share_keys(directory)

    def masked_input(self, shares: SharesForYou, result: TrainResult) -> MaskedInput:
        if result.client_id != self.client_id or result.round != self.spec.round:
            raise LocalProtocolError("the result is from another client or round")
        return self.inner.masked_input(shares, encode(self.spec, result, self.rng))

    def consistency(self, request: UnmaskRequest) -> ConsistencyCheck:
        return self.inner.consistency(request)

    def unmask(self, request: UnmaskRequest | ConsistencyProof) -> UnmaskShares:
        return self.inner.unmask(request)


def _check_spec(
    spec: SecureRoundSpec, settings: SecureAggregation, noise_multiplier: float | None
) -> Expectation:
    """What the client requires of the round, recomputed from its own settings; refuses a
    spec that asks for less (a lower threshold or floor of survivors, another graph, the
    active mode off, less distributed noise)."""
    plan = plan_round(
        len(spec.clients),
        graph=settings.graph,
        dropout=settings.dropout,
        failure=settings.failure,
        active=settings.active,
    )
    if (spec.plan.threshold, spec.plan.degree) != (plan.threshold, plan.degree):
        raise RemoteProtocolError(
            f"the server planned degree {spec.plan.degree} and threshold {spec.plan.threshold}; "
            f"this client's settings give {plan.degree} and {plan.threshold}: refused"
        )
    if spec.active != settings.active:
        raise RemoteProtocolError("the server's round does not match this client's active mode")
    distributed = spec.encoding is Encoding.DISTRIBUTED_DP
    if distributed != settings.distributed_dp:
        raise RemoteProtocolError("the server's round does not match this client's DP mode")
    least = plan.threshold
    if distributed:
        least = plan.min_survivors
        if spec.min_survivors < least:
            raise RemoteProtocolError(
                f"the server would unmask with {spec.min_survivors} survivors; this client's "
                f"noise is calibrated for {least}: refused"
            )
        if noise_multiplier is not None:
            _, sigma = distributed_noise(
                clip=spec.clip,
                dimension=spec.dimension,
                clients=len(spec.clients),
                threshold=least,
                noise_multiplier=noise_multiplier,
            )
            if spec.client_sigma < sigma * (1 - 1e-12):
                raise RemoteProtocolError(
                    f"the server asks for noise {spec.client_sigma:.6g}; this client's target "
                    f"needs {sigma:.6g}: refused"
                )
    return Expectation(
        threshold=plan.threshold,
        degree=None if plan.complete else plan.degree,
        min_survivors=least,
    )


class SecureServerRound:
    """The server's side of a secure round; :meth:`finish` gives the :class:`SummedUpdates`."""

    def __init__(self, spec: SecureRoundSpec, *, rng: RandomSource | None = None) -> None:
        self.spec = spec
        ids = range(1, len(spec.clients) + 1)
        plan = spec.plan
        # SecAgg+: the graph is derived from the advertised keys (every client checks it)
        self.server = SecAggServer(
            session=spec.session,
            round=spec.round,
            threshold=plan.threshold,
            dimension=spec.length,
            neighbours=neighbours_complete(ids),
            active=spec.active,
            degree=None if plan.complete else plan.degree,
            min_survivors=spec.min_survivors,
            verify_keys={i + 1: k for i, k in enumerate(spec.verify_keys)} or None,
        )
        self.bytes_received = 0
        self.bytes_sent = 0

    def collect_keys(self, messages: list[AdvertiseKeys]) -> KeyDirectory:
        self.bytes_received += 64 * len(messages)
        directory = self.server.collect_keys(messages)
        self.bytes_sent += len(directory.keys) * 72 * len(directory.keys)
        return directory

    def collect_shares(self, messages: list[ShareKeys]) -> dict[int, SharesForYou]:
        self.bytes_received += sum(
            len(m.seed_commitment) + sum(len(b) for b in m.sealed.values()) for m in messages
        )
        routed = self.server.collect_shares(messages)
        self.bytes_sent += sum(len(b) + 8 for s in routed.values() for b in s.sealed.values())
        return routed

    def collect_masked(self, messages: list[MaskedInput]) -> UnmaskRequest:
        self.bytes_received += sum(int(m.vector.nbytes) for m in messages)
        request = self.server.collect_masked(messages)
        self.bytes_sent += 8 * len(request.survivors | request.dropped) * len(request.survivors)
        return request

    def collect_consistency(self, messages: list[ConsistencyCheck]) -> ConsistencyProof:
        self.bytes_received += sum(8 + len(m.signature) for m in messages)
        proof = self.server.collect_consistency(messages)
        self.bytes_sent += 72 * len(proof.signatures) * len(proof.request.survivors)
        return proof

    def finish(self, messages: list[UnmaskShares]) -> SummedUpdates:
        self.bytes_received += sum(41 * (len(m.seed_shares) + len(m.key_shares)) for m in messages)
        return self._decode(self.server.finish(messages))

    def finish_without(self, client: int) -> SummedUpdates:
        """:meth:`finish` again, after it failed on inconsistent shares, without the answer of
        ``client`` (its number; see :meth:`~veil.secagg.protocol.SecAggServer.finish_without`:
        the same survivors and masked inputs, one client's shares left out)."""
        return self._decode(self.server.finish_without(client))

    def _decode(self, total: npt.NDArray[np.uint32]) -> SummedUpdates:
        contributors = tuple(
            self.spec.clients[u - 1] for u in sorted(self.server.request.survivors)
        )
        return decode(self.spec, total, contributors)
