"""The privacy ledger: budgets per scope, enforced across processes and restarts.

Spending is *reserve, release, commit*::

    with ledger.reserve("census2000/person", mechanism.event, purpose="mean income") as r:
        value = mechanism.release(true_value)      # noise is drawn only after the reservation

* ``reserve`` decides, atomically with respect to every other process using the same database,
  whether the scope's budget still covers everything already counted plus this event. If not,
  it raises :class:`~veil.errors.BudgetExceededError` and nothing is written or drawn.
* The reservation is durable before ``reserve`` returns. From then on the event counts, whatever
  happens: a process killed between reserve and commit leaves a *pending* reservation that is
  counted exactly like a committed one. Nothing is ever under-counted.
* Leaving the ``with`` block appends a ``commit`` entry (or ``fail`` if the block raised; the
  spend still counts, since noise may have been drawn).
* :meth:`Reservation.abandon` is the one way a spend stops counting: the caller declares that
  nothing derived from the data left the process (no noise drawn and published, no result).
  It is for code that can prove this, such as a federated round that aborted before anything
  could be unmasked; a caller that abandons after any release under-reports privacy loss.

Events are stored, not epsilons: the spend of a scope is recomputed from its events with the
tightest accountant whenever it is shown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import getpass
import hashlib
import hmac
import json
import logging
import math
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa

from veil.errors import (
    BudgetExceededError,
    ConfigurationError,
    LedgerError,
    ReservationError,
    ScopeNotFoundError,
    UnsupportedEventError,
)
from veil.ledger import store
from veil.ledger.accounting import ScopeState, pld_epsilon
from veil.ledger.scope import Scope
from veil.privacy.accountants import AccountingMethod, NeighboringRelation
from veil.privacy.events import Event, event_from_json
from veil.privacy.mechanisms import Mechanism
from veil.privacy.random import RandomSource

__all__ = ["Alert", "Budget", "BudgetStatus", "Entry", "Ledger", "Reservation", "VerifyReport"]

logger = logging.getLogger("veil.ledger")

# What each kind of closing entry makes of the reservation it refers to.
_CLOSED_STATUS = {"commit": "committed", "fail": "failed", "abandon": "abandoned"}

# Budgets are compared with this relative slack so that, e.g., ten releases at epsilon 0.1 fit a
# budget of 1 whatever the rounding of the floating-point sum.
_SLACK = 1e-9


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _default_actor() -> str:
    env = os.environ.get("VEIL_ACTOR")
    if env:
        return env
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _entry_hash(
    key: bytes | None,
    *,
    prev_hash: str,
    seq: int,
    kind: str,
    scope: str,
    entry_id: str,
    ref_id: str | None,
    payload: str,
    actor: str,
    purpose: str,
    created_at: str,
) -> str:
    """SHA-256 of an entry's content and its predecessor's hash; HMAC-SHA-256 with the ledger's
    key when it has one (then nobody without the key can rewrite the chain)."""
    content = json.dumps(
        [prev_hash, seq, kind, scope, entry_id, ref_id, payload, actor, purpose, created_at],
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    if key is None:
        return hashlib.sha256(content).hexdigest()
    return hmac.new(key, content, hashlib.sha256).hexdigest()


_KEY_CHECK = b"veil ledger key check"


def _ledger_key(key: str | bytes | None) -> bytes | None:
    """The chain key from ``key`` or ``$VEIL_LEDGER_KEY`` (any passphrase; hashed to 32 bytes)."""
    if key is None:
        key = os.environ.get("VEIL_LEDGER_KEY") or None
    if key is None:
        return None
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if not raw:
        raise ConfigurationError("the ledger key is empty")
    return hashlib.sha256(b"veil-ledger-key\x00" + raw).digest()


@dataclasses.dataclass(frozen=True)
class Budget:
    """A scope's budget: the composition of all its events must be (epsilon, delta)-DP,
    according to ``method``."""

    scope: Scope
    epsilon: float
    delta: float
    method: AccountingMethod = AccountingMethod.TIGHTEST
    neighboring_relation: NeighboringRelation = NeighboringRelation.ADD_OR_REMOVE_ONE
    alert_at: float = 0.8

    def to_payload(self) -> str:
        return json.dumps(
            {
                "epsilon": self.epsilon,
                "delta": self.delta,
                "method": self.method.value,
                "relation": self.neighboring_relation.value,
                "alert_at": self.alert_at,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_payload(cls, scope: Scope, payload: str) -> Budget:
        data = json.loads(payload)
        return cls(
            scope=scope,
            epsilon=float(data["epsilon"]),
            delta=float(data["delta"]),
            method=AccountingMethod(data["method"]),
            neighboring_relation=NeighboringRelation(data["relation"]),
            alert_at=float(data["alert_at"]),
        )


@dataclasses.dataclass(frozen=True)
class Alert:
    """A spend crossed the scope's alert threshold (a fraction of its epsilon)."""

    scope: Scope
    threshold: float
    spent_epsilon: float
    budget_epsilon: float

    def __str__(self) -> str:
        return (
            f"scope {self.scope} has spent {self.spent_epsilon:.4g} of its epsilon budget "
            f"{self.budget_epsilon:.4g} ({self.spent_epsilon / self.budget_epsilon:.0%}), "
            f"past the alert threshold of {self.threshold:.0%}"
        )


