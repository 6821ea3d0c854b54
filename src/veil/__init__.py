"""veil: get value from sensitive data without exposing the people in it.

The parts (see ``docs/``): :mod:`veil.privacy` (events, secure noise, mechanisms, accountants),
:mod:`veil.ledger` (persistent, enforced budgets). The most used names are re-exported here::

    from veil import Ledger, LaplaceMechanism, Domain

    with Ledger("ledger.sqlite") as ledger:
        ledger.set_budget("census2000/person", epsilon=1.0)
        count = ledger.release("census2000/person",
                               LaplaceMechanism(epsilon=0.1, sensitivity=1, domain=Domain.INTEGERS),
                               29501)
"""

from veil._version import __version__
from veil.errors import (
    AuthenticationError,
    BudgetExceededError,
    ConfigurationError,
    DataError,
    LedgerError,
    LedgerIntegrityError,
    LocalProtocolError,
    MissingDependencyError,
    PrivacyError,
    ProtocolError,
    RemoteProtocolError,
    ReservationError,
    ScopeNotFoundError,
    UnsupportedEventError,
    VeilError,
)
from veil.ledger import Budget, BudgetStatus, Ledger, Reservation, Scope
from veil.privacy import (
    AccountingMethod,
    Domain,
    GaussianMechanism,
    InsecureSeededRandom,
    LaplaceMechanism,
    NeighboringRelation,
    SecureRandom,
    TightestAccountant,
)

__all__ = [
    "AccountingMethod",
    "AuthenticationError",
    "Budget",
    "BudgetExceededError",
    "BudgetStatus",
    "ConfigurationError",
    "DataError",
    "Domain",
    "GaussianMechanism",
    "InsecureSeededRandom",
    "LaplaceMechanism",
    "Ledger",
    "LedgerError",
    "LedgerIntegrityError",
    "LocalProtocolError",
    "MissingDependencyError",
    "NeighboringRelation",
    "PrivacyError",
    "ProtocolError",
    "RemoteProtocolError",
    "Reservation",
    "ReservationError",
    "Scope",
    "ScopeNotFoundError",
    "SecureRandom",
    "TightestAccountant",
    "UnsupportedEventError",
    "VeilError",
    "__version__",
]
