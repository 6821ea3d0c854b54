"""Rényi DP accounting (Mironov 2017) through dp-accounting's ``RdpAccountant``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError
from veil.privacy.accountants._dpa import dpa, rdp_delta, rdp_epsilon
from veil.privacy.accountants.base import (
    CostAccountant,
    NeighboringRelation,
    Unsupported,
    check_delta,
    check_epsilon,
)
from veil.privacy.events import (
    ApproxDpEvent,
    ComposedEvent,
    DiscreteGaussianEvent,
    DiscreteLaplaceEvent,
    Event,
    ExponentialMechanismEvent,
    GaussianEvent,
    LaplaceEvent,
    NonPrivateEvent,
    NoOpEvent,
    PoissonSampledEvent,
    PureDpEvent,
    SampledWithoutReplacementEvent,
    SelfComposedEvent,
    ZCdpEvent,
)

__all__ = ["DEFAULT_ORDERS", "RdpAccountant"]

# dp-accounting's default orders: 1.1 to 10.9 by 0.1, 11 to 63, then 128, 256, 512, 1024.
DEFAULT_ORDERS: tuple[float, ...] = (
    tuple(1 + x / 10.0 for x in range(1, 100))
    + tuple(float(x) for x in range(11, 64))
    + (128.0, 256.0, 512.0, 1024.0)
)

FloatArray = npt.NDArray[np.float64]


def _to_dpa(event: Event) -> Any:
    """The dp-accounting event with the same RDP curve (or a valid upper bound on it)."""
    d = dpa()
    if isinstance(event, NoOpEvent):
        return d.NoOpDpEvent()
    if isinstance(event, NonPrivateEvent):
        return d.NonPrivateDpEvent()
    if isinstance(event, GaussianEvent):
        return d.GaussianDpEvent(event.noise_multiplier)
    if isinstance(event, LaplaceEvent):
        return d.LaplaceDpEvent(event.noise_multiplier)
    # Discrete Gaussian: the same Rényi divergences as the continuous one (Canonne et al. 2020).
    if isinstance(event, DiscreteGaussianEvent):
        return d.ZCDpEvent(event.rho)
    if isinstance(event, ZCdpEvent):
        return d.ZCDpEvent(event.rho)
    # Bounded range: epsilon²/8-zCDP (Cesar and Rogers 2021).
    if isinstance(event, ExponentialMechanismEvent):
        return d.ZCDpEvent(event.epsilon**2 / 8.0)
    # Any other pure epsilon-DP release: epsilon²/2-zCDP (Bun and Steinke 2016).
    if isinstance(event, DiscreteLaplaceEvent | PureDpEvent):
        return d.ZCDpEvent(event.epsilon**2 / 2.0)
    if isinstance(event, ApproxDpEvent):
        if event.delta > 0:
            raise Unsupported("an (epsilon, delta) event with delta > 0 has no Rényi DP curve")
        return d.ZCDpEvent(event.epsilon**2 / 2.0)
    if isinstance(event, PoissonSampledEvent):
        return d.PoissonSampledDpEvent(event.sampling_probability, _to_dpa(event.event))
    if isinstance(event, SampledWithoutReplacementEvent):
        return d.SampledWithoutReplacementDpEvent(
            event.source_dataset_size, event.sample_size, _to_dpa(event.event)
        )
    if isinstance(event, SelfComposedEvent):
        return d.SelfComposedDpEvent(_to_dpa(event.event), event.count)
    if isinstance(event, ComposedEvent):
        return d.ComposedDpEvent([_to_dpa(e) for e in event.events])
    raise Unsupported(f"no Rényi DP curve is known for {event.describe()}")


def _dpa_relation(relation: NeighboringRelation) -> Any:
    rel = dpa().NeighboringRelation
    if relation is NeighboringRelation.REPLACE_ONE:
        return rel.REPLACE_ONE
    return rel.ADD_OR_REMOVE_ONE


class RdpAccountant(CostAccountant):
    """Rényi DP at a grid of orders; converts to (epsilon, delta) with the improved conversion
    (Canonne, Kamath, Steinke 2020, Prop. 12; Asoodeh et al. 2020).

    RDP curves come from dp-accounting; veil does not re-derive them. Poisson subsampling is
    supported for Gaussian events, sampling without replacement only under replace-one
    neighbours (as dp-accounting proves). Pure-DP events enter through their zCDP bound, which
    is loose for large epsilon: the PLD or pure-DP accountant is tighter there.

    The state is the vector of Rényi divergences at :attr:`orders`; it adds up under composition,
    which is what lets the ledger update it incrementally (:meth:`rdp`, ``initial_rdp``).
    """

    name = "RDP"

    def __init__(
        self,
        *,
        neighboring_relation: NeighboringRelation = NeighboringRelation.ADD_OR_REMOVE_ONE,
        orders: Sequence[float] = DEFAULT_ORDERS,
        initial_rdp: Sequence[float] | FloatArray | None = None,
    ) -> None:
        super().__init__(neighboring_relation=neighboring_relation)
        self._orders = np.asarray(orders, dtype=np.float64)
        if self._orders.ndim != 1 or self._orders.size == 0 or np.any(self._orders <= 1):
            raise ConfigurationError("orders must be a non-empty sequence of numbers > 1")
        if initial_rdp is None:
            self._rdp = np.zeros_like(self._orders)
        else:
            self._rdp = np.asarray(initial_rdp, dtype=np.float64).copy()
            if self._rdp.shape != self._orders.shape:
                raise ConfigurationError("initial_rdp must have one value per order")

    @property
    def orders(self) -> FloatArray:
        return self._orders.copy()

    @property
    def rdp(self) -> FloatArray:
        """The Rényi divergence of everything composed so far, at each order."""
        return self._rdp.copy()

    def _cost(self, event: Event, count: int) -> FloatArray:
        d = dpa()
        inner = d.rdp.RdpAccountant(
            orders=list(self._orders), neighboring_relation=_dpa_relation(self._relation)
        )
        dpa_event = _to_dpa(event)
        try:
            inner.compose(dpa_event, count)
        except d.UnsupportedEventError as exc:
            raise Unsupported(str(exc)) from None
        return np.asarray(inner.rdp, dtype=np.float64)

    def _add(self, cost: FloatArray) -> None:
        self._rdp = self._rdp + cost

    def epsilon(self, delta: float) -> float:
        return rdp_epsilon(self._orders, self._rdp, check_delta(delta))

    def delta(self, epsilon: float) -> float:
        return rdp_delta(self._orders, self._rdp, check_epsilon(epsilon))
