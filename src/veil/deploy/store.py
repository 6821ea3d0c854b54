"""The coordinator's database: one checkpoint per closed round, and which ledger reservation
pays for which round (SQLite, standard library).

Order of writes in a private round, and what a restart finds:

1. the ledger reserves round ``r``'s cost (pending); ``reserved(r, entry_id)`` notes it here;
2. the round runs; under distributed DP, ``set_meta("exposed:<entry_id>")`` is written before
   any client is asked for its unmasking shares;
3. ``checkpoint(r, state, metrics)`` once it is closed;
4. the reservation is committed in the ledger. (A round that released nothing, distributed
   DP's round aborted before any unmasking share was asked for, has its reservation abandoned
   before 3 instead.)

The coordinator's ``_resume`` settles every pending reservation from these notes (see
docs/deploy.md, *Restarts and the privacy budget*): killed before 1's note, the entry is found
by its purpose; killed before 3, it is abandoned (the round runs again under a new one) unless
it was exposed, then failed (counted); killed between 3 and 4, it is committed. Either way no
release is charged twice and none is left uncounted.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["StateStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    round INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    state BLOB NOT NULL,
    metrics TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
    round INTEGER PRIMARY KEY,
    entry_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def _pack(state: Mapping[str, Any]) -> bytes:
    """Arrays into an ``.npz``; everything else (numbers, lists, None) into its JSON entry."""
    arrays: dict[str, np.ndarray] = {}
    plain: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            arrays[prefix] = value
            return {"__array__": prefix}
        if isinstance(value, Mapping):
            return {k: walk(f"{prefix}.{k}", v) for k, v in value.items()}
        return value

    plain = walk("state", state)
    buf = io.BytesIO()
    arrays["__json__"] = np.frombuffer(json.dumps(plain).encode(), dtype=np.uint8)
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _unpack(blob: bytes) -> dict[str, Any]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        plain = json.loads(npz["__json__"].tobytes().decode())
        arrays = {k: npz[k] for k in npz.files if k != "__json__"}

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"__array__"}:
                return arrays[value["__array__"]]
            return {k: walk(v) for k, v in value.items()}
        return value

    out = walk(plain)
    assert isinstance(out, dict)
    return out


class StateStore:
    """Checkpoints and reservations of one coordinator (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def checkpoint(self, round: int, state: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """Durably keep the state after round ``round`` (before its spend is committed)."""
        self._db.execute(
            "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)",
            (round, time.time(), _pack(state), json.dumps(metrics, sort_keys=True)),
        )

    def latest(self) -> tuple[int, dict[str, Any]] | None:
        row = self._db.execute(
            "SELECT round, state FROM checkpoints ORDER BY round DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (int(row[0]), _unpack(row[1]))

    def history(self) -> list[dict[str, Any]]:
        """Each checkpointed round's metrics, oldest first."""
        rows = self._db.execute("SELECT round, created_at, metrics FROM checkpoints ORDER BY round")
        return [{"round": r, "at": at, **json.loads(m)} for r, at, m in rows]

    def reserved(self, round: int, entry_id: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO reservations VALUES (?, ?)", (round, entry_id))

    def round_of(self, entry_id: str) -> int | None:
        """The latest round noted as paid by ledger entry ``entry_id`` (one round, except in a
        store written by a version that carried a reservation over to the next round)."""
        row = self._db.execute(
            "SELECT MAX(round) FROM reservations WHERE entry_id = ?", (entry_id,)
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def reservation(self, round: int) -> str | None:
        row = self._db.execute(
            "SELECT entry_id FROM reservations WHERE round = ?", (round,)
        ).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])
