"""Inputs: CSV and Parquet files, pandas / polars / Arrow frames, and DuckDB tables.

A :class:`Dataset` is registered in the engine as a view and read in place: DuckDB scans files
and Arrow memory directly, nothing is copied into Python row by row.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Any

from veil.analytics.spec import TableSpec
from veil.errors import ConfigurationError, DataError, MissingDependencyError

__all__ = ["Dataset"]

_CSV = {".csv", ".tsv", ".txt"}
_PARQUET = {".parquet", ".pq"}


def duckdb_module() -> Any:
    try:
        import duckdb
    except ImportError:
        raise MissingDependencyError("duckdb", "analytics") from None
    return duckdb


_database: Any = None
_database_lock = threading.Lock()


def _connection() -> Any:
    """A fresh connection to veil's one in-memory DuckDB database for this process.

    Opening a database costs about 15 ms, which is most of a small release's fixed cost; a
    cursor on a shared one costs microseconds. Each cursor is its own connection, so its temp
    views and registered frames are invisible to every other release.
    """
    global _database
    with _database_lock:
        if _database is None:
            _database = duckdb_module().connect()
        return _database.cursor()


def _table_name(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem).strip("_") or "data"
    return name if not name[0].isdigit() else f"t_{name}"


class Dataset:
    """A table to release statistics from, with its declaration.

    ``source`` is a path to a CSV or Parquet file, a pandas, polars or pyarrow table, or a pair
    ``(duckdb_connection, table_name)``. ``spec`` is the declaration (privacy unit, bounds,
    keys); its name is the table name SQL queries use (default: the file's stem).
    """

    def __init__(self, source: Any, spec: TableSpec | None = None) -> None:
        self._source = source
        self._kind, default_name = self._classify(source)
        self.spec = spec if spec is not None else TableSpec(default_name)
        if not isinstance(self.spec, TableSpec):
            raise ConfigurationError(f"spec must be a TableSpec, got {self.spec!r}")

    @staticmethod
    def _classify(source: Any) -> tuple[str, str]:
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            suffix = path.suffix.lower()
            if not path.exists():
                raise DataError(f"no such data file: {path}")
            if suffix in _CSV:
                return "csv", _table_name(path.stem)
            if suffix in _PARQUET:
                return "parquet", _table_name(path.stem)
            raise DataError(f"{path}: expected a .csv or .parquet file")
        if isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], str):
            return "duckdb", _table_name(source[1])
        module = type(source).__module__.split(".")[0]
        if module in ("pandas", "polars", "pyarrow"):
            return "frame", "data"
        raise DataError(
            f"cannot read {type(source).__name__}: give a CSV or Parquet path, a pandas / polars "
            "/ pyarrow table, or (duckdb_connection, table_name)"
        )

    @property
    def name(self) -> str:
        return self.spec.name

    def with_spec(self, spec: TableSpec) -> Dataset:
        """The same data with another declaration."""
        return Dataset(self._source, spec)

    @property
    def path(self) -> Path | None:
        return Path(self._source) if self._kind in ("csv", "parquet") else None

    # -- engine hand-off -----------------------------------------------------------------------

    def register(self, view: str) -> Any:
        """A DuckDB connection in which ``view`` reads this dataset in place."""
        if self._kind == "duckdb":
            con, table = self._source
            con.execute(f'CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM "{table}"')
            return con
        con = _connection()
        if self._kind == "csv":
            path = str(Path(self._source).resolve()).replace("'", "''")
            con.execute(f"CREATE TEMP VIEW {view} AS SELECT * FROM read_csv('{path}')")
        elif self._kind == "parquet":
            path = str(Path(self._source).resolve()).replace("'", "''")
            con.execute(f"CREATE TEMP VIEW {view} AS SELECT * FROM read_parquet('{path}')")
        else:
            frame = self._source
            if type(frame).__module__.split(".")[0] == "polars":
                frame = frame.to_arrow()
            con.register(f"{view}_frame", frame)
            con.execute(f"CREATE TEMP VIEW {view} AS SELECT * FROM {view}_frame")
        return con

    def fingerprint(self, con: Any, view: str) -> str:
        """Identifies the data's content, for the release cache: for files, the path, size
        and modification time; otherwise an order-independent hash of every row."""
        if self._kind in ("csv", "parquet"):
            path = Path(self._source).resolve()
            stat = path.stat()
            text = f"{self._kind}:{path}:{stat.st_size}:{stat.st_mtime_ns}"
        else:
            row = con.execute(
                f"SELECT count(*), sum(hash(COLUMNS(*))::HUGEINT) FROM {view}"
            ).fetchone()
            text = f"{self._kind}:{row}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