@dataclasses.dataclass(frozen=True)
class BudgetStatus:
    """A scope's budget and what has been spent of it."""

    budget: Budget
    spent_epsilon: float
    """The tightest upper bound on the epsilon spent, at the budget's delta."""
    by_accountant: dict[str, float]
    """Each applicable accountant's epsilon at the budget's delta."""
    events: int
    pending: int
    """Reservations not closed yet (a crash, or a release in progress); counted."""
    abandoned: int = 0
    """Reservations abandoned: declared to have released nothing, and not counted."""

    @property
    def remaining_epsilon(self) -> float:
        return max(0.0, self.budget.epsilon - self.spent_epsilon)

    @property
    def fraction_used(self) -> float:
        if self.budget.epsilon == 0:
            return 0.0 if self.spent_epsilon == 0 else math.inf
        return self.spent_epsilon / self.budget.epsilon

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": str(self.budget.scope),
            "budget_epsilon": self.budget.epsilon,
            "budget_delta": self.budget.delta,
            "method": self.budget.method.value,
            "neighboring_relation": self.budget.neighboring_relation.value,
            "alert_at": self.budget.alert_at,
            "spent_epsilon": self.spent_epsilon,
            "remaining_epsilon": self.remaining_epsilon,
            "by_accountant": self.by_accountant,
            "events": self.events,
            "pending": self.pending,
            "abandoned": self.abandoned,
        }


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the append-only history."""

    seq: int
    kind: str
    scope: str
    entry_id: str
    ref_id: str | None
    payload: str
    actor: str
    purpose: str
    created_at: str
    prev_hash: str
    hash: str
    status: str | None = None
    """For reservations: ``committed``, ``failed``, ``abandoned`` (not counted) or
    ``pending``."""

    @property
    def event(self) -> Event | None:
        return event_from_json(self.payload) if self.kind == "reserve" else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seq": self.seq,
            "kind": self.kind,
            "scope": self.scope,
            "entry_id": self.entry_id,
            "ref_id": self.ref_id,
            "actor": self.actor,
            "purpose": self.purpose,
            "created_at": self.created_at,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }
        if self.kind == "reserve":
            out["event"] = json.loads(self.payload)
            out["status"] = self.status
        else:
            out["details"] = json.loads(self.payload)
        return out


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found."""

    ok: bool
    entries: int
    head_hash: str
    problems: tuple[str, ...]
    abandoned: int = 0
    """Reservations whose spend was abandoned (declared to have released nothing)."""


