"""The scoring circuits, written against :class:`veil.he.backend.Evaluator`.

Single applicant (one ciphertext, two features per slot: ``x_2k + i x_2k+1`` in slot ``k``, for
``k < S = ceil(F / 2)``, :func:`pack_single`; ``P`` the power of two at or above ``S``). Slots
are counted here from the result slot ``r = N/4`` downwards (:func:`single_layout`): slot ``k``
below is the encoder's slot ``r - k``, and slot 0 is the result.

1. ``t = x * v / 2`` slot by slot with ``v_k = w_2k - i w_2k+1`` and, from slot ``S`` on, fresh
   noise in place of zeros (one rescale; :func:`blinded_weights`):
   ``Re(t_k) = (w_2k x_2k + w_2k+1 x_2k+1) / 2``;
2. rotate and add with steps ``P/2, ..., 2, 1`` (to the right in the encoder's order, steps
   ``-P/2 .. -1``): ``Re`` of slot 0 now holds ``w . x / 2``;
3. multiply by the one-hot vector of slot 0 (one rescale);
4. add the complex conjugate (one key switch): every slot now holds ``Re(...)``, twice, and no
   imaginary part; add ``b`` in slot 0;
5. add a fresh plaintext of uniform noise in ``[-B, B]`` to every slot but slot 0's real part
   (both parts of slots ``1 ..``, the imaginary part of slot 0): :func:`flood`.

Two features per slot halve the slots to sum (one rotation fewer: 5 for 61 features, where one
feature per slot needs 6 and the conjugation on top), and the conjugation comes after the mask's
rescale, where the ciphertext has one prime left and a key switch costs half as much. These are
the circuit's only key switches, and most of its time.

Why ``r = N/4`` and not the encoder's slot 0: each key switch leaves in every slot, besides its
zero-mean noise, an offset that depends only on the keys, and it is largest in the slot whose
root of unity is nearest 1, which is slot 0 (measured there: 1e-7 to 5e-6 on the logit, a
constant per key set that the client's rounding to 1e-6 would not remove; see docs/he.md on
decrypted values). Slot ``N/4`` has the root ``-exp(i pi / N)``, the farthest from 1; there the
offset measured below 4e-8, under the per-query noise (about 6e-8).

Step 2 alone would leave *partial* sums of ``w_j x_j`` in slots ``1 .. P-1`` (TenSEAL's
``CKKSVector.dot`` returns exactly that), from which a client holding the secret key reads every
weight in one query. Step 3 multiplies them by the mask, but not by an exact zero: the mask is
encoded with a rounding error ``e`` of about ``2^-35`` per slot, so slot ``i`` keeps ``e_i``
times the partial sum, a residue that grows with the client's inputs (about ``1e-6`` for
``|x| ~ 2e4``) and that a client who runs this public circuit on basis weights can solve for
the weights by least squares. Step 5 drowns that residue: fresh noise per query, from
``secrets``, at ``B = 2^(q_0 bits - scale bits - 2)`` (``2^18`` in logit mode, 4 in probability
mode), the largest that keeps every coefficient of the result far inside ``q_0`` (at N = 8192
the coefficients of uniform slot values have a standard deviation of about ``B * scale / 100``,
so ``q_0 / 2`` is over 200 of them away). A residue ``r`` is then hidden up to a statistical
distance of about ``r / B`` per slot and query, and averaging the noise away over the 8,190
real values of a result takes about ``(B / r)^2 / 8190`` queries. The residue grows like
``5e-11 |x|`` (measured: ``6e-7`` at ``|x| = 2e4``, ``3e-3`` at ``1e8``) until the result wraps
around ``q_0`` (``|x|`` near ``1e10``, where slot 0 is garbage too), so it stays of order 1 at
most: millions of queries at the very least, against the ``F + 1`` exact scores that extract a
linear model through any scoring API. The server cannot see the inputs, so this rests on the
randomisation alone.

Step 4 is there because a slot is complex: without it slot 0 would hold, besides the score
``Re(s)`` of ``s = sum_k t_k``, the imaginary part ``Im(s) = sum_k (w_2k x_2k+1 - w_2k+1 x_2k)``,
a second score per query. Conjugating removes the imaginary part exactly whatever the inputs
(flooding could not: ``Im(s)`` is as large as the client likes). Conjugating after the mask
rather than before lets the mask's encoding error ``e_0`` in slot 0 (about ``2^-35``, complex)
mix ``-2 Im(e_0) Im(s)`` into the score; ``e_0`` is public (anyone can encode the mask), so slot 0
is still one linear function of the weights, ``w . y`` for a ``y`` the client knows
(``y = (1 + Re e_0) x - Im(e_0) x'``, ``x'`` the pairs ``(x_2k+1, -x_2k)``): what any scoring
API returns for the input ``y``, and nothing more.

It also holds against a client that packs its ciphertext in some other way: slot 0 after step 2
is ``sum_{k<P} t_k`` whatever the other slots held.

Why step 1 puts noise, not zeros, in the weights' other slots: the weight plaintext is encoded
with a rounding error too, about ``2^-34`` per slot, and in the slots that hold no weight that
error is all there is, a fixed function of the weights (the rounding of every coefficient of
their encoding, from which a lattice search could in principle recover them). Inputs outside
the ``P`` summed slots never reach slot 0, so nothing but the modulus bounds them: at ``|x|``
near ``2^82`` there, multiplied by that error and then by the mask's, leave residues of about
``2e4`` in the other slots (measured), a tenth of ``B``, where the bound above assumes order
1; one query then tells the true weights from weights ``1e-9`` away (correlation 0.08, seven
standard deviations over the 8,190 flooded values). So the server encodes the weights per
query with fresh uniform noise in ``[-2^-16, 2^-16]`` in every slot outside the ``S`` that hold
weights (:data:`BLIND`): at the plaintext's scale that moves every coefficient by far more than
one, so the rounding is fresh per query too and says nothing of the weights, and those slots
multiply the client's inputs by noise of the server's, not by anything of the model. An honest
client has zeros there (up to its encryption noise), so the score does not change. The price
is one encoding per query (about 0.9 ms of CPU).

Probability mode runs steps 1 and 2 with ``w / R``, conjugates before its rescale (the
polynomial needs a real ``u``) and adds ``b / R``, so slot 0 holds
``u = z / R`` in ``[-1, 1]``, then evaluates the sigmoid polynomial ``sum_k c_k u^k``: the powers
``u^k`` by binary splitting (depth ``ceil(log2 k)``), each multiplied by the plaintext
``c_k * one_hot`` (so the mask costs no extra level), summed, plus ``c_0`` in slot 0, and
floods the other slots as in step 5 with ``B = 4``. Its residues, about ``2e-5`` at a ``2^30``
scale, stayed there (measured: ``2.3e-5``) for inputs up to those that drive ``|u|`` to 2.4,
where slot 0 holds ``p(u) = -670``; a little further out (``|u|`` near 9) the result wraps
around ``q_0`` and every slot, slot 0 included, is garbage. Averaging ``B = 4`` away from a
residue of ``2e-5`` takes about ``(4 / 2e-5)^2 / 63`` queries, some ``6e8``.

Many applicants (feature-major): ciphertext ``j`` holds feature ``j`` of many applicants, and
``z = sum_j w_j ct_j + b`` needs no rotation, so no slot ever mixes two applicants or two
features; the products are summed at the larger scale (and, with a rescale, rescaled once). The
weights are real, so the real and imaginary parts of a slot are scored independently: in logit
mode a slot holds two applicants (``N`` per query; :func:`batch_linear` adds ``b + i b``), twice
the applicants for the same ciphertexts and the same work. Probability mode squares ``u``, which
would mix the two parts, so it keeps one applicant per slot. Every slot is a result, so there is
nothing to mask or flood, but batch mode gives the model away by construction: unit vectors as
applicants return every weight and the bias in one query. Servers enable it for trusted clients
only.

Depth (rescales): single logit 2, batch logit 0 (with a bound on the scores; 1 without),
probability ``2 + ceil(log2 degree)`` either way.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError
from veil.he.backend import Ciphertext, Evaluator
from veil.he.params import next_power_of_two

__all__ = [
    "BLIND",
    "batch_linear",
    "batch_probability",
    "blinded_weights",
    "circuit_depth",
    "flood",
    "flood_bound",
    "pack_single",
    "result_slot",
    "single_layout",
    "single_linear",
    "single_probability",
    "single_rotations",
    "single_slots",
]


def single_slots(features: int) -> int:
    """Slots one applicant's ``features`` take in the single-applicant layout: two per slot."""
    return max(1, (features + 1) // 2)


def result_slot(slots: int) -> int:
    """The slot that holds a single applicant's result: ``N / 4``, whose root of unity is
    ``-exp(i pi / N)``, the farthest from 1 (see the module text)."""
    return slots // 2


def single_rotations(features: int) -> tuple[int, ...]:
    """The rotation steps the single-applicant circuit uses: ``-P/2, ..., -2, -1`` (to the
    right: pair ``j`` sits ``j`` slots below the result slot)."""
    p = next_power_of_two(single_slots(features))
    return tuple(sorted(-(1 << i) for i in range(int(math.log2(p)))))


def pack_single(x: npt.ArrayLike) -> npt.NDArray[np.complex128]:
    """One applicant's features, two per slot: ``x_2k + i x_2k+1`` in slot ``k``."""
    arr = np.asarray(x, dtype=np.float64).ravel()
    out = np.zeros(single_slots(arr.size), dtype=np.complex128)
    out.real[: (arr.size + 1) // 2] = arr[0::2]
    out.imag[: arr.size // 2] = arr[1::2]
    return out


def _placed(values: npt.ArrayLike, slots: int) -> npt.NDArray[Any]:
    """A vector of ``slots`` with ``values[j]`` in slot ``result_slot - j`` (cyclically)."""
    arr = np.asarray(values)
    out = np.zeros(slots, dtype=arr.dtype)
    out[(result_slot(slots) - np.arange(arr.size)) % slots] = arr
    return out


def single_layout(x: npt.ArrayLike, slots: int) -> npt.NDArray[np.complex128]:
    """The slots a client encrypts for one applicant: :func:`pack_single`, pair ``j`` in slot
    ``result_slot - j``."""
    return _placed(pack_single(x), slots)


def _paired_weights(weights: Sequence[float], factor: float, slots: int) -> npt.NDArray[Any]:
    """``v_j = factor (w_2j - i w_2j+1)``, placed as :func:`single_layout` places pair ``j``:
    the real part of the product with pair ``j`` is ``factor (w_2j x_2j + w_2j+1 x_2j+1)``."""
    return _placed(factor * pack_single(weights).conj(), slots)


BLIND = 2.0**-16
"""The half-width of the fresh noise :func:`blinded_weights` puts in the weight plaintext's
zero slots (see the module text)."""


def _uniform(count: int, bound: float, random_bytes: Callable[[int], bytes]) -> npt.NDArray[Any]:
    """``count`` values uniform in ``[-bound, bound]`` from ``random_bytes``."""
    raw = np.frombuffer(random_bytes(8 * count), dtype=np.uint64).astype(np.float64)
    return (raw / 2.0**64 * 2.0 - 1.0) * bound


def blinded_weights(
    weights: Sequence[float],
    factor: float,
    slots: int,
    *,
    random_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> npt.NDArray[np.complex128]:
    """:func:`_paired_weights`, with fresh uniform noise in ``[-BLIND, BLIND]`` (both parts) in
    every slot outside the ``ceil(F / 2)`` that hold weights. Those slots would otherwise hold
    the plaintext's rounding error, a fixed function of the weights that a client reads from
    the flooded slots with huge inputs there (see the module text); the noise re-randomises
    the rounding of every coefficient. ``random_bytes`` must be a CSPRNG outside tests."""
    out = np.asarray(_paired_weights(weights, factor, slots), dtype=np.complex128)
    noise = _uniform(2 * slots, BLIND, random_bytes)
    blind = noise[:slots] + 1j * noise[slots:]
    blind[(result_slot(slots) - np.arange(single_slots(len(weights)))) % slots] = 0.0
    return out + blind


def circuit_depth(*, probability: bool, batch: bool, degree: int = 0) -> int:
    if probability:
        return 2 + math.ceil(math.log2(max(degree, 2)))
    return 1 if batch else 2


def _rotate_sum(ev: Evaluator, t: Ciphertext, features: int) -> Ciphertext:
    for step in single_rotations(features):  # -P/2 first
        t = ev.add_into(ev.rotate(t, step), t)  # into the fresh rotation: no new ciphertext
    return t


def _real_part_twice(ev: Evaluator, t: Ciphertext) -> Ciphertext:
    """``t + conj(t)``: ``2 Re`` of every slot, the imaginary parts gone whatever they held."""
    return ev.add_into(ev.conjugate(t), t)


def flood_bound(ev: Evaluator, ct: Ciphertext) -> float:
    """``B = 2^(q_0 bits - 2) / scale``: the noise :func:`flood` adds (see the module text)."""
    return float(2.0 ** (ev.params.coeff_modulus_bits[0] - 2) / ev.scale(ct))


def flood(
    ev: Evaluator,
    ct: Ciphertext,
    *,
    random_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> Ciphertext:
    """``ct`` plus fresh uniform noise in ``[-B, B]`` in both parts of every slot except the
    real part of :func:`result_slot`, the result. ``random_bytes`` must be a CSPRNG outside
    tests."""
    slots = ev.params.slots
    bound = flood_bound(ev, ct)
    uniform = _uniform(2 * slots, bound, random_bytes)
    noise = uniform[:slots] + 1j * uniform[slots:]
    r = result_slot(slots)
    noise[r] = 1j * noise[r].imag
    return ev.add_plain(ct, noise, fresh=True)


def single_linear(
    ev: Evaluator,
    ct: Ciphertext,
    weights: Sequence[float],
    bias: float,
    *,
    flood: bool = True,
) -> Ciphertext:
    """:func:`result_slot`: ``w . x + b`` for ``ct`` an encryption of :func:`single_layout`
    ``(x)``; every other slot (and the result's imaginary part): fresh noise. ``flood=False``
    (no flooding, and the weights encoded without :func:`blinded_weights`' noise) is for tests:
    the attacker's own, deterministic copy of the circuit."""
    slots = ev.params.slots
    scale = ev.scale(ct)
    if flood:
        paired = blinded_weights(weights, 0.5, slots)
        t = ev.multiply_plain(ct, paired, target_scale=scale, fresh=True)
    else:
        t = ev.multiply_plain(ct, _paired_weights(weights, 0.5, slots), target_scale=scale)
    t = _rotate_sum(ev, t, len(weights))
    one_hot = _placed([1.0], slots)
    # masked (and rescaled to the last prime) before the conjugation's key switch, which then
    # works on one residue instead of two
    t = _real_part_twice(ev, ev.multiply_plain(t, one_hot, target_scale=scale))
    t = ev.add_plain(t, bias * one_hot)
    return _flood(ev, t) if flood else t


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
    flood: bool = True,
) -> Ciphertext:
    """Slot 0: ``p(z)`` for the sigmoid polynomial ``p``; every other slot: fresh noise."""
    slots = ev.params.slots
    # Rotated (and conjugated) before the rescale, at scale 2^30 * q: the key-switching noise
    # is then tiny next to the scale. (Probability mode runs at a 2^30 scale, where rotating
    # after the rescale costs about 2e-3 of precision; rotating first costs one more prime in
    # each rotation.)
    factor = 1 / (2 * radius)
    if flood:
        t = ev.multiply_plain_no_rescale(ct, blinded_weights(weights, factor, slots), fresh=True)
    else:
        t = ev.multiply_plain_no_rescale(ct, _paired_weights(weights, factor, slots))
    t = ev.rescale(_real_part_twice(ev, _rotate_sum(ev, t, len(weights))))
    u = ev.add_plain(t, bias / radius)
    p = _polynomial(ev, u, coefficients, _placed([1.0], slots))
    return _flood(ev, p) if flood else p


def _batch_sum(
    ev: Evaluator, cts: Sequence[Ciphertext], weights: Sequence[float], bias: float | complex
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
    """Slot ``i``: ``w . x_i + b`` in its real part for the applicant in the real part of slot
    ``i`` of every ciphertext, and the same in its imaginary part for the applicant there."""
    return _batch_sum(ev, cts, weights, complex(bias, bias))


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


_flood = flood  # the circuits' keyword ``flood`` shadows the function's name
