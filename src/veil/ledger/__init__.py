"""The privacy ledger: persistent budgets per scope, enforced across processes and restarts.

See :class:`Ledger`. Storage is SQLite by default and PostgreSQL for teams (``veil[postgres]``).
"""

from veil.ledger.ledger import (
    Alert,
    Budget,
    BudgetStatus,
    Entry,
    Ledger,
    Reservation,
    VerifyReport,
)
from veil.ledger.scope import Scope

__all__ = [
    "Alert",
    "Budget",
    "BudgetStatus",
    "Entry",
    "Ledger",
    "Reservation",
    "Scope",
    "VerifyReport",
]
