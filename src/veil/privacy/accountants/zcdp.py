"""Zero-concentrated DP (Bun and Steinke 2016): rhos add up."""

from __future__ import annotations

import math

import numpy as np

from veil.privacy.accountants._dpa import rdp_delta, rdp_epsilon
from veil.privacy.accountants.base import (
    CostAccountant,
    NeighboringRelation,
    Unsupported,
    check_delta,
    check_epsilon,
)
from veil.privacy.events import (
    ApproxDpEvent,
    DiscreteGaussianEvent,
    DiscreteLaplaceEvent,
    Event,
    ExponentialMechanismEvent,
    GaussianEvent,
    LaplaceEvent,
    NonPrivateEvent,
    PureDpEvent,
    ZCdpEvent,
)

__all__ = ["ZCdpAccountant", "zcdp_rho"]

# A dense grid of Rényi orders for converting rho to (epsilon, delta); a rho-zCDP mechanism has
# Rényi divergence rho * alpha at every order alpha, and the conversion takes the best order.
_ORDERS = np.concatenate([np.linspace(1.01, 10.0, 900), np.geomspace(10.0, 1e7, 1400)[1:]])


def zcdp_rho(event: Event) -> float:
    """The zCDP parameter of one release of a leaf ``event``; raises :class:`Unsupported`.

    Gaussian: ``1 / (2 σ²)`` per unit sensitivity; discrete Gaussian: the same (Canonne, Kamath,
    Steinke 2020); any ε-DP release: ``ε² / 2`` (Bun and Steinke 2016, Prop. 1.4); the exponential
    mechanism: ``ε² / 8`` (Cesar and Rogers 2021, bounded range).
    """
    if isinstance(event, NonPrivateEvent):
        return math.inf
    if isinstance(event, GaussianEvent):
        return 1.0 / (2.0 * event.noise_multiplier**2)
    if isinstance(event, DiscreteGaussianEvent):
        return event.rho
    if isinstance(event, ZCdpEvent):
        return event.rho
    if isinstance(event, ExponentialMechanismEvent):
        return event.epsilon**2 / 8.0
    if isinstance(event, LaplaceEvent):
        return 1.0 / (2.0 * event.noise_multiplier**2)
    if isinstance(event, DiscreteLaplaceEvent | PureDpEvent):
        return event.epsilon**2 / 2.0
    if isinstance(event, ApproxDpEvent) and event.delta == 0:
        return event.epsilon**2 / 2.0
    raise Unsupported(
        f"{event.describe()} has no zCDP guarantee here (zCDP does not express subsampling or "
        "delta > 0); use the RDP or PLD accountant"
    )


class ZCdpAccountant(CostAccountant):
    """Adds up zCDP parameters; converts the total ``rho`` to (epsilon, delta) with the
    conversion of Canonne, Kamath and Steinke 2020 (Prop. 12 of arXiv:2004.00010v4), through
    dp-accounting's RDP-to-DP conversion on a dense grid of orders."""

    name = "zCDP"

    def __init__(
        self,
        *,
        neighboring_relation: NeighboringRelation = NeighboringRelation.ADD_OR_REMOVE_ONE,
        total_rho: float = 0.0,
    ) -> None:
        super().__init__(neighboring_relation=neighboring_relation)
        self._rho = float(total_rho)

    @property
    def rho(self) -> float:
        """The total zCDP parameter composed so far."""
        return self._rho

    def _cost(self, event: Event, count: int) -> float:
        return count * zcdp_rho(event)

    def _add(self, cost: float) -> None:
        self._rho += cost

    def epsilon(self, delta: float) -> float:
        d = check_delta(delta)
        if self._rho == 0:
            return 0.0
        if math.isinf(self._rho):
            return math.inf
        return rdp_epsilon(_ORDERS, self._rho * _ORDERS, d)

    def delta(self, epsilon: float) -> float:
        e = check_epsilon(epsilon)
        if self._rho == 0:
            return 0.0
        if math.isinf(self._rho):
            return 1.0
        return rdp_delta(_ORDERS, self._rho * _ORDERS, e)
