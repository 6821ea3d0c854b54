"""Shamir t-out-of-n secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

A secret ``s`` (a 32-byte string read as an integer below 2^256, hence below the prime ``P``)
becomes the constant term of a random polynomial ``f`` of degree ``t - 1`` over ``GF(P)``; the
holder with index ``x`` (1 <= x < P) gets ``f(x)``. Any ``t`` shares give ``s = f(0)`` by
Lagrange interpolation; any ``t - 1`` shares are uniformly distributed whatever ``s`` is, so
they say nothing about it (for every candidate secret there is exactly one polynomial through
them). Secure aggregation shares each client's 32-byte mask seed and its 32-byte X25519 private
key this way: a whole secret in one field element, not a padded key split into chunks.

The coefficients come from the operating system's CSPRNG unless a test passes its own source
(:class:`~veil.privacy.RandomSource`). Lagrange coefficients for a set of holders are
computed once per set (:func:`lagrange_at_zero`) and reused for every secret those holders
reconstruct.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from veil.errors import ConfigurationError, RemoteProtocolError
from veil.privacy.random import RandomSource, SecureRandom

__all__ = ["PRIME", "SECRET_BYTES", "combine", "lagrange_at_zero", "split"]

PRIME = 2**256 + 297
"""The least prime above 2^256 (tests check its primality)."""
SECRET_BYTES = 32


def _field_element(rng: RandomSource) -> int:
    """A uniform element of GF(P), by rejection from 320 random bits (accepts with p > 0.99)."""
    limit = (2**320 // PRIME) * PRIME
    while True:
        words = rng.words(5)
        value = 0
        for w in words.tolist():
            value = (value << 64) | int(w)
        if value < limit:
            return value % PRIME


def _check_holders(holders: Iterable[int]) -> tuple[int, ...]:
    xs = tuple(holders)
    for x in xs:
        if not isinstance(x, int) or isinstance(x, bool) or not 0 < x < PRIME:
            raise ConfigurationError(f"holder indices must be integers in [1, P), got {x!r}")
    if len(set(xs)) != len(xs):
        raise ConfigurationError("holder indices must be distinct")
    return xs


def split(
    secret: bytes,
    *,
    threshold: int,
    holders: Iterable[int],
    rng: RandomSource | None = None,
) -> dict[int, int]:
    """Shares of ``secret`` (exactly 32 bytes) for each holder index; any ``threshold`` of them
    reconstruct it, fewer reveal nothing."""
    xs = _check_holders(holders)
    if not isinstance(secret, bytes | bytearray) or len(secret) != SECRET_BYTES:
        raise ConfigurationError(f"a secret has exactly {SECRET_BYTES} bytes")
    if not isinstance(threshold, int) or not 1 <= threshold <= len(xs):
        raise ConfigurationError(
            f"threshold must be an integer in [1, {len(xs)}] (the number of holders), "
            f"got {threshold!r}"
        )
    source = rng if rng is not None else SecureRandom()
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [_field_element(source) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner's rule
            y = (y * x + c) % PRIME
        shares[x] = y
    return shares


@functools.lru_cache(maxsize=1024)
def lagrange_at_zero(holders: tuple[int, ...]) -> tuple[int, ...]:
    """The coefficients ``λ_i`` with ``f(0) = Σ λ_i f(x_i)`` for the holders ``x_i``."""
    xs = _check_holders(holders)
    nums = []
    dens = []
    for i, xi in enumerate(xs):
        num = 1
        den = 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        nums.append(num)
        dens.append(den)
    # one modular inversion for all the denominators (Montgomery's trick): SecAgg+ rebuilds
    # each client's secrets from its own set of neighbours, so sets rarely repeat
    prefix = [1]
    for den in dens:
        prefix.append(prefix[-1] * den % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)
    out = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        out[i] = nums[i] * inverse * prefix[i] % PRIME  # inverse of dens[i] times nums[i]
        inverse = inverse * dens[i] % PRIME
    return tuple(out)


def combine(shares: Mapping[int, int], *, threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares ``{holder: share}`` (the first
    ``threshold`` of them, in holder order). Fewer shares are refused: they determine nothing."""
    if not isinstance(threshold, int) or threshold < 1:
        raise ConfigurationError(f"threshold must be an integer >= 1, got {threshold!r}")
    if len(shares) < threshold:
        raise RemoteProtocolError(
            f"{len(shares)} shares cannot reconstruct a secret shared with threshold {threshold}"
        )
    xs = tuple(sorted(shares)[:threshold])
    for x in xs:
        y = shares[x]
        if not isinstance(y, int) or not 0 <= y < PRIME:
            raise RemoteProtocolError(f"the share of holder {x} is not a field element")
    value = sum(lam * shares[x] for lam, x in zip(lagrange_at_zero(xs), xs, strict=True)) % PRIME
    if value >= 2 ** (8 * SECRET_BYTES):
        # Honest shares always give a value below 2^256. (Corrupted ones almost never land
        # above it, as P - 2^256 = 297: this is a type check, not a consistency check; the
        # protocol authenticates shares instead.)
        raise RemoteProtocolError("the shares do not encode a 32-byte secret")
    return value.to_bytes(SECRET_BYTES, "big")
