"""The statistics every audit reports: exact binomial confidence bounds and ROC curves.

* :func:`clopper_pearson` is the exact (conservative) confidence interval for a binomial
  proportion: with ``k`` successes in ``n`` trials, the upper bound at one-sided level ``a`` is the
  ``1 - a`` quantile of ``Beta(k + 1, n - k)`` and the lower bound the ``a`` quantile of
  ``Beta(k, n - k + 1)`` (Clopper and Pearson 1934). It never covers less than it says.
* :class:`Roc` is the receiver operating characteristic of an attack's scores, members (or "the
  neighbour with the record") being the positives. :meth:`Roc.tpr_at` reads the true-positive rate
  at a false-positive rate without interpolating: the best threshold whose *empirical* FPR is at
  most the target, with Clopper-Pearson bounds on both rates. With fewer than about ``10 / fpr``
  negatives the statistic is really "TPR at zero false positives"; :attr:`RocPoint.negatives` is
  there so that a reader can tell. The bounds treat every score as an independent trial: right
  for one model's scores or independent runs of a mechanism, not for scores pooled over models
  that share records (:class:`veil.audit.mia.MembershipAudit` bootstraps those).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt
from scipy import stats

from veil.errors import ConfigurationError, DataError

__all__ = ["Roc", "RocPoint", "clopper_pearson"]

FloatArray = npt.NDArray[np.float64]


def _check_level(name: str, value: float) -> float:
    if not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigurationError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def clopper_pearson(
    successes: npt.ArrayLike, trials: npt.ArrayLike, *, confidence: float = 0.95
) -> tuple[FloatArray, FloatArray]:
    """Two-sided exact confidence bounds ``(lower, upper)`` for binomial proportions.

    Each side is one-sided at ``(1 - confidence) / 2``; for a one-sided bound at level ``a`` pass
    ``confidence = 1 - 2a``. Works element-wise on arrays.
    """
    _check_level("confidence", confidence)
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if np.any(k < 0) or np.any(k > n) or np.any(n < 1):
        raise DataError("need 0 <= successes <= trials and trials >= 1")
    tail = (1.0 - confidence) / 2.0
    with np.errstate(invalid="ignore"):
        lower = np.where(k > 0, stats.beta.ppf(tail, k, n - k + 1), 0.0)
        upper = np.where(k < n, stats.beta.ppf(1.0 - tail, k + 1, n - k), 1.0)
    return np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class RocPoint:
    """The TPR an attack reaches at a false-positive rate, with exact confidence bounds."""

    target_fpr: float
    fpr: float
    fpr_upper: float
    tpr: float
    tpr_lower: float
    tpr_upper: float
    threshold: float
    negatives: int
    positives: int


@dataclasses.dataclass(frozen=True)
class Roc:
    """The ROC curve of scores where higher means "positive" (a member).

    ``fpr`` and ``tpr`` run from (0, 0) to (1, 1); ``thresholds[i]`` is the score at or above which
    the point ``i`` guesses "positive" (``inf`` for the first point). Ties are one step.
    """

    fpr: FloatArray
    tpr: FloatArray
    thresholds: FloatArray
    positives: int
    negatives: int

    @classmethod
    def from_scores(cls, positive: npt.ArrayLike, negative: npt.ArrayLike) -> Roc:
        """The ROC of ``positive`` scores (members) against ``negative`` scores (non-members)."""
        pos = np.asarray(positive, dtype=np.float64).reshape(-1)
        neg = np.asarray(negative, dtype=np.float64).reshape(-1)
        if pos.size == 0 or neg.size == 0:
            raise DataError("an ROC needs at least one positive and one negative score")
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(neg))):
            raise DataError("scores must be finite; compute them in log space (see veil.audit)")
        scores = np.concatenate([pos, neg])
        labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
        order = np.argsort(-scores, kind="stable")
        s = scores[order]
        lab = labels[order]
        tp = np.cumsum(lab)
        fp = np.cumsum(1.0 - lab)
        last = np.r_[s[1:] != s[:-1], True]  # the last index of each run of equal scores
        tpr = np.r_[0.0, tp[last] / pos.size]
        fpr = np.r_[0.0, fp[last] / neg.size]
        thresholds = np.r_[np.inf, s[last]]
        return cls(fpr, tpr, thresholds, int(pos.size), int(neg.size))

    @property
    def auc(self) -> float:
        """Area under the curve (ties count half): the probability that a random member
        scores above a random non-member."""
        return float(np.sum(np.diff(self.fpr) * (self.tpr[1:] + self.tpr[:-1]) / 2.0))

    @property
    def advantage(self) -> float:
        """Yeom et al.'s membership advantage, ``max TPR - FPR`` over thresholds."""
        return float(np.max(self.tpr - self.fpr))

    def tpr_at(self, fpr: float, *, confidence: float = 0.95) -> RocPoint:
        """The highest TPR over thresholds with empirical FPR at most ``fpr``, with two-sided
        Clopper-Pearson bounds on it (and the upper bound of that threshold's FPR) at
        ``confidence``."""
        target = _check_level("fpr", fpr)
        ok = np.flatnonzero(self.fpr <= target + 1e-12)
        i = int(ok[np.argmax(self.tpr[ok])])
        hits = round(self.tpr[i] * self.positives)
        lo, hi = clopper_pearson(hits, self.positives, confidence=confidence)
        _, fpr_hi = clopper_pearson(
            round(self.fpr[i] * self.negatives), self.negatives, confidence=confidence
        )
        return RocPoint(
            target_fpr=target,
            fpr=float(self.fpr[i]),
            fpr_upper=float(fpr_hi),
            tpr=float(self.tpr[i]),
            tpr_lower=float(lo),
            tpr_upper=float(hi),
            threshold=float(self.thresholds[i]),
            negatives=self.negatives,
            positives=self.positives,
        )

    def __repr__(self) -> str:
        return (
            f"Roc(auc={self.auc:.4f}, positives={self.positives}, negatives={self.negatives}, "
            f"points={self.fpr.size})"
        )


def log_ratio(a: float, b: float) -> float:
    """``ln(a / b)`` with the conventions an epsilon bound needs (0 when ``a <= 0``)."""
    if a <= 0:
        return 0.0
    if b <= 0:
        return math.inf
    return math.log(a / b)
