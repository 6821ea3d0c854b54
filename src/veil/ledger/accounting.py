"""What the ledger keeps per scope to decide a reservation quickly, and the slow exact path.

The cheap accountants (pure-DP, zCDP, RDP) each have a state that simply adds up under
composition: a total epsilon, a total rho, a vector of Rényi divergences. The ledger stores these
running totals with the scope and updates them in the same transaction as the spend, so deciding
a reservation costs the same whether the scope has ten events or a million. Only when every cheap
bound says "over budget" does the ledger compose all stored events with the PLD accountant, which
may still prove the release affordable.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from veil.errors import UnsupportedEventError
from veil.privacy.accountants import (
    DEFAULT_ORDERS,
    Accountant,
    AccountingMethod,
    NeighboringRelation,
    PldAccountant,
    PureDpAccountant,
    RdpAccountant,
    ZCdpAccountant,
)
from veil.privacy.events import Event, event_from_json

__all__ = ["ScopeState", "pld_epsilon"]

_CHEAP = {
    AccountingMethod.TIGHTEST: ("pure", "zcdp", "rdp"),
    AccountingMethod.PURE: ("pure",),
    AccountingMethod.ZCDP: ("zcdp",),
    AccountingMethod.RDP: ("rdp",),
    AccountingMethod.PLD: (),
}


_FloatArray = npt.NDArray[np.float64]


@functools.lru_cache(maxsize=1024)
def _cheap_costs(
    event_json: str, relation: NeighboringRelation
) -> tuple[float | None, float | None, _FloatArray | None]:
    """(pure epsilon, zCDP rho, RDP vector) of one event; None where the accountant refuses."""
    event = event_from_json(event_json)
    a: Any = PureDpAccountant(neighboring_relation=relation)
    pure = a.compose(event).total_epsilon if a.supports(event) else None
    a = ZCdpAccountant(neighboring_relation=relation)
    zcdp = a.compose(event).rho if a.supports(event) else None
    a = RdpAccountant(neighboring_relation=relation)
    rdp = None
    if a.supports(event):
        rdp = a.compose(event).rdp
        rdp.setflags(write=False)  # shared through the cache
    return pure, zcdp, rdp


_ZERO_RDP = np.zeros(len(DEFAULT_ORDERS))
_ZERO_RDP.setflags(write=False)


@dataclasses.dataclass(frozen=True, eq=False)
class ScopeState:
    """Running totals of the cheap accountants over every counted event of a scope.

    A field is None once an event arrived that its accountant cannot compose (that accountant is
    then out for good, for this scope). The RDP vector is at :data:`DEFAULT_ORDERS`.
    """

    events: int = 0
    pure: float | None = 0.0
    zcdp: float | None = 0.0
    rdp: _FloatArray | None = dataclasses.field(default_factory=lambda: _ZERO_RDP)

    def plus(self, event: Event, relation: NeighboringRelation) -> ScopeState:
        """The state after one more ``event``."""
        return self.plus_json(event.to_json(), relation)

    def plus_json(self, event_json: str, relation: NeighboringRelation) -> ScopeState:
        """:meth:`plus` for an event given as its canonical JSON."""
        pure, zcdp, rdp = _cheap_costs(event_json, relation)
        return ScopeState(
            events=self.events + 1,
            pure=None if self.pure is None or pure is None else self.pure + pure,
            zcdp=None if self.zcdp is None or zcdp is None else self.zcdp + zcdp,
            rdp=None if self.rdp is None or rdp is None else self.rdp + rdp,
        )

    @classmethod
    def of_events(cls, event_jsons: Iterable[str], relation: NeighboringRelation) -> ScopeState:
        """The state of exactly these events (each given as its canonical JSON), rebuilt from
        nothing: what the running totals are once a reservation stops counting. A sum cannot
        forget an event an accountant refused, so the state is composed again rather than
        reduced."""
        state = cls()
        for text, count in sorted(Counter(event_jsons).items()):
            pure, zcdp, rdp = _cheap_costs(text, relation)
            state = ScopeState(
                events=state.events + count,
                pure=None if state.pure is None or pure is None else state.pure + count * pure,
                zcdp=None if state.zcdp is None or zcdp is None else state.zcdp + count * zcdp,
                rdp=None if state.rdp is None or rdp is None else state.rdp + count * rdp,
            )
        return state

    def iter_epsilons(
        self, delta: float, method: AccountingMethod, relation: NeighboringRelation
    ) -> Iterator[tuple[str, float]]:
        """``(accountant name, epsilon at delta)`` from each cheap accountant that ``method``
        allows and that is still in the running, cheapest first."""
        names = _CHEAP[method]
        if "pure" in names and self.pure is not None:
            acct: Accountant = PureDpAccountant(
                neighboring_relation=relation, total_epsilon=self.pure
            )
            yield "pure-DP", acct.epsilon(delta)
        if "zcdp" in names and self.zcdp is not None:
            acct = ZCdpAccountant(neighboring_relation=relation, total_rho=self.zcdp)
            yield "zCDP", acct.epsilon(delta)
        if "rdp" in names and self.rdp is not None:
            acct = RdpAccountant(neighboring_relation=relation, initial_rdp=self.rdp)
            yield "RDP", acct.epsilon(delta)

    def epsilons(
        self, delta: float, method: AccountingMethod, relation: NeighboringRelation
    ) -> dict[str, float]:
        """All of :meth:`iter_epsilons`, by name."""
        return dict(self.iter_epsilons(delta, method, relation))

    def to_columns(self) -> dict[str, Any]:
        """The values of the scope table's ``spent_*`` columns."""
        return {
            "spent_events": self.events,
            "spent_pure": self.pure,
            "spent_zcdp": self.zcdp,
            "spent_rdp": None if self.rdp is None else self.rdp.astype("<f8").tobytes(),
        }

    @classmethod
    def from_columns(cls, row: Any) -> ScopeState:
        """Rebuild from a scope-table row."""
        rdp = None
        if row.spent_rdp is not None:
            rdp = np.frombuffer(row.spent_rdp, dtype="<f8").astype(np.float64)
        return cls(
            events=int(row.spent_events),
            pure=None if row.spent_pure is None else float(row.spent_pure),
            zcdp=None if row.spent_zcdp is None else float(row.spent_zcdp),
            rdp=rdp,
        )

    def close_to(self, other: ScopeState, *, rel: float = 1e-9) -> bool:
        """Equal up to floating-point summation order."""

        def near(a: float | None, b: float | None) -> bool:
            if a is None or b is None:
                return a is b
            return a == b or math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)

        if self.events != other.events or not near(self.pure, other.pure):
            return False
        if not near(self.zcdp, other.zcdp):
            return False
        if self.rdp is None or other.rdp is None:
            return self.rdp is other.rdp
        return self.rdp.shape == other.rdp.shape and bool(
            np.allclose(self.rdp, other.rdp, rtol=rel, atol=1e-12)
        )


def pld_epsilon(
    event_jsons: Iterable[str], delta: float, relation: NeighboringRelation
) -> float | None:
    """Epsilon at ``delta`` of all the events composed with the PLD accountant, or None if it
    cannot compose one of them. Identical events are composed together (one self-composition
    instead of many compositions), which makes repeated releases cheap to account."""
    counts = Counter(event_jsons)
    acct = PldAccountant(neighboring_relation=relation)
    try:
        for text, count in sorted(counts.items()):
            acct.compose(event_from_json(text), count)
    except UnsupportedEventError:
        return None
    return acct.epsilon(delta)
