"""Engines run a plan's SQL where the data lives: DuckDB in-process (default), or Apache Spark.

An engine only executes SQL and hands back one row per group (or per group and bin) as numpy
arrays; the noise is always added in Python by veil's mechanisms.
"""

from __future__ import annotations

import abc
import enum
import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlglot

from veil.analytics.plan import SOURCE
from veil.analytics.sources import Dataset
from veil.errors import ConfigurationError, DataError, MissingDependencyError

__all__ = ["DuckDBEngine", "Engine", "EngineKind", "SparkEngine", "make_engine"]

_NUMERIC = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "UHUGEINT",
    "FLOAT",
    "DOUBLE",
    "REAL",
    "DECIMAL",
    "BOOLEAN",
)


def _with_nulls(column: Any) -> npt.NDArray[Any]:
    """A numpy column where SQL NULLs are None (DuckDB hands back masked arrays, whose plain
    conversion would turn a NULL key into 0)."""
    if isinstance(column, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(column)
        if mask.any():
            out = column.data.astype(object)
            out[mask] = None
            return np.asarray(out)
        return np.asarray(column.data)
    return np.asarray(column)


class EngineKind(enum.Enum):
    DUCKDB = "duckdb"
    SPARK = "spark"


class Engine(abc.ABC):
    """Runs SQL over one dataset registered as the view ``__veil_src``."""

    @abc.abstractmethod
    def columns(self) -> dict[str, str]:
        """Column name to type, from the schema only."""

    @abc.abstractmethod
    def expression_type(self, sql: str) -> str:
        """The type of a scalar SQL expression over the source (no data read)."""

    @abc.abstractmethod
    def fetch(self, sql: str) -> dict[str, npt.NDArray[Any]]:
        """Run a query (written in DuckDB's dialect) and return its columns."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Identifies the data's content, for the release cache."""

    def close(self) -> None:  # noqa: B027 - optional for engines
        """Release resources."""

    def check_values(self, values: list[str], where: str | None) -> None:
        """Refuse an empty table, or NaN / infinite values in an aggregated expression (before
        anything is spent)."""
        counts = ["count(*) AS n"]
        for i, v in enumerate(values):
            x = f"CAST(({v}) AS DOUBLE)"
            # written to run on every engine (Spark has no isinf, nor FILTER)
            counts.append(
                f"sum(CASE WHEN isnan({x}) OR abs({x}) = CAST('Infinity' AS DOUBLE) "
                f"THEN 1 ELSE 0 END) AS bad{i}"
            )
        result = self.fetch(f"SELECT {', '.join(counts)} FROM {SOURCE}")
        if int(result["n"][0]) == 0:
            raise DataError("the table is empty: there is nothing to release")
        for i, v in enumerate(values):
            bad = result[f"bad{i}"][0]
            if bad is not None and int(bad) > 0:
                raise DataError(
                    f"{v} has NaN or infinite values; clean them (or filter them out with WHERE) "
                    "before releasing"
                )
        del where

    @staticmethod
    def is_numeric(type_name: str) -> bool:
        upper = type_name.upper()
        return any(upper.startswith(t) for t in _NUMERIC)


class DuckDBEngine(Engine):
    """DuckDB in this process, reading the dataset in place."""

    def __init__(self, dataset: Dataset) -> None:
        self._dataset = dataset
        self._con = dataset.register(SOURCE)
        self._columns: dict[str, str] | None = None

    def columns(self) -> dict[str, str]:
        if self._columns is None:
            rows = self._con.execute(f"DESCRIBE {SOURCE}").fetchall()
            self._columns = {str(r[0]): str(r[1]) for r in rows}
        return dict(self._columns)

    def expression_type(self, sql: str) -> str:
        try:
            rel = self._con.execute(f"SELECT ({sql}) AS v FROM {SOURCE} LIMIT 0")
        except Exception as exc:
            raise ConfigurationError(f"cannot use {sql!r}: {str(exc).splitlines()[0]}") from None
        return str(rel.description[0][1])

    def fetch(self, sql: str) -> dict[str, npt.NDArray[Any]]:
        try:
            result = self._con.execute(sql).fetchnumpy()
        except Exception as exc:
            message = str(exc).splitlines()[0]
            raise DataError(f"the engine could not run the query: {message}") from None
        return {k: _with_nulls(v) for k, v in result.items()}

    def fingerprint(self) -> str:
        return self._dataset.fingerprint(self._con, SOURCE)

    def close(self) -> None:
        if self._dataset._kind != "duckdb":
            self._con.close()


class SparkEngine(Engine):
    """Apache Spark: the same plan, written as Spark SQL with sqlglot, on a ``SparkSession``.

    Needs ``pip install 'veil[spark]'`` and a Java runtime. The dataset must be a file (read by
    Spark where it lies) or a pandas frame.
    """

    def __init__(self, dataset: Dataset, session: Any | None = None) -> None:
        try:
            from pyspark.sql import SparkSession
        except ImportError:
            raise MissingDependencyError("pyspark", "spark") from None
        self._dataset = dataset
        self._spark = session or (
            SparkSession.builder.master("local[2]")
            .appName("veil")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", "8")
            .getOrCreate()
        )
        # veil reports failures itself, in one line; Spark's own logging would repeat them
        self._spark.sparkContext.setLogLevel("OFF")
        path = dataset.path
        if path is not None and path.suffix.lower() in (".parquet", ".pq"):
            frame = self._spark.read.parquet(str(path))
        elif path is not None:
            frame = self._spark.read.csv(str(path), header=True, inferSchema=True)
        elif type(dataset._source).__module__.split(".")[0] == "pandas":
            frame = self._spark.createDataFrame(dataset._source)
        else:
            raise ConfigurationError(
                "the Spark engine reads CSV or Parquet files and pandas frames"
            )
        frame.createOrReplaceTempView(SOURCE)
        self._duck = DuckDBEngine(dataset)  # schema questions and the fingerprint

    @staticmethod
    def translate(sql: str) -> str:
        """The same query in Spark SQL."""
        return sqlglot.transpile(sql, read="duckdb", write="spark")[0]

    def columns(self) -> dict[str, str]:
        return self._duck.columns()

    def expression_type(self, sql: str) -> str:
        return self._duck.expression_type(sql)

    def fetch(self, sql: str) -> dict[str, npt.NDArray[Any]]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pyspark warns about pandas 3 on every call
                frame = self._spark.sql(self.translate(sql)).toPandas()
        except Exception as exc:
            message = str(exc).splitlines()[0]
            raise DataError(f"Spark could not run the query: {message}") from None
        return {c: frame[c].to_numpy() for c in frame.columns}

    def fingerprint(self) -> str:
        return self._duck.fingerprint()

    def close(self) -> None:
        self._duck.close()


def make_engine(kind: EngineKind, dataset: Dataset) -> Engine:
    if kind is EngineKind.SPARK:
        return SparkEngine(dataset)
    return DuckDBEngine(dataset)
