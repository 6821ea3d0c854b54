"""CKKS parameters at 128-bit security, checked against the HomomorphicEncryption.org standard,
and chosen from the depth of the circuit they must carry.

A CKKS context is fixed by the ring dimension ``N`` (a power of two) and the chain of prime
moduli ``q_0, q_1, ..., q_L, P``: ``q_0`` holds the result, each ``q_i`` (``i >= 1``) is dropped by
one rescale, so a circuit of multiplicative depth ``L`` needs ``L`` of them, and ``P`` is the
special prime of key switching. The hardness of RLWE depends on ``N`` and on the bit length of the
whole modulus ``Q·P``; the standard (Albrecht et al., "Homomorphic Encryption Security Standard",
2018, table 1, ternary secret, classical attacks) lists the largest ``log2(Q·P)`` for each ``N``.
SEAL enforces the same table; veil checks it first so that the refusal says why.
"""

from __future__ import annotations

import dataclasses
import math

from veil.errors import ConfigurationError

__all__ = [
    "MAX_MODULUS_BITS_128",
    "CkksParameters",
    "check_security",
    "parameters_for_depth",
    "parameters_for_sums",
]

MAX_MODULUS_BITS_128: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}
"""Largest ``log2(Q·P)`` at 128-bit classical security for each ring dimension ``N``
(HomomorphicEncryption.org standard, ternary secrets; the same values as SEAL's
``hestdparms.h``)."""