class Reservation:
    """A reserved spend. Commit it after the release (or use it as a context manager)."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        entry_id: str,
        scope: Scope,
        event: Event,
        purpose: str,
        seq: int,
        spent_epsilon: float,
        budget_epsilon: float,
        alerts: tuple[Alert, ...],
    ) -> None:
        self._ledger = ledger
        self.id = entry_id
        self.scope = scope
        self.event = event
        self.purpose = purpose
        self.seq = seq
        self.spent_epsilon = spent_epsilon
        """The scope's epsilon spent including this reservation (an upper bound)."""
        self.budget_epsilon = budget_epsilon
        self.alerts = alerts
        self._closed: str | None = None

    @property
    def status(self) -> str:
        return self._closed or "pending"

    def commit(self) -> None:
        """Record that the release happened."""
        self._close("commit", "{}")

    def fail(self, reason: str) -> None:
        """Record that the release failed. The spend still counts (noise may have been drawn)."""
        self._close("fail", json.dumps({"reason": reason}, separators=(",", ":")))

    def abandon(self, reason: str) -> None:
        """Record that nothing was released under this reservation: its spend stops counting.

        Call it only when no output derived from the data has left the process: no noise was
        drawn and published, no result, not even partially, was shown, sent or stored. The
        ledger cannot check this claim; a caller that abandons after any release under-reports
        privacy loss. When in doubt, :meth:`fail` (which still counts). ``reason`` is kept in
        the history; it must not contain data.

        Atomic with respect to every other process: from the moment it returns, reservations
        are decided without this one, and a reservation can be closed once only (committing,
        failing or abandoning it again raises :class:`~veil.errors.ReservationError`).
        """
        self._close("abandon", json.dumps({"reason": reason}, separators=(",", ":")))

    def _close(self, kind: str, payload: str) -> None:
        if self._closed is not None:
            raise ReservationError(f"reservation {self.id} is already {self._closed}")
        self._ledger._close_reservation(self, kind, payload)
        self._closed = _CLOSED_STATUS[kind]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._closed is not None:
            return
        if exc_type is None:
            self.commit()
        else:
            # The exception's message may hold data; record only its type.
            self.fail(exc_type.__name__)

    def __repr__(self) -> str:
        return (
            f"Reservation(scope={self.scope}, event={self.event.describe()}, status={self.status})"
        )


