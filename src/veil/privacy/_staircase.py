"""The discrete Gaussian for σ >= 16: the staircase proposal and its one exp(-γ) test per
candidate (the proof is in :func:`veil.privacy.samplers.discrete_gaussian`), with the glue to
its compiled pass (``_staircase.c``, loaded by :mod:`veil.privacy._kernel`): the pass runs when
it is built and agrees with numpy, and both paths give the same values from the same words.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from veil.privacy import _kernel
from veil.privacy._exact import (
    _DRAW_BITS,
    _FLOAT_MARGIN,
    _TWO_32_FLOAT,
    BoolArray,
    IntArray,
    _bernoulli_from_float,
    _bernoulli_ratio_exact,
    _exp_thresholds,
    _LazyUniform,
    _WordPool,
    rational_upper_bound,
)
from veil.privacy.random import InsecureSeededRandom, RandomSource

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
