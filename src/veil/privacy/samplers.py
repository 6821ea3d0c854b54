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
rational interval arithmetic (`_exact._exp_minus_bounds`). Entries whose integer
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

import math
from fractions import Fraction

import numpy as np

from veil.errors import ConfigurationError
from veil.privacy._exact import (
    _INT64_MAX,
    _MAX_BATCH,
    _MAX_DENOMINATOR,
    _MAX_SIGMA,
    _MIN_SIGMA,
    _NUMERATOR_BITS,
    _STAIRCASE_BATCH,
    BoolArray,
    IntArray,
    _bernoulli_exp,
    _bernoulli_exp_exact,
    _bernoulli_exp_fraction,
    _bernoulli_exp_minus_one,
    _check_size,
    _collect,
    _random_bits,
    _survive_exp_minus_one,
    _uniform_below,
    _WordPool,
    bernoulli_exp,
    bernoulli_rational,
    rational_upper_bound,
    uniform_below,
)
from veil.privacy._staircase import (
    _STAIRCASE_MIN_SIGMA,
    _staircase_candidates,
    _StaircasePlan,
)
from veil.privacy.random import RandomSource

__all__ = [
    "bernoulli_exp",
    "bernoulli_rational",
    "discrete_gaussian",
    "discrete_laplace",
    "rational_upper_bound",
    "uniform_below",
]

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
      reading more bits of ``U`` (``_exact._LazyUniform``).
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