class Ledger:
    """A persistent privacy ledger on SQLite (default) or PostgreSQL.

    ``url`` is a SQLAlchemy URL (``sqlite:///path``, ``postgresql://user@host/db``) or a plain
    file path; default ``$VEIL_LEDGER_URL`` or ``~/.local/share/veil/ledger.sqlite``. Every
    process opens its own ``Ledger``; they coordinate through the database. ``actor`` names who
    spends (default ``$VEIL_ACTOR`` or ``user@host``); ``on_alert`` is called for every alert
    (they are also logged on the ``veil.ledger`` logger).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        actor: str | None = None,
        key: str | bytes | None = None,
        create: bool = True,
        on_alert: Callable[[Alert], None] | None = None,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        self.url = store.normalise_url(url or store.default_url())
        self._engine = store.make_engine(self.url, create=create)
        self._sql = store.HotStatements(self._engine.dialect.name)
        self._relations: dict[str, NeighboringRelation] = {}
        self._lock_path = store.writer_lock_path(self.url)
        self._lock_fd: int | None = None
        self._pid = os.getpid()
        self.actor = actor or _default_actor()
        self._on_alert = on_alert
        self._clock = clock
        self._key = _ledger_key(key)
        self._key_problem = self._check_key(create)

    def _check_key(self, create: bool) -> str | None:
        """Compare the key with the one the ledger was created with; returns why writing and
        verifying are impossible, or None. A new ledger records which key it is created with."""
        check = "" if self._key is None else hmac.new(self._key, _KEY_CHECK, "sha256").hexdigest()
        select = sa.select(store.meta.c.value).where(store.meta.c.name == "key_check")
        with self._read() as conn:
            stored = conn.execute(select).scalar_one_or_none()
        if stored is None and create:
            with self._write() as (conn, current):
                if conn.execute(select).scalar_one_or_none() is None:
                    if current[0] > 0 and self._key is not None:
                        return "this ledger was created without a key; it cannot take one later"
                    conn.execute(sa.insert(store.meta).values(name="key_check", value=check))
                stored = conn.execute(select).scalar_one()
        if stored is None or stored == check:
            return None
        if stored and self._key is None:
            return "this ledger is keyed: give its key (VEIL_LEDGER_KEY) to write to or verify it"
        if not stored:
            return "this ledger has no key, but a key was given (unset VEIL_LEDGER_KEY?)"
        return "the ledger key does not match the one this ledger was created with"

    def _require_key(self) -> None:
        if self._key_problem is not None:
            raise LedgerError(self._key_problem)

    # -- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _check_process(self) -> None:
        """A Ledger carried into a forked child must not share its parent's connections."""
        if os.getpid() != self._pid:
            self._engine.dispose(close=False)
            self._lock_fd = None  # the inherited descriptor shares the parent's lock
            self._pid = os.getpid()

    @contextlib.contextmanager
    def _writer_lock(self) -> Iterator[None]:
        if self._lock_path is None:
            yield
            return
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[tuple[sa.Connection, list[Any]]]:
        """A write transaction holding the head lock; yields ``[seq, hash]`` of the head, which
        :meth:`_append` advances and which is saved at the end."""
        self._check_process()
        try:
            with (
                self._writer_lock(),
                self._engine.connect().execution_options(veil_write=True) as conn,
                conn.begin(),
            ):
                row = conn.exec_driver_sql(self._sql.lock_head).one()
                current = [int(row.seq), str(row.hash)]
                start = current[0]
                yield conn, current
                if current[0] != start:
                    conn.exec_driver_sql(
                        self._sql.save_head, {"new_seq": current[0], "new_hash": current[1]}
                    )
        except sa.exc.DBAPIError as exc:
            raise LedgerError(f"the ledger database failed: {store.first_line(exc)}") from None

    @contextlib.contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        self._check_process()
        try:
            with self._engine.connect() as conn, conn.begin():
                yield conn
        except sa.exc.DBAPIError as exc:
            raise LedgerError(f"the ledger database failed: {store.first_line(exc)}") from None

    def _append(
        self,
        conn: sa.Connection,
        current: list[Any],
        *,
        kind: str,
        scope: str,
        payload: str,
        purpose: str,
        ref_id: str | None = None,
    ) -> tuple[int, str]:
        self._require_key()
        seq = current[0] + 1
        entry_id = uuid.uuid4().hex
        created_at = self._clock().astimezone(dt.UTC).isoformat(timespec="microseconds")
        digest = _entry_hash(
            self._key,
            prev_hash=current[1],
            seq=seq,
            kind=kind,
            scope=scope,
            entry_id=entry_id,
            ref_id=ref_id,
            payload=payload,
            actor=self.actor,
            purpose=purpose,
            created_at=created_at,
        )
        conn.exec_driver_sql(
            self._sql.insert_entry,
            {
                "seq": seq,
                "kind": kind,
                "scope": scope,
                "entry_id": entry_id,
                "ref_id": ref_id,
                "payload": payload,
                "actor": self.actor,
                "purpose": purpose,
                "created_at": created_at,
                "prev_hash": current[1],
                "hash": digest,
            },
        )
        current[0], current[1] = seq, digest
        return seq, entry_id

    # -- budgets -------------------------------------------------------------------------------

    def set_budget(
        self,
        scope: str | Scope,
        *,
        epsilon: float,
        delta: float = 0.0,
        method: AccountingMethod = AccountingMethod.TIGHTEST,
        neighboring_relation: NeighboringRelation = NeighboringRelation.ADD_OR_REMOVE_ONE,
        alert_at: float = 0.8,
        purpose: str = "",
    ) -> Budget:
        """Create or change a scope's budget. Lowering it below what is spent is allowed (every
        later reservation is refused); changing the neighbouring relation of a scope that has
        events is not (their sensitivities were stated under the old one)."""
        sc = Scope.parse(scope)
        if not isinstance(epsilon, int | float) or not math.isfinite(epsilon) or epsilon < 0:
            raise ConfigurationError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
        if not isinstance(delta, int | float) or not 0 <= delta < 1:
            raise ConfigurationError(f"delta must be a number in [0, 1), got {delta!r}")
        if not isinstance(method, AccountingMethod):
            raise ConfigurationError(f"method must be an AccountingMethod, got {method!r}")
        if not isinstance(alert_at, int | float) or not 0 < alert_at <= 1:
            raise ConfigurationError(f"alert_at must be a fraction in (0, 1], got {alert_at!r}")
        budget = Budget(sc, float(epsilon), float(delta), method, neighboring_relation, alert_at)
        with self._write() as (conn, current):
            row = conn.execute(
                sa.select(store.scopes).where(store.scopes.c.scope == str(sc))
            ).one_or_none()
            state = ScopeState() if row is None else ScopeState.from_columns(row)
            if row is not None and state.events and row.relation != neighboring_relation.value:
                raise ConfigurationError(
                    f"scope {sc} already has {state.events} events under the "
                    f"{row.relation} relation; its neighbouring relation cannot change"
                )
            seq, _ = self._append(
                conn,
                current,
                kind="budget",
                scope=str(sc),
                payload=budget.to_payload(),
                purpose=purpose,
            )
            values = {
                "epsilon": budget.epsilon,
                "delta": budget.delta,
                "method": method.value,
                "relation": neighboring_relation.value,
                "alert_at": budget.alert_at,
                "last_seq": seq,
            }
            if row is None:
                conn.execute(
                    sa.insert(store.scopes).values(
                        scope=str(sc), spent_epsilon=0.0, **state.to_columns(), **values
                    )
                )
            else:
                conn.execute(
                    sa.update(store.scopes).where(store.scopes.c.scope == str(sc)).values(**values)
                )
        return budget

    def budget(self, scope: str | Scope) -> Budget:
        """The current budget of ``scope``."""
        sc = Scope.parse(scope)
        with self._read() as conn:
            row = self._scope_row(conn, sc)
        return self._budget_of(sc, row)

    @staticmethod
    def _budget_of(scope: Scope, row: Any) -> Budget:
        return Budget(
            scope,
            float(row.epsilon),
            float(row.delta),
            AccountingMethod(row.method),
            NeighboringRelation(row.relation),
            float(row.alert_at),
        )

    def _scope_row(self, conn: sa.Connection, scope: Scope) -> Any:
        row = conn.exec_driver_sql(self._sql.select_scope, {"scope_name": str(scope)}).one_or_none()
        if row is None:
            raise ScopeNotFoundError(
                f"no budget is set for scope {scope}; set one with "
                f"`veil ledger budget set --scope {scope} --epsilon E` or Ledger.set_budget"
            )
        return row

    def scopes(self) -> list[Scope]:
        """Every scope with a budget, sorted."""
        with self._read() as conn:
            rows = conn.execute(sa.select(store.scopes.c.scope).order_by(store.scopes.c.scope))
            return [Scope.parse(r.scope) for r in rows]

    # -- spending ------------------------------------------------------------------------------

    def reserve(self, scope: str | Scope, event: Event, *, purpose: str = "") -> Reservation:
        """Reserve the cost of ``event`` in ``scope``, or raise
        :class:`~veil.errors.BudgetExceededError` (writing nothing) if it does not fit."""
        sc = Scope.parse(scope)
        if not isinstance(event, Event):
            raise ConfigurationError(f"expected a privacy event, got {event!r}")
        event_json = event.to_json()
        # Work that needs no lock is done before taking it: the first use of an event computes
        # its accountant costs (and imports dp-accounting), which other writers must not wait on.
        relation = self._relations.get(str(sc))
        if relation is None:
            with self._read() as conn:
                relation = NeighboringRelation(self._scope_row(conn, sc).relation)
            self._relations[str(sc)] = relation
        ScopeState().plus_json(event_json, relation)
        with self._write() as (conn, current):
            row = self._scope_row(conn, sc)
            budget = self._budget_of(sc, row)
            relation = budget.neighboring_relation
            state = ScopeState.from_columns(row).plus_json(event_json, relation)
            limit = budget.epsilon * (1 + _SLACK)
            threshold = budget.alert_at * budget.epsilon
            # Cheapest accountants first; stop as soon as one shows the spend below the alert
            # threshold. Over the limit, the PLD accountant composes every stored event and may
            # still prove the release affordable. (The recorded spend, and so the alerts, use
            # the fast bounds: they may report slightly more than the tightest, never less.)
            spent = math.inf
            for _, eps in state.iter_epsilons(budget.delta, budget.method, relation):
                spent = min(spent, eps)
                if spent < threshold:
                    break
            tight_allowed = budget.method in (AccountingMethod.TIGHTEST, AccountingMethod.PLD)
            tight: float | None = None
            if spent > limit and tight_allowed:
                stored = self._event_payloads(conn, sc)
                tight = pld_epsilon([*stored, event_json], budget.delta, relation)
                if tight is not None:
                    spent = min(spent, tight)
            if (
                math.isinf(spent)
                and tight is None
                and not state.epsilons(budget.delta, budget.method, relation)
            ):
                raise UnsupportedEventError(
                    f"scope {sc} accounts with {budget.method.value} "
                    f"({budget.neighboring_relation.value} neighbours), which cannot compose "
                    f"{event.describe()} with the events already spent; nothing was released"
                )
            if spent > limit:
                already = float(row.spent_epsilon)  # the bound recorded at the last spend
                if tight_allowed and state.events > 1:
                    # say what is really spent: the tightest bound on the events so far
                    cheap_before = ScopeState.from_columns(row).epsilons(
                        budget.delta, budget.method, relation
                    )
                    tight_before = pld_epsilon(
                        self._event_payloads(conn, sc), budget.delta, relation
                    )
                    already = min(
                        [already, *cheap_before.values()]
                        + ([tight_before] if tight_before is not None else [])
                    )
                raise BudgetExceededError(
                    scope=str(sc),
                    budget_epsilon=budget.epsilon,
                    budget_delta=budget.delta,
                    spent_epsilon=already,
                    requested_epsilon=spent,
                )
            seq, entry_id = self._append(
                conn, current, kind="reserve", scope=str(sc), payload=event_json, purpose=purpose
            )
            conn.exec_driver_sql(
                self._sql.update_spent,
                {
                    "scope_name": str(sc),
                    "spent_epsilon": spent,
                    "last_seq": seq,
                    **state.to_columns(),
                },
            )
            before = float(row.spent_epsilon)
        alerts: tuple[Alert, ...] = ()
        threshold = budget.alert_at * budget.epsilon
        if before < threshold <= spent:
            alerts = (Alert(sc, budget.alert_at, spent, budget.epsilon),)
            for alert in alerts:
                logger.warning("%s", alert)
                if self._on_alert is not None:
                    try:
                        self._on_alert(alert)
                    except Exception:  # the reservation is durable: it must reach the caller
                        logger.exception("the on_alert callback failed")
        return Reservation(
            self,
            entry_id=entry_id,
            scope=sc,
            event=event,
            purpose=purpose,
            seq=seq,
            spent_epsilon=spent,
            budget_epsilon=budget.epsilon,
            alerts=alerts,
        )

    def _close_reservation(self, reservation: Reservation, kind: str, payload: str) -> None:
        with self._write() as (conn, current):
            closed = conn.exec_driver_sql(
                self._sql.closing_of, {"reservation_id": reservation.id}
            ).first()
            if closed is not None:
                raise ReservationError(
                    f"reservation {reservation.id} was already closed "
                    f"({_CLOSED_STATUS.get(closed.kind, closed.kind)}); it cannot also be "
                    f"{_CLOSED_STATUS[kind]}"
                )
            made = conn.exec_driver_sql(self._sql.entry_kind, {"entry_id": reservation.id}).first()
            if made is None or made.kind != "reserve" or made.scope != str(reservation.scope):
                raise ReservationError(
                    f"there is no reservation {reservation.id} in scope {reservation.scope}"
                )
            seq, _ = self._append(
                conn,
                current,
                kind=kind,
                scope=str(reservation.scope),
                payload=payload,
                purpose=reservation.purpose,
                ref_id=reservation.id,
            )
            if kind == "abandon":
                self._recount(conn, reservation.scope, seq)

    def _recount(self, conn: sa.Connection, scope: Scope, seq: int) -> None:
        """Rebuild the running totals of ``scope`` from the events that still count (in the
        transaction that abandoned one of them, so no reservation is decided in between)."""
        row = self._scope_row(conn, scope)
        budget = self._budget_of(scope, row)
        relation = budget.neighboring_relation
        payloads = self._event_payloads(conn, scope)
        state = ScopeState.of_events(payloads, relation)
        spent = min(state.epsilons(budget.delta, budget.method, relation).values(), default=0.0)
        if payloads and not state.epsilons(budget.delta, budget.method, relation):
            tight = pld_epsilon(payloads, budget.delta, relation)
            spent = math.inf if tight is None else tight
        conn.exec_driver_sql(
            self._sql.update_spent,
            {
                "scope_name": str(scope),
                "spent_epsilon": spent,
                "last_seq": seq,
                **state.to_columns(),
            },
        )

    def release(
        self,
        scope: str | Scope,
        mechanism: Mechanism,
        values: object,
        *,
        purpose: str = "",
        rng: RandomSource | None = None,
    ) -> Any:
        """Validate ``values``, reserve the mechanism's event, release, commit.

        Bad input raises :class:`~veil.errors.DataError` before anything is spent; an exhausted
        budget raises :class:`~veil.errors.BudgetExceededError` before any noise is drawn.
        """
        mechanism.validate(values)
        with self.reserve(scope, mechanism.event, purpose=purpose):
            return mechanism.release(values, rng=rng)

    # -- released results --------------------------------------------------------------------

    def store_release(self, key: str, reservation: Reservation, payload: str) -> None:
        """Keep a released result under ``key`` (first writer wins), tied to the reservation
        that paid for it; :meth:`cached_release` returns it for the same question."""
        created_at = self._clock().astimezone(dt.UTC).isoformat(timespec="microseconds")
        row = {
            "key": key,
            "scope": str(reservation.scope),
            "reservation_id": reservation.id,
            "created_at": created_at,
            "payload": payload,
        }
        try:
            with self._engine.begin() as conn:
                exists = conn.execute(
                    sa.select(store.releases.c.key).where(store.releases.c.key == key)
                ).first()
                if exists is None:
                    conn.execute(sa.insert(store.releases).values(**row))
        except sa.exc.IntegrityError:
            pass  # another process stored the same answer first
        except sa.exc.DBAPIError as exc:
            raise LedgerError(f"the ledger database failed: {store.first_line(exc)}") from None

    def cached_release(self, key: str) -> str | None:
        """The result stored under ``key`` by :meth:`store_release`, if any."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(store.releases.c.payload).where(store.releases.c.key == key)
            ).first()
        return None if row is None else str(row.payload)

    # -- reading -------------------------------------------------------------------------------

    @staticmethod
    def _abandoned(scope: Scope) -> sa.Select[tuple[str | None]]:
        """The ids of the reservations of ``scope`` that were abandoned. Never NULL: ``NOT IN``
        a list that holds NULL is true of nothing, and a forged row without an id would make
        every event of the scope stop counting."""
        return sa.select(store.entries.c.ref_id).where(
            store.entries.c.scope == str(scope),
            store.entries.c.kind == "abandon",
            store.entries.c.ref_id.is_not(None),
        )

    @classmethod
    def _event_payloads(cls, conn: sa.Connection, scope: Scope) -> list[str]:
        """The events that count in ``scope``: every reservation's but the abandoned ones."""
        rows = conn.execute(
            sa.select(store.entries.c.payload).where(
                store.entries.c.scope == str(scope),
                store.entries.c.kind == "reserve",
                store.entries.c.entry_id.not_in(cls._abandoned(scope)),
            )
        )
        return [r.payload for r in rows]

    def status(self, scope: str | Scope) -> BudgetStatus:
        """The budget of ``scope`` and its spend, recomputed from the stored events with every
        applicable accountant (the tightest is reported)."""
        sc = Scope.parse(scope)
        with self._read() as conn:
            row = self._scope_row(conn, sc)
            payloads = self._event_payloads(conn, sc)
            pending = self._pending_count(conn, sc)
            abandoned = conn.execute(
                sa.select(sa.func.count()).select_from(self._abandoned(sc).subquery())
            ).scalar_one()
        budget = self._budget_of(sc, row)
        relation = budget.neighboring_relation
        state = ScopeState.from_columns(row)
        by = state.epsilons(budget.delta, budget.method, relation)
        if budget.method in (AccountingMethod.TIGHTEST, AccountingMethod.PLD) and payloads:
            tight = pld_epsilon(payloads, budget.delta, relation)
            if tight is not None:
                by["PLD"] = tight
        spent = 0.0 if not payloads else min(by.values(), default=math.inf)
        return BudgetStatus(budget, spent, by, len(payloads), pending, int(abandoned))

    @staticmethod
    def _pending_count(conn: sa.Connection, scope: Scope) -> int:
        closing = sa.select(store.entries.c.ref_id).where(
            store.entries.c.scope == str(scope), store.entries.c.ref_id.is_not(None)
        )
        count = conn.execute(
            sa.select(sa.func.count()).where(
                store.entries.c.scope == str(scope),
                store.entries.c.kind == "reserve",
                store.entries.c.entry_id.not_in(closing),
            )
        ).scalar_one()
        return int(count)

    def history(self, scope: str | Scope | None = None) -> list[Entry]:
        """The append-only history, oldest first (one scope, or all)."""
        query = sa.select(store.entries).order_by(store.entries.c.seq)
        if scope is not None:
            query = query.where(store.entries.c.scope == str(Scope.parse(scope)))
        with self._read() as conn:
            rows = list(conn.execute(query))
        outcome = {r.ref_id: r.kind for r in rows if r.ref_id is not None}
        out = []
        for r in rows:
            status = None
            if r.kind == "reserve":
                status = _CLOSED_STATUS.get(outcome.get(r.entry_id, ""), "pending")
            fields = dict(r._mapping)
            fields["seq"] = int(fields["seq"])
            out.append(Entry(**fields, status=status))
        return out

    def verify(self) -> VerifyReport:
        """Recompute the hash chain and every scope's cached totals from the history.

        Finds a row altered, removed or inserted anywhere but at the very end (compare
        ``head_hash`` with a copy kept elsewhere to detect truncation of the newest rows too),
        and a scope table that no longer matches the history.
        """
        self._require_key()
        problems: list[str] = []
        with self._read() as conn:
            rows = list(conn.execute(sa.select(store.entries).order_by(store.entries.c.seq)))
            head_row = conn.execute(sa.select(store.head).where(store.head.c.id == 1)).one()
            scope_rows = {r.scope: r for r in conn.execute(sa.select(store.scopes))}
        prev = store.GENESIS_HASH
        for expected_seq, r in enumerate(rows, start=1):
            if r.seq != expected_seq:
                problems.append(f"entry {expected_seq} is missing (found {r.seq} in its place)")
                break
            if r.prev_hash != prev:
                problems.append(f"entry {r.seq} does not link to the entry before it")
            digest = _entry_hash(self._key, **{k: v for k, v in r._mapping.items() if k != "hash"})
            if digest != r.hash:
                problems.append(f"entry {r.seq} was altered (its hash does not match its content)")
            prev = r.hash
        if rows and (head_row.seq != rows[-1].seq or head_row.hash != rows[-1].hash):
            problems.append("the head does not match the last entry (entries were removed)")
        if not rows and head_row.seq != 0:
            problems.append("the head records entries but the history is empty")
        problems.extend(self._check_closings(rows))
        problems.extend(self._check_scopes(rows, scope_rows))
        head_hash = rows[-1].hash if rows else store.GENESIS_HASH
        abandoned = sum(1 for r in rows if r.kind == "abandon")
        return VerifyReport(not problems, len(rows), head_hash, tuple(problems), abandoned)

    @staticmethod
    def _check_closings(rows: list[Any]) -> list[str]:
        """Each commit, failure or abandonment closes one earlier reservation of its scope,
        which nothing closed before (an abandonment added by hand would un-count a spend)."""
        problems = []
        reserved: dict[str, str] = {}
        closed: set[str] = set()
        for r in rows:
            if r.kind == "reserve":
                reserved[r.entry_id] = r.scope
            elif r.kind in _CLOSED_STATUS:
                if reserved.get(r.ref_id) != r.scope:
                    problems.append(f"entry {r.seq} closes no earlier reservation of its scope")
                elif r.ref_id in closed:
                    problems.append(f"entry {r.seq} closes a reservation that was already closed")
                closed.add(r.ref_id)
        return problems

    @staticmethod
    def _check_scopes(rows: list[Any], scope_rows: dict[str, Any]) -> list[str]:
        problems = []
        rebuilt: dict[str, tuple[Budget, ScopeState]] = {}
        # an abandoned reservation's event does not count, wherever its abandonment is
        abandoned = {r.ref_id for r in rows if r.kind == "abandon"}
        for r in rows:
            if r.kind == "budget":
                sc = Scope.parse(r.scope)
                state = rebuilt[r.scope][1] if r.scope in rebuilt else ScopeState()
                try:
                    rebuilt[r.scope] = (Budget.from_payload(sc, r.payload), state)
                except (ValueError, KeyError):
                    problems.append(f"entry {r.seq} holds an unreadable budget")
            elif r.kind == "reserve" and r.entry_id not in abandoned:
                if r.scope not in rebuilt:
                    problems.append(f"entry {r.seq} spends from scope {r.scope} before its budget")
                    continue
                budget, state = rebuilt[r.scope]
                try:
                    event = event_from_json(r.payload)
                except ConfigurationError:
                    problems.append(f"entry {r.seq} holds an unreadable event")
                    continue
                rebuilt[r.scope] = (budget, state.plus(event, budget.neighboring_relation))
        for name in sorted(set(rebuilt) | set(scope_rows)):
            if name not in scope_rows:
                problems.append(f"scope {name} is in the history but missing from the scope table")
                continue
            if name not in rebuilt:
                problems.append(f"scope {name} is in the scope table but has no history")
                continue
            budget, state = rebuilt[name]
            row = scope_rows[name]
            cached = (row.epsilon, row.delta, row.method, row.relation, row.alert_at)
            expected = (
                budget.epsilon,
                budget.delta,
                budget.method.value,
                budget.neighboring_relation.value,
                budget.alert_at,
            )
            if cached != expected:
                problems.append(f"scope {name}: the cached budget differs from the history")
            if not ScopeState.from_columns(row).close_to(state):
                problems.append(f"scope {name}: the cached spend differs from the history")
        return problems
