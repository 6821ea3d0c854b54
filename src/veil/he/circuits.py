"""The scoring circuits, written against :class:`veil.he.backend.Evaluator`.

Single applicant (one ciphertext, features in slots ``0 .. F-1``, ``P`` the next power of two):

1. ``t = x * w`` slot by slot, ``w`` zero outside ``0 .. F-1`` (one rescale);
2. rotate and add with steps ``P/2, ..., 2, 1``: slot 0 now holds ``w . x``;
3. multiply by the one-hot vector of slot 0 (one rescale), add ``b`` in slot 0.

Step 2 alone would leave *partial* sums of ``w_j x_j`` in slots ``1 .. P-1`` (TenSEAL's
``CKKSVector.dot`` returns exactly that), from which a client holding the secret key reads every
weight in one query. Step 3 multiplies every slot but the result by zero. It also holds against a
client that packs its ciphertext in some other way: slot 0 after step 2 is ``sum_{j<P} w_j
x_j`` whatever the other slots held, and nothing else survives. What remains in the other slots
is CKKS noise, about ``1e-9`` at a scale of ``2^40`` (``tests/he/test_he_leak.py``).

Probability mode runs steps 1-2 with ``w / R`` and adds ``b / R``, so slot 0 holds
``u = z / R`` in ``[-1, 1]``, then evaluates the sigmoid polynomial ``sum_k c_k u^k``: the powers
``u^k`` by binary splitting (depth ``ceil(log2 k)``), each multiplied by the plaintext
``c_k * one_hot`` (so the mask costs no extra level), summed, plus ``c_0`` in slot 0.

Many applicants (feature-major): ciphertext ``j`` holds feature ``j`` of up to ``N/2``
applicants, one per slot. ``z = sum_j w_j ct_j + b`` needs no rotation, so no slot ever mixes two
applicants or two features; the products are summed at the larger scale and rescaled once.

Depth (rescales): single logit 2, batch logit 0 (with a bound on the scores; 1 without),
probability ``2 + ceil(log2 degree)`` either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError
from veil.he.backend import Ciphertext, Evaluator
from veil.he.params import next_power_of_two

__all__ = [
    "batch_linear",
    "batch_probability",
    "circuit_depth",
    "single_linear",
    "single_probability",
    "single_rotations",
]


def single_rotations(features: int) -> tuple[int, ...]:
    """The rotation steps the single-applicant circuit uses: ``1, 2, 4, ..., P/2``."""
    p = next_power_of_two(features)
    return tuple(1 << i for i in range(int(math.log2(p))))


def circuit_depth(*, probability: bool, batch: bool, degree: int = 0) -> int:
    if probability:
        return 2 + math.ceil(math.log2(max(degree, 2)))
    return 1 if batch else 2


def _padded(values: Sequence[float], slots: int) -> npt.NDArray[np.float64]:
    out = np.zeros(slots)
    out[: len(values)] = values
    return out


def _rotate_sum(ev: Evaluator, t: Ciphertext, features: int) -> Ciphertext:
    for step in reversed(single_rotations(features)):
        t = ev.add(t, ev.rotate(t, step))
    return t


def single_linear(
    ev: Evaluator, ct: Ciphertext, weights: Sequence[float], bias: float
) -> Ciphertext:
    """Slot 0: ``w . x + b``; every other slot: zero (up to CKKS noise)."""
    slots = ev.params.slots
    scale = ev.scale(ct)
    t = ev.multiply_plain(ct, _padded(weights, slots), target_scale=scale)
    t = _rotate_sum(ev, t, len(weights))
    one_hot = _padded([1.0], slots)
    t = ev.multiply_plain(t, one_hot, target_scale=scale)
    return ev.add_plain(t, bias * one_hot)


def _polynomial(
    ev: Evaluator,
    u: Ciphertext,
    coefficients: Sequence[float],
    mask: npt.NDArray[np.float64] | None,
) -> Ciphertext:
    scale = ev.scale(u)
    powers: dict[int, Ciphertext] = {1: u}
    degree = len(coefficients) - 1

    def power(k: int) -> Ciphertext:
        if k not in powers:
            half = 1 << (k.bit_length() - 1)
            half = half if half < k else half >> 1
            powers[k] = ev.multiply(power(half), power(k - half))
        return powers[k]

    total: Ciphertext | None = None
    for k in range(1, degree + 1):
        c = coefficients[k]
        if c == 0.0:
            continue
        plain = c if mask is None else c * mask
        term = ev.multiply_plain(power(k), plain, target_scale=scale)
        total = term if total is None else ev.add(total, term)
    if total is None:
        raise ConfigurationError("the sigmoid polynomial has no term of degree >= 1")
    c0 = coefficients[0]
    return ev.add_plain(total, c0 if mask is None else c0 * mask)


def single_probability(
    ev: Evaluator,
    ct: Ciphertext,
    weights: Sequence[float],
    bias: float,
    *,
    radius: float,
    coefficients: Sequence[float],
) -> Ciphertext:
    """Slot 0: ``p(z)`` for the sigmoid polynomial ``p``; every other slot: zero."""
    slots = ev.params.slots
    # Rotated before the rescale, at scale 2^30 * q: the key-switching noise of the rotations
    # is then tiny next to the scale. (Probability mode runs at a 2^30 scale, where rotating
    # after the rescale costs about 2e-3 of precision; rotating first costs one more prime in
    # each rotation.)
    t = ev.multiply_plain_no_rescale(ct, _padded([w / radius for w in weights], slots))
    t = ev.rescale(_rotate_sum(ev, t, len(weights)))
    u = ev.add_plain(t, bias / radius)
    return _polynomial(ev, u, coefficients, _padded([1.0], slots))


def _batch_sum(
    ev: Evaluator, cts: Sequence[Ciphertext], weights: Sequence[float], bias: float
) -> Ciphertext:
    if len(cts) != len(weights):
        raise ConfigurationError(f"{len(cts)} ciphertexts for {len(weights)} features")
    # Depth 0 (parameters_for_sums): constants at 2^(s-5), no rescale. Otherwise constants at
    # the last prime and one rescale after the sum.
    flat = ev.params.depth == 0
    plain_scale = 2.0 ** (ev.params.scale_bits - 5) if flat else None
    total: Ciphertext | None = None
    for ct, w in zip(cts, weights, strict=True):
        if w == 0.0:
            continue
        term = ev.multiply_plain_no_rescale(ct, w, plain_scale=plain_scale)
        total = term if total is None else ev.add_into(total, term)
    if total is None:  # an all-zero model: z = b
        total = ev.multiply_plain_no_rescale(cts[0], 0.0, plain_scale=plain_scale)
    return ev.add_plain(total if flat else ev.rescale(total), bias)


def batch_linear(
    ev: Evaluator, cts: Sequence[Ciphertext], weights: Sequence[float], bias: float
) -> Ciphertext:
    """Slot ``i``: ``w . x_i + b`` for the applicant in slot ``i`` of every ciphertext."""
    return _batch_sum(ev, cts, weights, bias)


def batch_probability(
    ev: Evaluator,
    cts: Sequence[Ciphertext],
    weights: Sequence[float],
    bias: float,
    *,
    radius: float,
    coefficients: Sequence[float],
) -> Ciphertext:
    """Slot ``i``: ``p(z_i)``."""
    u = _batch_sum(ev, cts, [w / radius for w in weights], bias / radius)
    return _polynomial(ev, u, coefficients, None)
