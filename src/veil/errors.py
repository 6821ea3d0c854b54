"""Every error veil raises, in one hierarchy.

Each family also subclasses the builtin a caller would naturally catch, so code that does not
know veil still handles veil's errors sensibly::

    VeilError
    ├── ConfigurationError (ValueError)        a parameter is missing, out of range or inconsistent
    ├── DataError (ValueError)                 the input data cannot be used as given
    ├── MissingDependencyError (ImportError)   an optional extra is not installed
    ├── PrivacyError
    │   ├── BudgetExceededError                a release would overspend; nothing was drawn
    │   └── UnsupportedEventError (TypeError)  an accountant cannot compose this event
    ├── LedgerError
    │   ├── ScopeNotFoundError (KeyError)      no budget is set for this scope
    │   ├── LedgerIntegrityError               the spend history was altered
    │   └── ReservationError                   a reservation was used out of order
    └── ProtocolError                          a federated or cryptographic protocol went wrong
        ├── LocalProtocolError                 our own code used a state machine out of order
        └── RemoteProtocolError                a peer sent a message the protocol does not allow
            └── AuthenticationError            a ciphertext or signature did not verify (opaque)

Messages say what was expected, what was found, and what to do. They never contain secrets
(keys, seeds, raw records).
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BudgetExceededError",
    "ConfigurationError",
    "DataError",
    "LedgerError",
    "LedgerIntegrityError",
    "LocalProtocolError",
    "MissingDependencyError",
    "PrivacyError",
    "ProtocolError",
    "RemoteProtocolError",
    "ReservationError",
    "ScopeNotFoundError",
    "UnsupportedEventError",
    "VeilError",
]


class VeilError(Exception):
    """Root of every error raised by veil."""


class ConfigurationError(VeilError, ValueError):
    """A parameter is missing, out of range, or inconsistent with another."""


class DataError(VeilError, ValueError):
    """The input data cannot be used as given (wrong type, NaN, out of the declared domain)."""


class MissingDependencyError(VeilError, ImportError):
    """An optional part of veil is used without its extra installed.

    The message names the extra, e.g. ``pip install 'veil[postgres]'``.
    """

    def __init__(self, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(
            f"{module!r} is not installed; install it with: pip install 'veil[{extra}]'"
        )


class PrivacyError(VeilError):
    """A privacy guarantee cannot be given or kept as asked."""


class BudgetExceededError(PrivacyError):
    """A release would overspend its scope's budget. It was refused before any noise was drawn.

    Attributes:
        scope: the scope whose budget would be exceeded.
        budget_epsilon, budget_delta: the budget.
        spent_epsilon: the epsilon already spent at the budget's delta.
        requested_epsilon: the epsilon the total would reach with this release.
    """

    def __init__(
        self,
        *,
        scope: str,
        budget_epsilon: float,
        budget_delta: float,
        spent_epsilon: float,
        requested_epsilon: float,
    ) -> None:
        self.scope = scope
        self.budget_epsilon = budget_epsilon
        self.budget_delta = budget_delta
        self.spent_epsilon = spent_epsilon
        self.requested_epsilon = requested_epsilon
        remaining = max(0.0, budget_epsilon - spent_epsilon)
        super().__init__(
            f"budget of scope {scope!r} would be exceeded: "
            f"epsilon {requested_epsilon:.6g} after this release, budget {budget_epsilon:.6g} "
            f"at delta {budget_delta:.3g}; {remaining:.6g} is left "
            f"({spent_epsilon:.6g} already spent). Nothing was released. Ask for less "
            "(a larger noise scale or fewer queries) or raise the budget with "
            "`veil ledger budget set`."
        )

    @property
    def remaining_epsilon(self) -> float:
        """What is left of the budget's epsilon."""
        return max(0.0, self.budget_epsilon - self.spent_epsilon)


class UnsupportedEventError(PrivacyError, TypeError):
    """An accountant cannot compose this privacy event (under this neighbouring relation)."""


class LedgerError(VeilError):
    """The privacy ledger cannot do what was asked."""


class ScopeNotFoundError(LedgerError, KeyError):
    """No budget has been set for the scope."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class LedgerIntegrityError(LedgerError):
    """The ledger's history does not verify: a row was altered, removed or inserted."""


class ReservationError(LedgerError):
    """A reservation was committed twice, or used after it was closed."""


class ProtocolError(VeilError):
    """A protocol (a federated round, secure aggregation) cannot go on."""


class LocalProtocolError(ProtocolError):
    """Our own code drove a protocol state machine out of order: a bug in the caller."""


class RemoteProtocolError(ProtocolError):
    """A peer sent a message the protocol does not allow in its current state (late, duplicate,
    malformed, or from a party that was not asked)."""


class AuthenticationError(RemoteProtocolError):
    """A sealed message failed to open or a signature did not verify. Deliberately opaque: it
    never says which check failed."""
