"""The one place veil touches Google's ``dp_accounting``, and the RDP-to-DP conversion.

dp_accounting is imported lazily (it takes over a second to import), and its version pins
(attrs, scipy) stay isolated behind this module, so the backend can be swapped without touching
the rest.

The conversion from Rényi DP to (epsilon, delta) is the one dp_accounting uses (Canonne, Kamath,
Steinke 2020, Prop. 12 of arXiv:2004.00010v4; Asoodeh et al. 2020), evaluated here over all orders
at once with numpy: the ledger converts on every reservation, and dp_accounting's per-order Python
loop costs milliseconds on a dense grid. Tests check both give the same numbers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["dpa", "rdp_delta", "rdp_epsilon"]


@functools.cache
def dpa() -> ModuleType:
    """The ``dp_accounting`` module (imported on first use)."""
    import dp_accounting
    import dp_accounting.pld.privacy_loss_distribution
    import dp_accounting.rdp.rdp_privacy_accountant

    module: ModuleType = dp_accounting
    return module


ArrayLike = Sequence[float] | npt.NDArray[Any]


def _repair(orders: ArrayLike, rdp: ArrayLike) -> tuple[npt.NDArray[Any], ...]:
    """Rényi divergences are non-negative and non-decreasing in the order, but numerical error
    can leave a tiny negative value at some order. Such a value is replaced by the nearest
    non-negative value at a higher order, which bounds it from above (infinity if there is
    none, which takes that order out of the minimum); other values are left as they are."""
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    if not bool(np.any(r < 0)):
        return a, r
    index = np.argsort(a)
    a, r = a[index], r[index]
    above = np.minimum.accumulate(np.where(r < 0, np.inf, r)[::-1])[::-1]
    return a, np.where(r < 0, above, r)


def rdp_epsilon(orders: ArrayLike, rdp: ArrayLike, delta: float) -> float:
    """The smallest epsilon at ``delta`` implied by Rényi DP values ``rdp`` at ``orders``.

    ``ε = min over α of  rdp(α) + log(1 - 1/α) - log(δ·α) / (α - 1)`` (orders α > 1.01), or 0 when
    the KL bound ``δ ≥ sqrt(1 - e^{-rdp})`` already holds. Negative values (numerical error)
    are repaired first (see ``_repair``), never read as "no privacy loss".
    """
    a, r = _repair(orders, rdp)
    if delta == 0:
        return 0.0 if bool(np.all(r == 0)) else math.inf
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if bool(np.any(delta**2 + np.expm1(-r) > 0)):
            return 0.0
        eps = np.where(a > 1.01, r + np.log1p(-1.0 / a) - np.log(delta * a) / (a - 1.0), np.inf)
    best = float(np.min(eps))
    return max(0.0, best)


def rdp_delta(orders: ArrayLike, rdp: ArrayLike, epsilon: float) -> float:
    """The smallest delta at ``epsilon`` implied by Rényi DP values ``rdp`` at ``orders``.

    ``log δ = min over α of (α - 1)(rdp(α) - ε + log(1 - 1/α)) - log α`` (α > 1.01), also
    bounded by the KL bound ``δ ≤ sqrt(1 - e^{-rdp})``.
    """
    a, r = _repair(orders, rdp)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        kl = np.where(r > 0, 0.5 * np.log1p(-np.exp(-r)), -np.inf)
        bound = np.where(
            a > 1.01, (a - 1.0) * (r - epsilon + np.log1p(-1.0 / a)) - np.log(a), np.inf
        )
        log_delta = np.minimum(kl, bound)
    return float(min(math.exp(float(np.min(log_delta))), 1.0))
