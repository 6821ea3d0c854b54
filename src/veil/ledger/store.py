"""Where the ledger lives: one schema (SQLAlchemy Core) on SQLite or PostgreSQL.

Three tables:

* ``veil_ledger_entries`` is the append-only history. Every budget change, reservation, commit,
  failure and abandonment is a row; each row carries the SHA-256 hash of its content and of the
  previous row's hash, so altering, removing or inserting a past row breaks the chain.
* ``veil_ledger_head`` is one row holding the last sequence number and hash. Every write
  transaction locks it first (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write lock is
  taken by ``BEGIN IMMEDIATE``), which serialises appends across processes and makes the
  check-then-append of a reservation atomic.
* ``veil_ledger_scopes`` caches each scope's current budget and running accountant totals. It is
  derived from the entries (``verify`` rebuilds and compares it) and exists so that deciding a
  reservation does not re-read the history.

SQLite runs in WAL mode with ``synchronous=FULL``: a reservation is on disk before any noise is
drawn, so neither a killed process nor a power cut can lose a spend.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from veil.errors import ConfigurationError, LedgerError, MissingDependencyError

__all__ = ["default_url", "entries", "head", "make_engine", "metadata", "scopes"]

metadata = sa.MetaData()

entries = sa.Table(
    "veil_ledger_entries",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("scope", sa.String(400), nullable=False),
    sa.Column("entry_id", sa.String(32), nullable=False, unique=True),
    sa.Column("ref_id", sa.String(32), nullable=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("purpose", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index("ix_veil_ledger_entries_scope", "scope", "seq"),
    sa.Index("ix_veil_ledger_entries_ref", "ref_id"),
)

head = sa.Table(
    "veil_ledger_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# Released results, by a key that identifies the question (query, data, parameters): asking the
# same question again returns the stored answer without spending anything.
releases = sa.Table(
    "veil_ledger_releases",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("scope", sa.String(400), nullable=False),
    sa.Column("reservation_id", sa.String(32), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
)

meta = sa.Table(
    "veil_ledger_meta",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

scopes = sa.Table(
    "veil_ledger_scopes",
    metadata,
    sa.Column("scope", sa.String(400), primary_key=True),
    sa.Column("epsilon", sa.Float, nullable=False),
    sa.Column("delta", sa.Float, nullable=False),
    sa.Column("method", sa.String(16), nullable=False),
    sa.Column("relation", sa.String(32), nullable=False),
    sa.Column("alert_at", sa.Float, nullable=False),
    # running totals of the cheap accountants (see veil.ledger.accounting.ScopeState)
    sa.Column("spent_events", sa.BigInteger, nullable=False),
    sa.Column("spent_pure", sa.Float, nullable=True),
    sa.Column("spent_zcdp", sa.Float, nullable=True),
    sa.Column("spent_rdp", sa.LargeBinary, nullable=True),
    sa.Column("spent_epsilon", sa.Float, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
)

GENESIS_HASH = "0" * 64


class HotStatements:
    """The statements of the spending path as plain SQL for the driver (no compilation per call).

    A reservation holds the ledger's write lock while it runs them, so every microsecond spent
    here is a microsecond every other spender waits; SQLAlchemy's statement construction and
    compilation cost more than the database work itself.
    """

    _SQL: ClassVar[dict[str, str]] = {
        "lock_head": "SELECT seq, hash FROM veil_ledger_head WHERE id = 1",
        "save_head": "UPDATE veil_ledger_head SET seq = :new_seq, hash = :new_hash WHERE id = 1",
        "insert_entry": (
            "INSERT INTO veil_ledger_entries (seq, kind, scope, entry_id, ref_id, payload, actor, "
            "purpose, created_at, prev_hash, hash) VALUES (:seq, :kind, :scope, :entry_id, "
            ":ref_id, :payload, :actor, :purpose, :created_at, :prev_hash, :hash)"
        ),
        "select_scope": "SELECT * FROM veil_ledger_scopes WHERE scope = :scope_name",
        "update_spent": (
            "UPDATE veil_ledger_scopes SET spent_events = :spent_events, spent_pure = :spent_pure, "
            "spent_zcdp = :spent_zcdp, spent_rdp = :spent_rdp, spent_epsilon = :spent_epsilon, "
            "last_seq = :last_seq WHERE scope = :scope_name"
        ),
        "closing_of": "SELECT kind FROM veil_ledger_entries WHERE ref_id = :reservation_id",
        "entry_kind": "SELECT kind, scope FROM veil_ledger_entries WHERE entry_id = :entry_id",
    }

    def __init__(self, dialect: str) -> None:
        for name, sql in self._SQL.items():
            if dialect == "postgresql":
                sql = re.sub(r":([a-z_]+)", r"%(\1)s", sql)
                if name == "lock_head":
                    sql += " FOR UPDATE"
            setattr(self, name, sql)

    lock_head: str
    save_head: str
    insert_entry: str
    select_scope: str
    update_spent: str
    closing_of: str
    entry_kind: str


def default_url() -> str:
    """``$VEIL_LEDGER_URL``, else a SQLite file in the user's data directory."""
    url = os.environ.get("VEIL_LEDGER_URL")
    if url:
        return url
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'veil' / 'ledger.sqlite'}"


