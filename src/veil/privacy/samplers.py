"""Exact samplers for integer noise, vectorised with numpy and driven by a :class:`RandomSource`.

The samplers follow Canonne, Kamath and Steinke, *The Discrete Gaussian for Differential
Privacy* (NeurIPS 2020; arXiv:2004.00010), Algorithms 1 to 3:

* :func:`discrete_laplace` draws ``x`` in ℤ with ``P(x) ∝ exp(-|x| / scale)``;
* :func:`discrete_gaussian` draws ``x`` in ℤ with ``P(x) ∝ exp(-x² / (2 σ²))``;
* :func:`bernoulli_rational`, :func:`bernoulli_exp` and :func:`uniform_below` are the exact
  building blocks they are made of, public because mechanisms and tests use them directly.

**Exactness.** Every decision that shapes an output is made on integers. Random input arrives as
uniform 64-bit words; a scale is first turned into an exact rational (rounded up, see
:func:`rational_upper_bound`), and from there on the only arithmetic is on integers, except
where floating point is provably harmless: a Bernoulli(a/b) draw for an array of ratios
compares a 32-bit random draw with ``a * 2**32 / b`` in float64 and accepts the float verdict
only when the two differ by more than 2, while the worst error is below 1/2; every other case
(probability about 2**-30 per draw) is settled with exact Python integers. The discrete
Gaussian for σ >= 16 (a staircase proposal, see :func:`discrete_gaussian`) compares 32-bit
draws with a table of exact integer thresholds ``floor(2**32 exp(-j/64))``, uses a float
logarithm only to *propose* a value that integer comparisons then confirm, and computes its
acceptance exponent in float64 with a proven error bound that the margins cover; ties and
draws inside a margin are settled exactly, reading more random bits and bounding ``exp`` with
rational interval arithmetic (:func:`_exp_minus_bounds`). Entries whose integer
intermediates would overflow int64 are likewise moved to exact Python integers or decided by an
exact bound. The outputs therefore have exactly the stated distributions, given uniform words.

**Randomness.** Every function takes the :class:`~veil.privacy.random.RandomSource` as its first
argument and has no default: the mechanisms pass a :class:`~veil.privacy.random.SecureRandom`
(AES-CTR under a fresh key); :class:`~veil.privacy.random.InsecureSeededRandom` is for tests.

**Timing.** A batch is computed as whole-array passes over the candidates followed by passes
over shrinking sets of still-undecided entries (rejection loops). The number and length of those
passes depend on the batch as a whole (for example on its largest geometric count), not on the
value of any single output, so the running time reveals little about an individual noise value.
It is not constant-time: the rare exact-integer fallbacks are per-entry Python code, and the
total time of a batch is itself random.
"""

from __future__ import annotations

import functools
import math
import operator
import warnings
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError
from veil.privacy import _kernel
from veil.privacy.random import InsecureSeededRandom, RandomSource

__all__ = [
    "bernoulli_exp",
    "bernoulli_rational",
    "discrete_gaussian",
    "discrete_laplace",
    "rational_upper_bound",
    "uniform_below",
]

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


# --------------------------------------------------------------------------------------------
# Discrete Laplace
# --------------------------------------------------------------------------------------------


def _geometric_exp_minus_one(rng: RandomSource, n: int) -> IntArray:
    """Per entry, the number of Bernoulli(exp(-1)) successes before the first failure.

    ``P(V = v) = (1 - e^{-1}) e^{-v}``.
    """
    success = _bernoulli_exp_minus_one(rng, n)
    counts = success.astype(np.int64)
    active = np.flatnonzero(success)
    while active.size:
        active = active[np.flatnonzero(_bernoulli_exp_minus_one(rng, active.shape[0]))]
        counts[active] += 1
    return counts


