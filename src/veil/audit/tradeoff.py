"""No attack beats the theorem: the most any attack can achieve against a DP guarantee.

An ``(ε, δ)``-DP mechanism lets any test of "the record is in" reach at most

    TPR <= min(1, e^ε · FPR + δ, 1 − e^{−ε} · (1 − δ − FPR))

at each false-positive rate (the two inequalities of hypothesis-testing DP, Kairouz, Oh and
Viswanath 2015). A mechanism described by an accountant is ``(ε, δ(ε))``-DP for *every* ε at
once, so its limit is the smallest of these lines over ε: the trade-off curve of the composed
events, up to the grid of ε (a coarser grid gives a higher, still valid, limit).

:func:`limit_violations` compares an attack's ROC with such a limit at a few false-positive rates,
using the lower confidence bound of the attack's TPR and the upper bound of its FPR, so that it
fails only when the evidence is significant: a violation means the accountant, the sampler or the
noise is wrong, or the claim does not describe what was run. Its Clopper-Pearson bounds assume
independent scores; :meth:`veil.audit.mia.MembershipAudit.limit_violations` does the same check
for pooled membership scores with a bootstrap and a Bonferroni correction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from veil.audit.stats import Roc
from veil.errors import ConfigurationError
from veil.privacy.accountants import Accountant

__all__ = ["accountant_tpr_limit", "dp_tpr_limit", "limit_violations"]

FloatArray = npt.NDArray[np.float64]

# The default grid of epsilons for an accountant's curve.
_EPSILONS = tuple(np.round(np.concatenate([np.arange(0, 2, 0.05), np.arange(2, 20.5, 0.25)]), 4))


def dp_tpr_limit(fpr: npt.ArrayLike, *, epsilon: float, delta: float) -> FloatArray:
    """The highest TPR an ``(epsilon, delta)``-DP mechanism allows at each FPR."""
    if not epsilon >= 0 or not 0 <= delta <= 1:
        raise ConfigurationError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    a = np.clip(np.asarray(fpr, dtype=np.float64), 0.0, 1.0)
    one = math.exp(epsilon) * a + delta
    two = 1.0 - math.exp(-epsilon) * (1.0 - delta - a)
    return np.asarray(np.minimum(1.0, np.minimum(one, two)), dtype=np.float64)


def accountant_tpr_limit(
    accountant: Accountant, *, epsilons: Sequence[float] = _EPSILONS
) -> Callable[[npt.ArrayLike], FloatArray]:
    """The highest TPR the events composed in ``accountant`` allow, as a function of the FPR:
    the smallest ``(ε, δ(ε))`` limit over ``epsilons`` (``δ(ε)`` is computed once, here)."""
    pairs = [(float(e), accountant.delta(float(e))) for e in epsilons]
    pairs = [(e, d) for e, d in pairs if d < 1]

    def limit(fpr: npt.ArrayLike) -> FloatArray:
        a = np.asarray(fpr, dtype=np.float64)
        best = np.ones_like(a)
        for eps, d in pairs:
            best = np.minimum(best, dp_tpr_limit(a, epsilon=eps, delta=d))
        return best

    return limit


def limit_violations(
    roc: Roc,
    limit: Callable[[float], float],
    *,
    fprs: Sequence[float] = (0.001, 0.01, 0.1, 0.5),
    confidence: float = 0.95,
) -> list[tuple[float, float, float]]:
    """``(fpr, tpr lower bound, limit at the fpr's upper bound)`` wherever the attack's TPR is
    significantly above ``limit``; empty when the ROC lies under the curve.

    The bounds are :meth:`Roc.tpr_at`'s Clopper-Pearson bounds at ``confidence`` for each point,
    which treat the scores as independent and are not corrected for testing several ``fprs``
    (pass a higher ``confidence`` for that). For scores pooled over shadow models use
    :meth:`veil.audit.mia.MembershipAudit.limit_violations`, which bootstraps and corrects."""
    out = []
    for target in fprs:
        p = roc.tpr_at(target, confidence=confidence)
        bound = float(limit(p.fpr_upper))
        if p.tpr_lower > bound:
            out.append((target, p.tpr_lower, bound))
    return out
