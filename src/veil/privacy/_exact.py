"""The exact building blocks of :mod:`veil.privacy.samplers`.

Rational scales (:func:`rational_upper_bound`), uniform integers, Bernoulli(a/b) and
Bernoulli(exp(-a/b)) drawn from uniform 64-bit words, the batch collector of the rejection
samplers, rational bounds on ``exp(-x)`` and the table of thresholds ``floor(2**32 exp(-j/64))``,
the lazily read uniform of the exact fallbacks, and the word pool. The public functions here are
re-exported by :mod:`veil.privacy.samplers`, whose docstring gives the exactness argument.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError
from veil.privacy.random import RandomSource

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_TWO_64 = 1 << 64
_INT64_MAX = (1 << 63) - 1
# Public bound on the denominators of bernoulli_rational and bernoulli_exp (and on the
# denominators of the rational scales used internally).
_MAX_DENOMINATOR = 1 << 62
# Default precision of the exact rationals that represent scales (see rational_upper_bound).
_NUMERATOR_BITS = 52
_DENOMINATOR_BITS = 62
# Guaranteed relative rounding of rational_upper_bound; smaller scales are refused.
_MAX_RELATIVE_ROUNDING = Fraction(1, 1 << 30)
# The float verdict of _bernoulli_from_float (on 32-bit draws) is trusted only outside this
# margin; the worst rounding error is below 2**-17 (see there).
_FLOAT_MARGIN = 2.0
_TWO_32_FLOAT = float(1 << 32)
# σ² must be representable by rational_upper_bound within 2**-30 and below 2**52 - 1.
_MIN_SIGMA = Fraction(1, 1 << 16)
_MAX_SIGMA = Fraction(1 << 26)
# Candidates per vectorised batch (see _collect).
_MAX_BATCH = 1 << 19
# Candidates per batch of the staircase sampler, and words per request of _WordPool (a batch
# takes two words per candidate). Measured on the reference machine: smaller batches pay
# numpy's fixed cost per call on every one of some fifty passes, larger ones pay for page
# faults on freshly mapped arrays (each 4 KB page costs about 2 µs in a VM); batches of about
# 240 KB arrays were fastest, both in a fresh process and beside torch.
_STAIRCASE_BATCH = 30_000
_POOL_WORDS = 61_000
# Bits per random draw of the staircase sampler.
_DRAW_BITS = 32


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_size(size: int) -> int:
    if isinstance(size, bool):
        raise ConfigurationError(f"size must be an integer >= 0, found {size!r}")
    try:
        n = operator.index(size)
    except TypeError:
        raise ConfigurationError(
            f"size must be an integer >= 0, found {type(size).__name__} {size!r}"
        ) from None
    if n < 0:
        raise ConfigurationError(f"size must be an integer >= 0, found {n}")
    return n


def _as_int64_array(values: npt.ArrayLike, name: str) -> IntArray:
    """``values`` as an int64 array, refusing non-integers and values outside int64."""
    array = np.asarray(values)
    if array.dtype.kind == "u":
        if array.size and int(array.max()) > _INT64_MAX:
            raise ConfigurationError(f"{name} must fit in int64; found a value above 2**63 - 1")
    elif array.dtype.kind == "O" and all(type(v) is int for v in array.ravel().tolist()):
        # numpy keeps Python ints outside the int64 range as objects
        raise ConfigurationError(f"{name} must fit in int64, found a value outside it")
    elif array.dtype.kind != "i":
        raise ConfigurationError(
            f"{name} must be integers (an int or an integer array), found dtype {array.dtype}"
        )
    return array.astype(np.int64, copy=False)


def _ratio_arrays(
    numerator: npt.ArrayLike, denominator: npt.ArrayLike
) -> tuple[IntArray, IntArray]:
    """``numerator`` and ``denominator`` as broadcast int64 arrays, with ``1 <= b < 2**62``."""
    a_in = _as_int64_array(numerator, "numerator")
    b_in = _as_int64_array(denominator, "denominator")
    try:
        a, b = np.broadcast_arrays(a_in, b_in)
    except ValueError:
        raise ConfigurationError(
            f"numerator and denominator cannot be broadcast together: shapes {a_in.shape} "
            f"and {b_in.shape}"
        ) from None
    if b.size and (int(b.min()) < 1 or int(b.max()) >= _MAX_DENOMINATOR):
        raise ConfigurationError("denominator must satisfy 1 <= b < 2**62 in every entry")
    return a, b


# --------------------------------------------------------------------------------------------
# Rational scales
# --------------------------------------------------------------------------------------------


def rational_upper_bound(
    x: float | Fraction,
    *,
    max_numerator_bits: int = _NUMERATOR_BITS,
    max_denominator_bits: int = _DENOMINATOR_BITS,
) -> tuple[int, int]:
    """The smallest ``num / den >= x`` with ``den = 2**k`` as fine as the bounds allow.

    ``k`` is the largest integer in ``[0, max_denominator_bits]`` for which
    ``num = ceil(x * 2**k)`` stays below ``2**max_numerator_bits``; the pair is returned in
    lowest terms (so ``den`` is a power of two, possibly smaller than ``2**k``). Rounding up is
    the safe direction for a noise scale: the noise can only grow.

    Relative rounding ``(num/den - x) / x``:

    * below ``2**-(max_numerator_bits - 1)`` (4.4e-16 with the defaults) whenever the denominator
      bound is not reached, i.e. for ``x >= 2**(max_numerator_bits - 1 - max_denominator_bits)``
      (``x >= 2**-11`` with the defaults), which covers scales from 1e-3 to 1e9 and beyond;
    * below ``2**-max_denominator_bits / x`` for smaller ``x``. A value whose rounding would
      exceed ``2**-30`` (about 9.3e-10) is refused: with the defaults, ``x < 2**-32``.

    Raises:
        ConfigurationError: if ``x`` is not finite, not positive, not below
            ``2**max_numerator_bits - 1``, or too small to be represented within ``2**-30``.
    """
    if isinstance(x, bool) or not isinstance(x, float | int | Fraction):
        raise ConfigurationError(f"expected a float or Fraction, found {type(x).__name__} {x!r}")
    if not (1 <= max_numerator_bits <= 62 and 0 <= max_denominator_bits <= 62):
        raise ConfigurationError(
            "max_numerator_bits must be in [1, 62] and max_denominator_bits in [0, 62], found "
            f"{max_numerator_bits} and {max_denominator_bits}"
        )
    if isinstance(x, float) and not math.isfinite(x):
        raise ConfigurationError(f"expected a finite positive number, found {x!r}")
    value = Fraction(x)
    if value <= 0:
        raise ConfigurationError(f"expected a positive number, found {x!r}")
    p, q = value.numerator, value.denominator
    limit = (1 << max_numerator_bits) - 1
    # The largest k with ceil(p * 2**k / q) <= limit is the largest k with 2**k <= limit*q/p.
    ratio = (limit * q) // p
    if ratio < 1:
        raise ConfigurationError(
            f"{float(value):.6g} is too large: it must be below 2**{max_numerator_bits} - 1 "
            f"(about {float(limit):.3g}); use a smaller scale"
        )
    k = min(ratio.bit_length() - 1, max_denominator_bits)
    num = -((-p << k) // q)
    result = Fraction(num, 1 << k)
    if result - value > value * _MAX_RELATIVE_ROUNDING:
        raise ConfigurationError(
            f"{float(value):.6g} is too small to be represented as num / 2**k with "
            f"k <= {max_denominator_bits} within a relative error of 2**-30; use a larger scale"
        )
    return result.numerator, result.denominator


# --------------------------------------------------------------------------------------------
# Uniform integers
# --------------------------------------------------------------------------------------------


def uniform_below(rng: RandomSource, n: int, bound: int) -> IntArray:
    """``n`` independent integers, each uniform on ``{0, 1, ..., bound - 1}``.

    A 64-bit word ``w`` is accepted when ``w < L = 2**64 - (2**64 mod bound)``; ``L`` is a
    multiple of ``bound``, so an accepted ``w mod bound`` is exactly uniform. Rejected entries
    (probability ``(2**64 mod bound) / 2**64 < bound / 2**64 <= 1/4``) are drawn again.

    Args:
        rng: the source of random words.
        n: how many integers, ``>= 0``.
        bound: a Python int with ``1 <= bound <= 2**62``.
    """
    n = _check_size(n)
    if isinstance(bound, bool) or not isinstance(bound, int) or not 1 <= bound <= 1 << 62:
        raise ConfigurationError(f"bound must be an int in [1, 2**62], found {bound!r}")
    return _uniform_below(rng, n, bound)


def _uniform_below(rng: RandomSource, n: int, bound: int) -> IntArray:
    if n == 0 or bound == 1:
        return np.zeros(n, dtype=np.int64)
    words = rng.words(n)
    excess = _TWO_64 % bound
    if excess:
        limit = np.uint64(_TWO_64 - excess)
        rejected = np.flatnonzero(words >= limit)
        while rejected.size:
            fresh = rng.words(rejected.size)
            words[rejected] = fresh
            rejected = rejected[fresh >= limit]
    return (words % np.uint64(bound)).view(np.int64)  # below 2**62: same value


def _random_bits(rng: RandomSource, n: int) -> BoolArray:
    """``n`` fair coin flips, 64 to a word."""
    if n == 0:
        return np.zeros(0, dtype=np.bool_)
    words = rng.words((n + 63) // 64)
    return np.unpackbits(words.view(np.uint8), count=n).astype(np.bool_)


def _random_bytes(rng: RandomSource, n: int) -> npt.NDArray[np.uint8]:
    """``n`` independent uniform bytes, 8 to a word."""
    return rng.words((n + 7) // 8).view(np.uint8)[:n]


def _random_halves(rng: RandomSource, n: int) -> npt.NDArray[np.uint32]:
    """``n`` independent uniform 32-bit integers, 2 to a word."""
    return rng.words((n + 1) // 2).view(np.uint32)[:n]


# --------------------------------------------------------------------------------------------
# Bernoulli(a / b)
#
# Every Bernoulli(a/b) below is the event U < a/b for a uniform real U in [0, 1) whose binary
# expansion is read lazily: with the first c bits read as the integer w and T = a * 2**c / b,
# w < floor(T) means U < a/b whatever the later bits, w > floor(T) means U >= a/b, and on
# w == floor(T), U < a/b exactly when the rest of U is below T - floor(T), i.e. a fresh
# Bernoulli(((a * 2**c) mod b) / b). Only the comparison with floor(T) varies between the
# versions: exact integers (_bernoulli_ratio_exact, c = 64), an exact 8-bit threshold for one
# fixed ratio (_bernoulli_constant), or float64 with a proven margin for arrays of ratios
# (_bernoulli_from_float, c = 32).
# --------------------------------------------------------------------------------------------


def _bernoulli_ratio_exact(rng: RandomSource, a: int, b: int) -> bool:
    """Bernoulli(a / b) with Python integers, one 64-bit word at a time (any sizes, b >= 1)."""
    while True:
        if a <= 0:
            return False
        if a >= b:
            return True
        w = int(rng.words(1)[0])
        threshold, a = divmod(a << 64, b)
        if w != threshold:
            return w < threshold


def _bernoulli_from_float(
    rng: RandomSource,
    t: npt.NDArray[np.float64],
    exact_ratio: Callable[[int], tuple[int, int]],
) -> BoolArray:
    """Bernoulli(a_i / b_i) per entry, given ``t[i] ≈ T_i = a_i 2**32 / b_i`` in float64.

    ``t`` must be within ``1/2`` of ``T_i``. (The callers are far closer: from the integers
    with at most five roundings of relative size 2**-53 on a value at most 2**32, an error
    below ``5 * 2**-21``; or, in the staircase sampler, within ``2**-4``.) A 32-bit draw ``w``
    is exact in float64 and ``d = fl(w - t)`` adds at most ``2**-21``, so ``d`` is within
    ``1/2 + 2**-21`` of ``w - T_i``. Hence ``d < -2`` implies ``w < T_i - 1``, so
    ``w < floor(T_i)`` (True), and ``d > 2`` implies ``w > T_i`` (False).
    The entries with ``|d| <= 2`` (probability about 2**-30 each) are settled with the exact
    integers ``exact_ratio(i) = (a_i, b_i)``.
    """
    n = t.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.bool_)
    w = _random_halves(rng, n)
    d = w.astype(np.float64)
    np.subtract(d, t, out=d)
    result: BoolArray = d < 0.0
    np.abs(d, out=d)
    if d.min() <= _FLOAT_MARGIN:
        for i in np.flatnonzero(d <= _FLOAT_MARGIN).tolist():
            a_i, b_i = exact_ratio(i)
            threshold, rest = divmod(a_i << 32, b_i)
            w_i = int(w[i])
            if w_i != threshold:
                result[i] = w_i < threshold
            else:
                result[i] = _bernoulli_ratio_exact(rng, rest, b_i)
    return result


def _bernoulli_ratio(rng: RandomSource, a: IntArray, b: IntArray) -> BoolArray:
    """Exact Bernoulli(a / b) per entry, ``0 <= a <= b``, ``b >= 1`` (int64 arrays)."""
    t = a.astype(np.float64)
    t /= b.astype(np.float64)
    t *= _TWO_32_FLOAT  # a power of two: exact
    return _bernoulli_from_float(rng, t, lambda i: (int(a[i]), int(b[i])))


def _bernoulli_constant(rng: RandomSource, n: int, a: int, b: int) -> BoolArray:
    """``n`` draws of Bernoulli(a / b) for one fixed ratio, 8 random bits at a time.

    A byte ``w`` is compared with the exact integer ``floor(256 a / b)``; entries equal to it
    (probability below 1/256) continue with Bernoulli(((256 a) mod b) / b).
    """
    result = np.zeros(n, dtype=np.bool_)
    pending: IntArray | None = None  # None: every entry
    count = n
    while count and a > 0:
        if a >= b:
            result[pending if pending is not None else slice(None)] = True
            break
        threshold, a = divmod(a << 8, b)
        draws = _random_bytes(rng, count)
        decided = draws < threshold
        if pending is None:
            result = decided
        else:
            result[pending] = decided
        if a == 0:
            break
        ties = np.flatnonzero(draws == threshold)
        pending = ties if pending is None else pending[ties]
        count = ties.shape[0]
    return result


def bernoulli_rational(
    rng: RandomSource, numerator: npt.ArrayLike, denominator: npt.ArrayLike
) -> BoolArray:
    """Exact Bernoulli(a / b) draws, one per entry of ``broadcast(numerator, denominator)``.

    Think of random bits as the binary expansion of a uniform real ``U`` in [0, 1) and read
    its first ``c`` bits as the integer ``w``; with ``T = a * 2**c / b``, ``U < a / b`` is
    decided by ``w < floor(T)`` (true), ``w > floor(T)`` (false), and on ``w == floor(T)`` by
    a fresh Bernoulli(((a * 2**c) mod b) / b) for the remaining bits. The first draw has
    ``c = 32`` (half a word) and is compared in float64, trusted only outside a margin that
    provably covers every rounding (see ``_bernoulli_from_float``); draws near the threshold
    (probability about 2**-30) are decided with exact integers, continuing with 64-bit words
    on a tie. ``a == 0`` gives False and ``a == b`` True without drawing.

    Args:
        rng: the source of random words.
        numerator: integers ``a`` with ``0 <= a <= b``.
        denominator: integers ``b`` with ``1 <= b < 2**62``.

    Returns:
        A boolean array of the broadcast shape.
    """
    a, b = _ratio_arrays(numerator, denominator)
    if a.size and (int(a.min()) < 0 or bool((a > b).any())):
        raise ConfigurationError("numerator must satisfy 0 <= a <= b in every entry")
    flat_a = a.ravel()
    flat_b = b.ravel()
    result = flat_a == flat_b  # a == b: True; a == 0: False (b >= 1)
    todo = np.flatnonzero((flat_a != 0) & ~result)
    result[todo] = _bernoulli_ratio(rng, flat_a[todo], flat_b[todo])
    shaped: BoolArray = result.reshape(a.shape)
    return shaped


# --------------------------------------------------------------------------------------------
# Bernoulli(exp(-a / b))
# --------------------------------------------------------------------------------------------


def _bernoulli_exp_fraction_exact(rng: RandomSource, r: int, b: int, k: int = 1) -> bool:
    """CKS Algorithm 1 with Python integers for exp(-r/b), 0 <= r <= b, continuing at K = k."""
    while _bernoulli_ratio_exact(rng, r, b * k):
        k += 1
    return k % 2 == 1


def _bernoulli_exp_exact(rng: RandomSource, a: int, b: int) -> bool:
    """Bernoulli(exp(-a/b)) with Python integers (any sizes, a >= 0, b >= 1)."""
    q, r = divmod(a, b)
    for _ in range(q):  # exp(-q): q Bernoulli(exp(-1)) successes; stops at the first failure
        if not _bernoulli_exp_fraction_exact(rng, 1, 1):
            return False
    return _bernoulli_exp_fraction_exact(rng, r, b)


def _bernoulli_exp_fraction(rng: RandomSource, r: IntArray, b: IntArray | int) -> BoolArray:
    """Exact Bernoulli(exp(-r / b)) per entry, ``0 <= r <= b``, by CKS Algorithm 1.

    ``K = 1``; while Bernoulli(γ/K) succeeds, ``K += 1``; return ``K`` odd. With γ = r/b,
    ``P(K > k) = γ^k / k!``, so ``P(K odd) = Σ_{k>=0} (-γ)^k / k! = e^{-γ}``. All entries
    start together, so in round ``K`` every still-active entry draws Bernoulli(r / (b K)), and
    only the active entries are touched. The product ``b K`` is never formed in int64 (the
    float threshold is ``r * (2**32 / (b K))`` and the exact fallback uses Python integers),
    so no ``K`` can overflow.
    """
    n = r.shape[0]
    result = np.ones(n, dtype=np.bool_)  # entries that stop in round K = 1
    if n == 0:
        return result
    r_float = r.astype(np.float64)
    b_float = None if isinstance(b, int) else b.astype(np.float64)
    active: IntArray | None = None  # None: every entry
    k = 1
    while True:
        r_active = r_float if active is None else r_float[active]
        if isinstance(b, int):
            t = r_active * (_TWO_32_FLOAT / float(b * k))
        else:
            assert b_float is not None
            t = r_active / (b_float if active is None else b_float[active])
            t *= _TWO_32_FLOAT / k
        go_on = _bernoulli_from_float(rng, t, _exact_ratio_lookup(r, b, k, active))
        survivors = np.flatnonzero(go_on)
        active = survivors if active is None else active[survivors]
        if not active.size:
            return result
        k += 1
        result[active] = k % 2 == 1  # correct if they stop in round k; else overwritten


def _exact_ratio_lookup(
    r: IntArray, b: IntArray | int, k: int, active: IntArray | None
) -> Callable[[int], tuple[int, int]]:
    """``i -> (r_j, b_j * k)`` as Python integers, ``j`` the ``i``-th active entry."""

    def lookup(i: int) -> tuple[int, int]:
        j = i if active is None else int(active[i])
        b_j = b if isinstance(b, int) else int(b[j])
        return int(r[j]), b_j * k

    return lookup


def _bernoulli_exp_minus_one(rng: RandomSource, n: int) -> BoolArray:
    """``n`` draws of Bernoulli(exp(-1)): Algorithm 1 with γ = 1 and exact 1/K thresholds.

    Bernoulli(1/1) always succeeds, so the loop starts at ``K = 2``.
    """
    result = np.zeros(n, dtype=np.bool_)  # entries that stop in round K = 2
    active: IntArray | None = None
    count = n
    k = 2
    while count:
        go_on = np.flatnonzero(_bernoulli_constant(rng, count, 1, k))
        active = go_on if active is None else active[go_on]
        count = active.shape[0]
        k += 1
        if count:
            result[active] = k % 2 == 1
    return result


def _survive_exp_minus_one(rng: RandomSource, counts: IntArray) -> BoolArray:
    """Per entry, whether ``counts[i]`` independent Bernoulli(exp(-1)) draws all succeed.

    That event has probability ``exp(-counts[i])``. Each round draws once for the entries
    still alive and not yet done and kills about 63% of them, so the loop is short.
    """
    alive = np.ones(counts.shape[0], dtype=np.bool_)
    pending = np.flatnonzero(counts > 0)
    rounds = 0
    while pending.size:
        success = _bernoulli_exp_minus_one(rng, pending.shape[0])
        alive[pending[~success]] = False
        pending = pending[np.flatnonzero(success)]
        rounds += 1
        pending = pending[np.flatnonzero(counts[pending] > rounds)]
    return alive


def _bernoulli_exp(rng: RandomSource, a: IntArray, b: IntArray | int) -> BoolArray:
    """Exact Bernoulli(exp(-a / b)) per entry, ``a >= 0``, ``b >= 1``.

    With ``a = q b + r``: ``exp(-a/b) = exp(-1)^q * exp(-r/b)``, a conjunction of independent
    Bernoulli(exp(-1)) draws and one Bernoulli(exp(-r/b)) by Algorithm 1.
    """
    q, r = np.divmod(a, b)
    result = _survive_exp_minus_one(rng, q)
    live = np.flatnonzero(result & (r != 0))  # r == 0 gives exp(0) = 1
    b_live: IntArray | int = b if isinstance(b, int) else b[live]
    result[live] = _bernoulli_exp_fraction(rng, r[live], b_live)
    return result


def bernoulli_exp(
    rng: RandomSource, numerator: npt.ArrayLike, denominator: npt.ArrayLike
) -> BoolArray:
    """Exact Bernoulli(exp(-a / b)) draws, one per entry of ``broadcast(numerator, denominator)``.

    γ = a / b is split as ``q + r/b`` with ``q = a // b``; the draw succeeds when ``q``
    independent Bernoulli(exp(-1)) draws all succeed and one Bernoulli(exp(-r/b)) does
    (``exp(-γ) = exp(-1)^q exp(-r/b)``). Bernoulli(exp(-g)) for g in [0, 1] is CKS Algorithm 1:
    ``K = 1``; while Bernoulli(g/K): ``K += 1``; succeed when ``K`` is odd
    (``P(K odd) = Σ_k (-g)^k / k! = e^{-g}``), each Bernoulli(g/K) = Bernoulli(r / (b K)) drawn
    exactly by :func:`bernoulli_rational`'s method. Only still-undecided entries are worked on.

    Args:
        rng: the source of random words.
        numerator: integers ``a >= 0`` (int64).
        denominator: integers ``b`` with ``1 <= b < 2**62``.

    Returns:
        A boolean array of the broadcast shape.
    """
    a, b = _ratio_arrays(numerator, denominator)
    if a.size and int(a.min()) < 0:
        raise ConfigurationError("numerator must be >= 0 in every entry")
    result = _bernoulli_exp(rng, a.ravel().copy(), b.ravel().copy())
    return result.reshape(a.shape)


def _collect(
    size: int,
    acceptance: float,
    draw: Callable[[int], IntArray],
    max_batch: int = _MAX_BATCH,
    out: IntArray | None = None,
) -> IntArray:
    """Calls ``draw(m)`` on batches sized for ``acceptance`` until ``size`` values are in hand,
    written to ``out`` (``size`` int64 values) if given, else to a new array.

    A batch holds at most ``_MAX_BATCH`` candidates: working sets of a few MB run markedly
    faster than one huge batch (about 1.7x at a million samples on the reference machine).

    Accepted values are i.i.d. and kept in the order drawn; keeping the first ``size`` depends
    only on how many were accepted, never on their values, so no bias is introduced.
    """
    result = np.empty(size, dtype=np.int64) if out is None else out
    have = 0
    while have < size:
        need = size - have
        m = min(max_batch, math.ceil((need + 6.0 * math.sqrt(need) + 16.0) / acceptance))
        batch = draw(m)
        take = min(batch.shape[0], need)
        result[have : have + take] = batch[:take]
        have += take
    return result


# --------------------------------------------------------------------------------------------
# exp(-x) to any precision, for the exact fallbacks and the threshold table
# --------------------------------------------------------------------------------------------


def _exp_minus_bounds(x: Fraction, prec: int) -> tuple[int, int]:
    """Integers ``lo <= 2**prec * exp(-x) <= hi`` for a rational ``x >= 0``.

    ``exp(-x) = exp(-y)**(2**s)`` with ``y = x / 2**s <= 1/2``. The Taylor series of
    ``exp(-y)`` alternates with decreasing terms, so two consecutive partial sums bracket it;
    they are rounded outwards to ``p = prec + s + 8`` bits and squared ``s`` times, rounding
    the lower bound down and the upper bound up. Every step keeps ``lo <= value <= hi``; the
    width, a few units at ``prec`` bits, only decides how often a caller must ask again with
    more bits.
    """
    s = 0
    y = x
    while y > Fraction(1, 2):
        y /= 2
        s += 1
    p = prec + s + 8
    resolution = Fraction(1, 1 << (p + 2))
    term = Fraction(1)
    partial = Fraction(1)
    previous = partial
    k = 0
    while True:
        k += 1
        term = term * y / k
        previous = partial
        partial = partial - term if k % 2 else partial + term
        if term < resolution:
            break
    lower, upper = min(previous, partial), max(previous, partial)
    lo = (lower.numerator << p) // lower.denominator
    hi = -((-upper.numerator << p) // upper.denominator)
    for _ in range(s):
        lo = (lo * lo) >> p
        hi = -((-hi * hi) >> p)
    shift = p - prec
    return lo >> shift, -((-hi) >> shift)


class _LazyUniform:
    """A uniform real ``U`` in [0, 1) of which the first ``bits`` bits, ``known``, are drawn;
    further bits come from ``rng`` when a comparison needs them (and are kept, so several
    comparisons see the same ``U``)."""

    __slots__ = ("bits", "known", "rng")

    def __init__(self, rng: RandomSource, known: int, bits: int) -> None:
        self.rng = rng
        self.known = int(known)
        self.bits = bits

    def below_exp(self, x: Fraction) -> bool:
        """Whether ``U < exp(-x)``, exactly (``x >= 0`` rational)."""
        while True:
            lo, hi = _exp_minus_bounds(x, self.bits)
            # U lies in [known, known + 1) / 2**bits and exp(-x) in [lo, hi] / 2**bits
            if self.known + 1 <= lo:
                return True
            if self.known >= hi:
                return False
            self.known = (self.known << 64) | int(self.rng.words(1)[0])
            self.bits += 64


@functools.cache
def _exp_thresholds() -> IntArray:
    """``T[j] = floor(2**32 exp(-j/64))`` for ``j = 0 .. J``, except ``T[0] = 2**32 - 1`` (a
    32-bit draw equal to it is settled exactly, as every tie is). ``J`` is the first multiple
    of 4 with ``T[J] == 0``, i.e. ``exp(-J/64) < 2**-32`` (J = 1420).

    Computed once, on first use, by exact interval products of ``exp(-1/64)`` (64 guard bits);
    a floor the interval leaves open (never seen) is settled with :func:`_exp_minus_bounds`.
    """
    guard = 64
    p = _DRAW_BITS + guard
    step_lo, step_hi = _exp_minus_bounds(Fraction(1, 64), p)
    lo, hi = 1 << p, 1 << p
    values = [(1 << _DRAW_BITS) - 1]
    j = 0
    while True:
        j += 1
        lo = (lo * step_lo) >> p
        hi = -((-hi * step_hi) >> p)
        floor_lo, floor_hi = lo >> guard, hi >> guard
        extra = guard
        while floor_lo != floor_hi:  # exp(-j/64) is irrational: more bits settle it
            extra += 64
            lo_j, hi_j = _exp_minus_bounds(Fraction(j, 64), _DRAW_BITS + extra)
            floor_lo, floor_hi = lo_j >> extra, hi_j >> extra
        values.append(floor_lo)
        if floor_lo == 0 and j % 4 == 0:
            break
    table = np.array(values, dtype=np.int64)
    table.setflags(write=False)
    return table


class _WordPool:
    """A :class:`RandomSource` that hands out the words of large requests to ``rng``.

    Each request to ``rng`` is ``_POOL_WORDS`` words (or the caller's count, if larger); the
    words are handed out in order, each once, so they are exactly as uniform and independent
    as ``rng``'s. It saves the fixed cost of a request (a fresh AES key, or a system call for
    small ones: some 10 µs each) for the many small draws of the rejection loops.
    """

    __slots__ = ("_block", "_position", "_rng")

    def __init__(self, rng: RandomSource) -> None:
        self._rng = rng
        self._block = np.zeros(0, dtype=np.uint64)
        self._position = 0

    @property
    def is_secure(self) -> bool:
        return self._rng.is_secure

    def remaining(self) -> npt.NDArray[np.uint64]:
        """The words the next requests would be served from, without using them (the compiled
        staircase pass reads its later rounds' words here, then :meth:`advance`)."""
        return self._block[self._position :]

    def advance(self, n: int) -> None:
        """Marks the first ``n`` words of :meth:`remaining` as used."""
        if not 0 <= n <= self._block.shape[0] - self._position:
            raise ValueError(f"cannot advance the pool by {n} words")
        self._position += n

    def words(self, n: int) -> npt.NDArray[np.uint64]:
        n = int(n)
        start = self._position
        if start + n > self._block.shape[0]:
            if n >= _POOL_WORDS:
                return self._rng.words(n)
            self._block = self._rng.words(_POOL_WORDS)  # the rest of the old block is unused
            start = 0
        self._position = start + n
        return self._block[start : start + n]