@dataclasses.dataclass(frozen=True)
class CkksParameters:
    """A CKKS parameter set: ring dimension, the bit sizes of the modulus chain (``q_0`` first,
    the special prime last) and the encoding scale ``2^scale_bits``."""

    poly_modulus_degree: int
    coeff_modulus_bits: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        """Values one ciphertext holds: ``N / 2``."""
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Rescales the chain allows: the primes between ``q_0`` and the special prime."""
        return len(self.coeff_modulus_bits) - 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_modulus_bits)

    def to_dict(self) -> dict[str, object]:
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_modulus_bits": list(self.coeff_modulus_bits),
            "scale_bits": self.scale_bits,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> CkksParameters:
        try:
            bits = data["coeff_modulus_bits"]
            if not isinstance(bits, list):
                raise TypeError
            params = cls(
                poly_modulus_degree=int(data["poly_modulus_degree"]),  # type: ignore[call-overload]
                coeff_modulus_bits=tuple(int(b) for b in bits),
                scale_bits=int(data["scale_bits"]),  # type: ignore[call-overload]
            )
        except (KeyError, TypeError, ValueError):
            raise ConfigurationError(
                "CKKS parameters need poly_modulus_degree, coeff_modulus_bits (a list) and "
                f"scale_bits; found {data!r}"
            ) from None
        check_security(params)
        return params


def check_security(params: CkksParameters) -> None:
    """Refuse parameters below 128-bit security or that SEAL cannot build.

    Raises :class:`ConfigurationError` naming the bound that is broken and how to fix it.
    """
    n = params.poly_modulus_degree
    if n not in MAX_MODULUS_BITS_128:
        raise ConfigurationError(
            f"ring dimension {n} is not supported; use one of "
            f"{', '.join(str(k) for k in MAX_MODULUS_BITS_128)}"
        )
    bits = params.coeff_modulus_bits
    if len(bits) < 2:
        raise ConfigurationError(
            f"the modulus chain needs at least q_0 and the special prime; found {list(bits)}"
        )
    if any(not 20 <= b <= 60 for b in bits):
        raise ConfigurationError(
            f"every prime of the modulus chain must have 20 to 60 bits; found {list(bits)}"
        )
    budget = MAX_MODULUS_BITS_128[n]
    if params.total_bits > budget:
        raise ConfigurationError(
            f"CKKS parameters below 128-bit security: N={n} allows a modulus of at most {budget} "
            f"bits (HomomorphicEncryption.org standard) but the chain {list(bits)} has "
            f"{params.total_bits}. Use a larger ring dimension or fewer/smaller primes."
        )
    if not 20 <= params.scale_bits <= 60 or params.scale_bits >= bits[0]:
        raise ConfigurationError(
            f"scale 2^{params.scale_bits} must be between 2^20 and 2^60 and below q_0 (2^{bits[0]})"
        )


def parameters_for_depth(
    depth: int, *, min_slots: int = 1, scale_bits: int = 40, headroom_bits: int = 20
) -> CkksParameters:
    """The smallest 128-bit-secure parameters for a circuit of multiplicative ``depth``.

    The chain is ``[e, scale_bits x depth, e]`` with ``e = min(60, scale_bits +
    headroom_bits)``: ``q_0`` holds results up to ``2^headroom_bits`` in magnitude at the
    encoding scale ``2^scale_bits``, and the special prime is as large as ``q_0`` (key switching
    needs it at least as large as every other prime). The default, ``[60, 40 x depth, 60]``,
    keeps CKKS noise near ``1e-9``; a 30-bit scale costs about ``1e-4`` to ``1e-3`` of precision
    and buys a smaller ring. The ring dimension is the smallest whose budget holds the chain and
    whose ``N / 2`` slots hold ``min_slots`` values.
    """
    if depth < 1:
        raise ConfigurationError(f"a circuit needs depth >= 1; got {depth}")
    if not 20 <= scale_bits <= 56 or headroom_bits < 1:
        raise ConfigurationError(
            f"scale of 20 to 56 bits and a positive headroom needed; got {scale_bits}, "
            f"{headroom_bits}"
        )
    edge = min(60, scale_bits + headroom_bits)
    bits = (edge, *([scale_bits] * depth), edge)
    total = sum(bits)
    for n, budget in MAX_MODULUS_BITS_128.items():
        if n < 8192 or n // 2 < min_slots:
            continue  # below 8192 the chain cannot hold even one level
        if total <= budget:
            params = CkksParameters(n, bits, scale_bits)
            check_security(params)
            return params
    largest = max(MAX_MODULUS_BITS_128)
    raise ConfigurationError(
        f"no ring dimension up to {largest} holds a circuit of depth {depth} "
        f"({total} bits of modulus) for {min_slots} slots at 128-bit security; "
        "use a lower polynomial degree"
    )


def parameters_for_sums(*, bound: float, first_bits: int = 60) -> CkksParameters:
    """Parameters for a circuit with no rescale: sums of ciphertexts times plaintext constants,
    whose results stay below ``bound`` in magnitude (feature-major batch scoring).

    The chain is ``[60, 60]`` at N = 8192 (``q_0`` and the special prime): one residue per
    ciphertext, half the size of ``[60, 40, 60]``. Inputs are encoded at ``2^s`` and the
    constants at ``2^(s-5)``, so a result has scale ``2^(2s-5)``; it decodes correctly while
    ``|result| * 2^(2s-5) < q_0 / 2`` (sufficient: no coefficient of the plaintext exceeds the
    largest slot times the scale, and a constant vector reaches that), so ``s`` is the largest
    with ``2^(2s-5) * bound < 2^(first_bits-1)``. With ``bound`` = 64, ``s`` = 29: inputs and
    constants keep 29 and 24 bits after the point (a logit error of about ``1e-6``).
    Intermediate sums may wrap modulo ``q_0``: the arithmetic is exact in the ring, only the
    result must fit.
    """
    if not (math.isfinite(bound) and bound > 0):
        raise ConfigurationError(f"the results' bound must be positive and finite; got {bound}")
    headroom = max(1, math.ceil(math.log2(bound)))
    scale_bits = (first_bits - 1 - headroom + 5) // 2
    if scale_bits < 20:
        raise ConfigurationError(
            f"results up to {bound:.3g} leave less than 20 bits of precision in a "
            f"{first_bits}-bit modulus; scale the target down"
        )
    params = CkksParameters(8192, (first_bits, first_bits), scale_bits)
    check_security(params)
    return params


def next_power_of_two(n: int) -> int:
    return 1 if n <= 1 else 1 << math.ceil(math.log2(n))