def _laplace_candidates(rng: RandomSource, m: int, num: int, den: int) -> IntArray:
    """One round of CKS Algorithm 2 on ``m`` candidates: the accepted draws, in order.

    Discrete Laplace with scale ``num / den``, with (s, t) = (den, num) in CKS's notation:
    ``U`` uniform on {0, ..., num-1}; reject unless Bernoulli(exp(-U/num)); ``V`` the number of
    Bernoulli(exp(-1)) successes before a failure; ``X = U + num V``, which is geometric:
    ``P(X = x) ∝ exp(-x/num)``; ``Y = X // den``, geometric with ``P(Y = y) ∝ exp(-y den/num)``;
    a fair bit ``B``; reject if ``B`` and ``Y == 0`` (so 0 is not counted twice); return
    ``(1 - 2B) Y``.
    """
    u = _uniform_below(rng, m, num)
    kept = np.flatnonzero(_bernoulli_exp_fraction(rng, u, num))
    u = u[kept]
    v = _geometric_exp_minus_one(rng, u.shape[0])
    safe_v = (_INT64_MAX - (num - 1)) // num  # u + num * v fits int64 for v <= safe_v
    if u.size and int(v.max()) > safe_v:  # probability below exp(-2**10): exact Python path
        y = np.empty(u.shape[0], dtype=np.int64)
        for i, (ui, vi) in enumerate(zip(u.tolist(), v.tolist(), strict=True)):
            yi = (ui + num * vi) // den
            if yi > _INT64_MAX:
                raise OverflowError("a discrete Laplace draw exceeded the int64 range")
            y[i] = yi
    else:
        y = (u + num * v) // den
    negative = _random_bits(rng, y.shape[0])
    accept = np.flatnonzero(~(negative & (y == 0)))
    signed: IntArray = np.where(negative, -y, y)
    return signed[accept]


def _laplace_acceptance(num: int, den: int) -> float:
    """The probability that one candidate of ``_laplace_candidates`` is accepted (float)."""
    p_keep = -math.expm1(-1.0) / (num * -math.expm1(-1.0 / num))
    p_zero = -math.expm1(-den / num)
    return p_keep * (1.0 - p_zero / 2.0)


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


def _laplace_rational(scale: float | Fraction) -> tuple[int, int]:
    if isinstance(scale, Fraction):
        if scale <= 0:
            raise ConfigurationError(f"scale must be positive, found {scale}")
        if scale.numerator < 1 << _NUMERATOR_BITS and scale.denominator < _MAX_DENOMINATOR:
            return scale.numerator, scale.denominator
        return rational_upper_bound(scale)
    if isinstance(scale, bool) or not isinstance(scale, float | int):
        raise ConfigurationError(
            f"scale must be a float or Fraction, found {type(scale).__name__} {scale!r}"
        )
    return rational_upper_bound(float(scale))


def discrete_laplace(rng: RandomSource, size: int, *, scale: float | Fraction) -> IntArray:
    """``size`` i.i.d. draws from the discrete Laplace distribution on ℤ with this ``scale``.

    ``P(x) = (1 - e^{-1/s}) / (1 + e^{-1/s}) * exp(-|x| / s)``, ``s = scale``; the variance is
    ``2 e^{-1/s} / (1 - e^{-1/s})²``. Adding it to an integer query of L1 sensitivity Δ is
    (Δ/s)-differentially private.

    A float ``scale`` is replaced by the exact rational ``num / den >= scale`` of
    :func:`rational_upper_bound` (relative rounding below 4.4e-16 for scales from 2**-11 to
    2**51, below 1e-9 down to 2**-32; larger noise is the safe direction). A
    :class:`~fractions.Fraction` is used exactly when its numerator is below 2**52 and its
    denominator below 2**62, and rounded up the same way otherwise.

    The draws come from CKS Algorithm 2 with (s, t) = (den, num), run on vectorised batches
    sized from the acceptance probability (about 0.6 at typical scales and never below 0.31);
    accepted draws are kept in order until ``size`` are collected.

    Raises:
        ConfigurationError: for a negative ``size`` or a scale that is not finite and positive,
            or lies outside [2**-32, 2**52 - 1].
    """
    n = _check_size(size)
    num, den = _laplace_rational(scale)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    source = _WordPool(rng)
    return _collect(
        n, _laplace_acceptance(num, den), lambda m: _laplace_candidates(source, m, num, den)
    )


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


# --------------------------------------------------------------------------------------------
# Discrete Gaussian for sigma >= 16: a staircase proposal and one exp(-γ) test per candidate
# --------------------------------------------------------------------------------------------

# The staircase sampler is used from this sigma on (K = round(σ/16) >= 1).
_STAIRCASE_MIN_SIGMA = 16.0
# Steps of the staircase per unit of exp: P(V >= v) = exp(-v/16), thresholds T[4v].
_STEPS_PER_E = 16
# Absolute error bound of the float γ, as a multiple of (1 + γ): below 2**-49 (see
# _StaircasePlan); the slack of 2**-43 leaves room for the two roundings of γ_lo itself.
_GAMMA_SLACK = 2.0**-43