def normalise_url(url: str) -> str:
    """Accept a plain file path for SQLite and bare ``postgresql://`` URLs (psycopg 3)."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control from the sqlite3 module so that BEGIN IMMEDIATE can be issued.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 120000")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = FULL")
    cursor.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    if conn.get_execution_options().get("veil_write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def first_line(exc: BaseException) -> str:
    """The first line of a database error (drivers add SQL and hints on further lines)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


def _describe(url: str) -> str:
    """A URL fit for an error message: never the password."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return url.split("://", 1)[0] + "://..." if "://" in url else "(unreadable URL)"


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for ``url`` with the settings the ledger relies on.

    With ``create`` the schema (and for SQLite the file) is created if missing; without it a
    ledger that does not exist yet is an error (a mistyped path must not look like an empty,
    valid ledger).
    """
    url = normalise_url(url)
    try:
        parsed = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigurationError(
            f"not a database URL: {_describe(url)}; give a SQLite file path or "
            "postgresql://user@host/database"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            raise ConfigurationError(
                "the ledger needs a SQLite file (an in-memory database would forget every spend)"
            )
        if not create and not Path(database).exists():
            raise LedgerError(
                f"there is no ledger at {database}; check --ledger or VEIL_LEDGER_URL, or set a "
                "budget first (veil ledger budget set ...)"
            )
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url)
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        sa.event.listen(engine, "begin", _sqlite_on_begin)
    elif backend == "postgresql":
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise MissingDependencyError("psycopg", "postgres") from None
        engine = sa.create_engine(url, pool_pre_ping=True)
    else:
        raise ConfigurationError(
            f"unsupported ledger database {backend!r}: use a SQLite file or a PostgreSQL URL"
        )
    try:
        if create:
            _create_schema(engine)
        elif not sa.inspect(engine).has_table(head.name):
            raise LedgerError(f"there is no veil ledger in {_describe(url)}")
    except (sa.exc.DBAPIError, ValueError) as exc:
        engine.dispose()
        raise LedgerError(
            f"cannot open the ledger at {_describe(url)}: {first_line(exc)}"
        ) from None
    except LedgerError:
        engine.dispose()
        raise
    return engine


def writer_lock_path(url: str) -> str | None:
    """For a SQLite ledger, the file that veil's writers lock (``flock``) before writing.

    SQLite's own lock makes a waiting writer poll with growing sleeps (up to 100 ms), which
    starves concurrent spenders; waiting on a kernel file lock instead wakes the next writer as
    soon as the lock is free. SQLite's ``BEGIN IMMEDIATE`` still guards against other writers.
    """
    parsed = sa.engine.make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return f"{parsed.database}.lock"


def _create_schema(engine: Engine) -> None:
    with engine.connect().execution_options(veil_write=True) as conn, conn.begin():
        if engine.dialect.name == "postgresql":
            # Serialise schema creation between processes that start at the same moment.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7306245)")
        metadata.create_all(conn, checkfirst=True)
        if engine.dialect.name == "postgresql":
            # Two processes creating the schema at once: make the head insert idempotent.
            conn.exec_driver_sql(
                "INSERT INTO veil_ledger_head (id, seq, hash) VALUES (1, 0, %(h)s) "
                "ON CONFLICT (id) DO NOTHING",
                {"h": GENESIS_HASH},
            )
        else:
            conn.exec_driver_sql(
                "INSERT OR IGNORE INTO veil_ledger_head (id, seq, hash) VALUES (1, 0, ?)",
                (GENESIS_HASH,),
            )