class _StaircasePlan:
    """Exact integers and float constants for :func:`_staircase_candidates` with σ² = n/d.

    ``K = round(σ/16)``, ``t = 16 K`` and ``τ = σ²/t = n / (16 K d)``. A candidate is
    ``y = ±(K V + R)`` with ``P(V >= v) = exp(-v/16)``, ``R`` uniform on {0, ..., K-1} and a fair
    sign (``-0`` rejected); it is kept with probability ``exp(-γ)``,
    ``γ = (|y| - τ)²/(2σ²) + R/t = ((16 K d |y| - n)² + 32 K d n R) / (512 K² d n)``.
    """

    __slots__ = (
        "acceptance",
        "d",
        "gamma_den",
        "half_inverse_variance",
        "inverse_t",
        "k",
        "n",
        "reject_below",
        "tau",
    )

    def __init__(self, n: int, d: int) -> None:
        sigma2 = n / d
        sigma = math.sqrt(sigma2)
        self.n = n
        self.d = d
        self.k = max(1, round(sigma / _STEPS_PER_E))
        k = self.k
        self.gamma_den = 512 * k * k * d * n
        # Correctly rounded (Fraction -> float): each within a relative 2**-53.
        self.tau = float(Fraction(n, _STEPS_PER_E * k * d))
        self.half_inverse_variance = float(Fraction(d, 2 * n))
        self.inverse_t = float(Fraction(1, _STEPS_PER_E * k))
        # Multiply-and-shift draws whose low part is below this are rejected (Lemire).
        self.reject_below = (1 << 31) % k
        tau = self.tau
        rho = math.exp(-1.0 / _STEPS_PER_E)
        z_gauss = math.sqrt(2.0 * math.pi * sigma2)
        self.acceptance = (
            (1.0 - self.reject_below / 2.0**31)
            * z_gauss
            * math.exp(-(tau * tau) / (2.0 * sigma2))
            * (1.0 - rho)
            / (2.0 * k)
        )

    def gamma(self, magnitude: int, r: int) -> Fraction:
        """The exact γ of a candidate of this magnitude and remainder."""
        k, n, d = self.k, self.n, self.d
        e = _STEPS_PER_E * k * d * magnitude - n
        return Fraction(e * e + 2 * _STEPS_PER_E * k * d * n * r, self.gamma_den)


def _residual_exp(
    rng: RandomSource,
    delta: npt.NDArray[np.float64],
    exact: Callable[[int], tuple[int, int]],
    *,
    start: int = 1,
) -> BoolArray:
    """CKS Algorithm 1 for exp(-δ_i), δ_i in [0, 1], from floats, starting at ``K = start``.

    ``K = start``; while Bernoulli(δ/K): ``K += 1``; the result is whether ``K`` is odd (with
    ``start = 1``, a Bernoulli(exp(-δ)) draw). ``delta[i]`` must be within ``2**-36`` of δ_i
    and ``exact(i)`` give δ_i as a ratio of Python integers. In round ``K`` the still-active
    entries draw Bernoulli(δ/K) through :func:`_bernoulli_from_float` with
    ``t = δ̃ 2**32 / K``, within ``2**-4 + 2**-21`` of the true ``δ 2**32 / K``: inside the
    margin its proof allows (an error below 1).
    """
    n = delta.shape[0]
    result = np.full(n, start % 2 == 1, dtype=np.bool_)
    active: IntArray | None = None
    k = start
    while True:
        d_active = delta if active is None else delta[active]
        t = d_active * (_TWO_32_FLOAT / k)

        def lookup(i: int, active: IntArray | None = active, k: int = k) -> tuple[int, int]:
            a, b = exact(i if active is None else int(active[i]))
            return a, b * k

        go_on = np.flatnonzero(_bernoulli_from_float(rng, t, lookup))
        active = go_on if active is None else active[go_on]
        if not active.size:
            return result
        k += 1
        result[active] = k % 2 == 1


def _bernoulli_ratio_exact_from(rng: RandomSource, w: int, bits: int, a: int, b: int) -> bool:
    """Bernoulli(a / b), ``0 <= a <= b``, of which the first ``bits`` random bits are ``w``."""
    threshold, rest = divmod(a << bits, b)
    if w != threshold:
        return w < threshold
    return _bernoulli_ratio_exact(rng, rest, b)


@functools.cache
def _staircase_tables() -> tuple[
    npt.NDArray[np.uint32], npt.NDArray[np.uint32], npt.NDArray[np.uint16]
]:
    """The thresholds ``T[j]`` as uint32 (the draws are compared as uint32), those of V
    (``T[4v]``: ``P(V >= v) = exp(-v/16)``), and the compiled pass's table of where V starts."""
    table32 = _exp_thresholds().astype(np.uint32)
    v_thresholds = np.ascontiguousarray(table32[::4])
    for array in (table32, v_thresholds):
        array.setflags(write=False)
    return table32, v_thresholds, _kernel.v_start_table(v_thresholds)


def _finish_compiled(
    rng: RandomSource, compiled: _kernel.StaircasePass, plan: _StaircasePlan
) -> IntArray:
    """The accepted values of a batch whose candidate pass ran compiled but left the later
    rounds of exp(-δ) to Python (a draw within the float margin, or words that ran out): its
    pending entries go through those rounds exactly as in :func:`_staircase_candidates`. (The
    values may be a view of the pass's buffers: the caller copies them before the next batch.)"""
    values = compiled.values
    if not compiled.index.size:
        return values

    def exact_later(i: int) -> tuple[int, int]:
        residual = plan.gamma(abs(int(values[compiled.index[i]])), int(compiled.r[i])) - Fraction(
            int(compiled.j[i]), 64
        )
        return residual.numerator, residual.denominator

    survive = _residual_exp(rng, compiled.delta, exact_later, start=2)
    if survive.all():
        return values
    kept = np.ones(values.shape[0], dtype=np.bool_)
    kept[compiled.index[~survive]] = False
    return values[kept]


@functools.cache
def _compiled_pass_agrees() -> bool:
    """Whether the compiled pass gives numpy's values on a fixed seeded run of 8 batches (σ =
    1000.5, then 524,739; some 190 candidates reach the later rounds of exp(-δ)), checked once
    per process before it is used: a build that decides any of those candidates differently
    from numpy (another compiler or CPU) is then not used. (Differences of an ulp that flip no
    decision go unseen; the proven margins cover them.) False without the pass."""
    if not _kernel.available():
        return False
    for sigma, seed in ((1000.5, 2026), (524_739.142, 1124)):
        plan = _StaircasePlan(*rational_upper_bound(Fraction(sigma) ** 2))
        compiled_rng = _WordPool(InsecureSeededRandom(seed))
        numpy_rng = _WordPool(InsecureSeededRandom(seed))
        for _ in range(4):
            compiled = _staircase_candidates(compiled_rng, 4096, plan, compiled=True)
            reference = _staircase_candidates(numpy_rng, 4096, plan, compiled=False)
            if not np.array_equal(compiled, reference):
                warnings.warn(
                    f"veil: the compiled sampler pass ({_kernel.LIBRARY.name}) disagrees with "
                    "numpy on this machine and is not used; please report it",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return False
    return True


def _staircase_candidates(
    rng: RandomSource, m: int, plan: _StaircasePlan, *, compiled: bool | None = None
) -> IntArray:
    """``m`` candidates of the staircase proposal, each kept with probability exp(-γ): the
    accepted values, in order. See :func:`discrete_gaussian` for the proof.

    Each candidate takes four 32-bit draws from one request: one for ``V``, one for ``R`` and
    the sign, one against the threshold ``T[j]`` and one for the first round of the residual
    ``exp(-δ)``. Every decision is a comparison of a draw with an exact integer threshold, or
    with a float threshold outside a proven margin; a tie, or a draw inside the margin, is
    settled exactly with Python integers (about 2**-31 per comparison; the float32 guess of
    ``V`` goes unconfirmed about once in 2**20 candidates, and that path counts up from the
    thresholds above the draw).

    ``compiled``: whether to run the candidate pass compiled (``_staircase.c``); by default,
    whenever it is built, not switched off, and agrees with numpy (:func:`_compiled_pass_agrees`).
    Either way the values are the same.
    """
    table = _exp_thresholds()
    table32, v_thresholds, v_start = _staircase_tables()
    j_max = table.shape[0] - 1
    v_cap = v_thresholds.shape[0] - 2
    draws = rng.words(2 * m).view(np.uint32)
    if compiled is None:
        compiled = _kernel.available() and _compiled_pass_agrees()
    passed = None
    if compiled:
        # The later rounds of exp(-δ) take their words from the pool's block, where
        # _residual_exp would take them; the pass uses them only if they suffice.
        pool = rng if isinstance(rng, _WordPool) else None
        passed = _kernel.staircase_pass(
            draws,
            m,
            k=plan.k,
            reject_below=plan.reject_below,
            tau=plan.tau,
            half_inverse_variance=plan.half_inverse_variance,
            inverse_t=plan.inverse_t,
            j_scale=64.0 * (1.0 - _GAMMA_SLACK),
            j_offset=64.0 * _GAMMA_SLACK,
            table=table32,
            v_thresholds=v_thresholds,
            v_start=v_start,
            later=None if pool is None else pool.remaining(),
        )
    if passed is not None:
        if passed.later_used < 0:
            return _finish_compiled(rng, passed, plan)
        if pool is not None:
            pool.advance(passed.later_used)
        return passed.values
    v_bits = draws[:m]
    r_bits = draws[m : 2 * m].astype(np.int64)
    first_bits = draws[2 * m : 3 * m]
    residual_draw = draws[3 * m :].astype(np.float64)

    # V: the number of v >= 1 with U < exp(-v/16), U's first 32 bits v_bits. A float32
    # logarithm proposes V; integer comparisons with the thresholds confirm it; the entries they
    # do not confirm (a tie, or a guess off by one next to a threshold) are settled exactly.
    guess = v_bits.astype(np.float32)
    guess += np.float32(0.5)
    guess *= np.float32(2.0**-_DRAW_BITS)
    np.log(guess, out=guess)
    guess *= np.float32(-_STEPS_PER_E)
    np.minimum(guess, np.float32(v_cap), out=guess)  # the guess is >= 0
    v = guess.astype(np.int64)  # truncation is the floor here
    confirmed = v_bits < v_thresholds[v]
    confirmed &= v_bits > v_thresholds[v + 1]
    if not confirmed.all():
        above = v_thresholds[1:].astype(np.int64)
        for i in np.flatnonzero(~confirmed).tolist():
            w = int(v_bits[i])
            u = _LazyUniform(rng, w, _DRAW_BITS)
            # U < exp(-v/16) for every v whose threshold lies above w (w < T[4v]): count from
            # there, so only the threshold w ties (or those past the table) need more bits.
            # Counting from 0 cost one exact exp bound per step: some 0.1 s for a V of 200.
            count = int(np.count_nonzero(above > w))
            while u.below_exp(Fraction(count + 1, _STEPS_PER_E)):
                count += 1
            v[i] = count

    # R uniform below K from the low 31 bits by multiply-and-shift (Lemire): R = (x K) >> 31,
    # rejecting the (2**31 mod K) of every 2**31 values of x whose low part (x K) mod 2**31 is
    # below 2**31 mod K; the sign from the top bit.
    negative = r_bits >> 31
    r_bits &= 0x7FFFFFFF
    r_bits *= plan.k  # below 2**53
    valid = (r_bits & 0x7FFFFFFF) >= plan.reject_below
    r = r_bits
    r >>= 31
    magnitude = v
    magnitude *= plan.k
    magnitude += r
    zero = np.flatnonzero(magnitude == 0)
    valid[zero[negative[zero] == 1]] = False  # -0 is rejected

    # γ in float64 (error below 2**-49 (1 + γ)), then exp(-γ) = exp(-j/64) exp(-δ) with
    # j = floor(64 γ_lo) for a lower bound γ_lo <= γ, so δ = γ - j/64 >= 0.
    gamma = magnitude.astype(np.float64)
    gamma -= plan.tau
    np.square(gamma, out=gamma)
    gamma *= plan.half_inverse_variance
    scaled = r.astype(np.float64)
    scaled *= plan.inverse_t
    gamma += scaled
    np.multiply(gamma, 64.0 * (1.0 - _GAMMA_SLACK), out=scaled)
    scaled -= 64.0 * _GAMMA_SLACK
    np.floor(scaled, out=scaled)
    np.maximum(scaled, 0.0, out=scaled)
    np.minimum(scaled, float(j_max), out=scaled)
    j = scaled.astype(np.int64)
    delta = gamma
    scaled *= 1.0 / 64.0
    delta -= scaled
    clamped = np.flatnonzero(j == j_max)
    delta[clamped] = 0.0  # exp(-j_max/64) < 2**-32 decides these alone (see below)

    def exact_gamma(i: int) -> Fraction:
        return plan.gamma(int(magnitude[i]), int(r[i]))

    def exact_delta(i: int) -> tuple[int, int]:
        if j[i] == j_max:
            return 0, 1
        residual = exact_gamma(i) - Fraction(int(j[i]), 64)
        return residual.numerator, residual.denominator

    # First factor: U' < exp(-j/64), U' from 32 bits against T[j]; ties settled exactly.
    threshold = table32[j]
    keep = first_bits < threshold
    for i in np.flatnonzero(first_bits == threshold).tolist():
        x = exact_gamma(i) if j[i] == j_max else Fraction(int(j[i]), 64)
        keep[i] = _LazyUniform(rng, int(first_bits[i]), _DRAW_BITS).below_exp(x)
    keep &= valid

    # Residual exp(-δ) by CKS Algorithm 1, its first round inline: Bernoulli(δ) is the draw
    # w < δ 2**32, decided in float64 outside the margin of _bernoulli_from_float; the few
    # entries that succeed (probability δ < 1/64) go on to the later rounds.
    gap = residual_draw
    delta *= _TWO_32_FLOAT
    gap -= delta
    go_on = gap < 0.0
    np.abs(gap, out=gap)
    if gap.min() <= _FLOAT_MARGIN:
        for i in np.flatnonzero(gap <= _FLOAT_MARGIN).tolist():
            a_i, b_i = exact_delta(i)
            go_on[i] = _bernoulli_ratio_exact_from(rng, int(draws[3 * m + i]), 32, a_i, b_i)
    later = np.flatnonzero(go_on & keep)  # a candidate already rejected needs no more rounds
    if later.size:

        def exact_later(i: int) -> tuple[int, int]:
            return exact_delta(int(later[i]))

        # Having passed round 1, an entry continues at K = 2; it is kept when K ends odd.
        delta_later = delta[later]
        delta_later *= 1.0 / _TWO_32_FLOAT
        keep[later] &= _residual_exp(rng, delta_later, exact_later, start=2)

    negative *= -2
    negative += 1
    magnitude *= negative
    return magnitude[keep]


# --------------------------------------------------------------------------------------------
# Discrete Gaussian
# --------------------------------------------------------------------------------------------


class _GaussianPlan:
    """Exact integers for CKS Algorithm 3 with σ² = n/d and proposal offset τ = P / 2**k.

    The proposal is discrete Laplace with scale ``t = σ²/τ`` (exactly ``lap_num / lap_den``),
    and a proposal ``Y`` is kept with probability ``exp(-γ)``,
    ``γ = (|Y| - τ)² / (2σ²) = (2**k |Y| - P)² * fa / fb`` with ``fa / fb = d / (2 n 4**k)``.
    """

    __slots__ = ("acceptance", "fa", "fb", "lap_den", "lap_num", "offset", "shift")

    def __init__(self, n: int, d: int, offset: int, shift: int) -> None:
        self.offset = offset  # P
        self.shift = shift  # k
        scale = Fraction(n << shift, d * offset)
        self.lap_num = scale.numerator
        self.lap_den = scale.denominator
        ratio = Fraction(d, 2 * n << (2 * shift))
        self.fa = ratio.numerator
        self.fb = ratio.denominator
        sigma2 = n / d
        tau = offset / (1 << shift)
        t = float(scale)
        # Σ_y exp(-y²/(2σ²)), for batch sizing only.
        if sigma2 >= 9.0:
            z_gauss = math.sqrt(2.0 * math.pi * sigma2)
        else:
            z_gauss = 1.0 + 2.0 * sum(math.exp(-(y * y) / (2.0 * sigma2)) for y in range(1, 40))
        z_laplace = (1.0 + math.exp(-1.0 / t)) / -math.expm1(-1.0 / t)
        # Per discrete Laplace candidate: Algorithm 2's acceptance times Algorithm 3's.
        self.acceptance = (
            _laplace_acceptance(self.lap_num, self.lap_den)
            * math.exp(-(tau * tau) / (2.0 * sigma2))
            * z_gauss
            / z_laplace
        )

    def feasible(self) -> bool:
        """Whether every integer the samplers form fits the int64 fast paths."""
        return (
            self.lap_num < 1 << _NUMERATOR_BITS
            and self.lap_den < _MAX_DENOMINATOR
            and self.fb < _MAX_DENOMINATOR
            and self.offset <= math.isqrt(_INT64_MAX // self.fa)
        )


def _gaussian_plan(n: int, d: int) -> _GaussianPlan:
    """Chooses τ for σ² = n/d: the round(σ) of CKS for σ >= 1, a power of two for small σ.

    Any τ > 0 gives the exact distribution; τ only sets the acceptance rate of Algorithm 3,
    ``exp(-τ²/(2σ²)) Σ_y e^{-y²/(2σ²)} / Σ_y e^{-|y|/t}``, and (through the size of t's
    numerator) that of Algorithm 2. For σ below 1, the integer τ = 1 makes the first collapse
    like ``exp(-1/(2σ²))`` (0.4% at σ = 0.3), so powers of two ``τ = 2**-k`` from the largest
    one ``<= σ`` down to an eighth of it are considered as well, and the plan with the best
    overall acceptance is used (at least 0.21 per Laplace candidate, 0.48 for large σ).
    """
    sigma = math.sqrt(n / d)
    plans = [_GaussianPlan(n, d, max(1, round(sigma)), 0)]
    if sigma < 1.5:
        k = 0
        while d > n << (2 * k):  # smallest k with 2**-2k <= σ² = n/d, i.e. 2**-k <= σ
            k += 1
        plans.extend(_GaussianPlan(n, d, 1, j) for j in range(max(k, 1), k + 4))
    usable = [plan for plan in plans if plan.feasible()]
    if not usable:
        raise ConfigurationError(f"sigma {sigma:.6g} cannot be represented; use a larger sigma")
    return max(usable, key=lambda plan: plan.acceptance)


def _gaussian_accept(rng: RandomSource, y: IntArray, plan: _GaussianPlan) -> BoolArray:
    """Exact Bernoulli(exp(-γ)), ``γ = (2**k |y| - P)² fa / fb``, for each proposal ``y``.

    ``e = 2**k |y| - P`` and ``a = fa e²`` are formed in int64 where they fit. Where they do
    not (``|e|`` above ``e_max = isqrt((2**63 - 1) // fa)``), γ is at least
    ``g0 = fa (e_max + 1)² // fb >= 2**63 // fb``, over 1000 since ``fb <= 2n < 2**53``. Such
    an entry is kept only if ``g0`` Bernoulli(exp(-1)) draws all succeed, which decides it
    exactly with probability ``1 - e^{-g0}``; the survivors (never, in practice) finish the
    remaining ``exp(-(γ - g0))`` with Python integers.
    """
    q = 1 << plan.shift
    magnitude = np.abs(y)
    e_max = math.isqrt(_INT64_MAX // plan.fa)
    y_max = (e_max + plan.offset) // q  # |y| <= y_max keeps |e| <= e_max and q|y| in int64
    small = magnitude <= y_max
    result = np.zeros(y.shape[0], dtype=np.bool_)
    if small.all():
        idx_small = None
        e = magnitude * q - plan.offset
    else:
        idx_small = np.flatnonzero(small)
        e = magnitude[idx_small] * q - plan.offset
    a = e * e * plan.fa
    decided = _bernoulli_exp(rng, a, plan.fb)
    if idx_small is None:
        return decided
    result[idx_small] = decided
    idx_big = np.flatnonzero(~small)
    g0 = min((plan.fa * (e_max + 1) ** 2) // plan.fb, _INT64_MAX)
    alive = _survive_exp_minus_one(rng, np.full(idx_big.shape[0], g0, dtype=np.int64))
    for j in np.flatnonzero(alive).tolist():
        i = int(idx_big[j])
        e_i = abs(int(y[i])) * q - plan.offset
        result[i] = _bernoulli_exp_exact(rng, plan.fa * e_i * e_i - g0 * plan.fb, plan.fb)
    return result


def discrete_gaussian(
    rng: RandomSource, size: int, *, sigma: float | Fraction, out: IntArray | None = None
) -> IntArray:
    """``size`` i.i.d. draws from the discrete Gaussian on ℤ with parameter ``sigma``, in a new
    array or in ``out`` (a writeable contiguous int64 array of ``size`` values, returned).

    ``P(x) = exp(-x²/(2σ²)) / Σ_{y∈ℤ} exp(-y²/(2σ²))``. Adding it to an integer query of L2
    sensitivity Δ satisfies (Δ²/(2σ²))-zero-concentrated DP (CKS Theorem 14).

    σ² is replaced by the exact rational ``n/d >= σ²`` of :func:`rational_upper_bound`
    (relative rounding below 4.4e-16 for σ from 2**-5.5 up to 2**26; below 1e-9 down to
    σ = 2**-16). The draws come from CKS Algorithm 3: propose ``Y`` from the discrete Laplace
    with scale ``t = σ²/τ`` and keep it with probability ``exp(-(|Y| - τ)²/(2σ²))``. This is
    exact for every ``t > 0``:

        Lap_t(y) exp(-(|y| - τ)²/(2σ²))
            ∝ exp(-|y|/t - y²/(2σ²) + |y| τ/σ² - τ²/(2σ²))
            = exp(-y²/(2σ²)) exp(-τ²/(2σ²))           (since τ/σ² = 1/t)
            ∝ exp(-y²/(2σ²)),

    so an accepted ``Y`` has exactly the discrete Gaussian law.

    **σ below 16.** τ is ``round(σ)`` for σ >= 1 (an integer, so γ = d(|Y| - τ)²/(2n) is a
    ratio of integers), and for small σ a power of two ``2**-k`` near σ, whichever accepts
    more often (see ``_gaussian_plan``); Algorithm 3 then keeps at least half of the
    proposals. γ is formed in int64 where it fits and otherwise decided exactly as described in
    ``_gaussian_accept``.

    **σ from 16 on: a staircase proposal.** With ``K = round(σ/16)``, ``t = 16K`` and
    ``τ = σ²/t``, the Laplace factor is split over blocks of ``K`` integers: a candidate is
    ``Y = ±(K V + R)`` with ``P(V >= v) = exp(-v/16)``, ``R`` uniform on {0, ..., K-1}, a fair
    sign and ``-0`` rejected, so ``P(Y = y) ∝ exp(-(|y| // K)/16)``; it is kept with
    probability ``exp(-γ)``, ``γ = (|y| - τ)²/(2σ²) + R/t``. As ``(|y| // K)/16 + R/t = |y|/t``,
    the kept ``Y`` has ``P ∝ exp(-|y|/t - (|y| - τ)²/(2σ²)) ∝ exp(-y²/(2σ²))`` by the identity
    above. About 0.74 of the candidates are kept. Every draw is 32 bits:

    * ``V`` is the number of ``v >= 1`` with ``U < exp(-v/16)``: a float32 logarithm of the
      draw proposes it and the exact thresholds ``T[4v] = floor(2**32 exp(-v/16))`` confirm
      it (``w < T[4V]`` and ``w > T[4V + 4]``); a tie or an unconfirmed guess is settled by
      reading more bits of ``U`` (:class:`_LazyUniform`).
    * ``R = (x K) >> 31`` for 31 random bits ``x``, rejecting the ``2**31 mod K`` low parts
      that would bias it (Lemire's multiply-and-shift).
    * ``exp(-γ) = exp(-j/64) exp(-δ)`` with ``j = floor(64 γ_lo)``, ``γ_lo <= γ``: the first
      factor is a draw below ``T[j]`` (ties settled exactly; ``j`` is capped at the first
      ``J`` with ``T[J] = 0``, where the draw decides ``exp(-γ) < 2**-32`` alone), the second
      CKS Algorithm 1 on ``δ = γ - j/64`` in [0, 1/64], its Bernoulli(δ/k) draws compared in
      float64 outside a margin (see ``_bernoulli_from_float``).
    * γ is computed in float64 from ``|Y|`` and ``R`` (exact below 2**53) and the correctly
      rounded constants τ, ``1/(2σ²)`` and ``1/t``. With ``D = |Y| - τ`` and ``u = 2**-53``,
      ``fl(|Y| - τ̃)`` is within ``u(|D| + 2τ)`` of ``D``; as ``τ <= 2σ``, squaring and
      scaling keep the error below ``u (5γ + 6√γ)``, and the sum below ``12 u (1 + γ)``,
      under ``2**-49 (1 + γ)``. ``γ_lo = γ̃ (1 - 2**-43) - 2**-43`` is therefore a lower
      bound of γ (with room for its own two roundings), and for ``j < J`` (so γ < 23) δ's
      float is within ``2**-38`` of δ, giving thresholds ``δ 2**32 / k`` within ``2**-6``.

    The Python-integer fallbacks occur with probability about 2**-31 per comparison, and
    about 2**-20 per candidate for the decoding of ``V`` (its float32 guess unconfirmed).

    Raises:
        ConfigurationError: for a negative ``size`` or a ``sigma`` that is not finite and
            positive, or lies outside [2**-16, 2**26).
    """
    n_out = _check_size(size)
    if isinstance(sigma, bool) or not isinstance(sigma, float | int | Fraction):
        raise ConfigurationError(
            f"sigma must be a float or Fraction, found {type(sigma).__name__} {sigma!r}"
        )
    if isinstance(sigma, float) and not math.isfinite(sigma):
        raise ConfigurationError(f"sigma must be finite and positive, found {sigma!r}")
    if not _MIN_SIGMA <= sigma < _MAX_SIGMA:
        raise ConfigurationError(
            f"sigma must be in [2**-16, 2**26) (about [1.5e-5, 6.7e7]), found {sigma!r}; "
            "for larger noise, scale the data down or use a coarser grid"
        )
    if out is not None and (
        not isinstance(out, np.ndarray)
        or out.dtype != np.int64
        or out.shape != (n_out,)
        or not out.flags.c_contiguous
        or not out.flags.writeable
    ):
        raise ConfigurationError(
            f"out must be a writeable contiguous int64 array of shape ({n_out},), got "
            + (f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__)
        )
    n, d = rational_upper_bound(Fraction(sigma) ** 2)
    if sigma >= _STAIRCASE_MIN_SIGMA:
        staircase = _StaircasePlan(n, d)
        if n_out == 0:
            return np.zeros(0, dtype=np.int64) if out is None else out
        pool = _WordPool(rng)
        return _collect(
            n_out,
            staircase.acceptance,
            lambda m: _staircase_candidates(pool, m, staircase),
            _STAIRCASE_BATCH,
            out,
        )
    plan = _gaussian_plan(n, d)
    if n_out == 0:
        return np.zeros(0, dtype=np.int64) if out is None else out
    source = _WordPool(rng)

    def draw(m: int) -> IntArray:
        y = _laplace_candidates(source, m, plan.lap_num, plan.lap_den)
        return y[np.flatnonzero(_gaussian_accept(source, y, plan))]

    return _collect(n_out, plan.acceptance, draw, _MAX_BATCH, out)
