"""The query model: what to compute, over which groups, on which rows.

A :class:`Query` is plain data, built without the data it will run on; SQL
(:mod:`veil.analytics.sql`) and the Python builders below produce the same objects. Its
:meth:`Query.canonical` form ignores how it was written (aliases, the order of ``AND`` terms),
which is how a repeated question is recognised and answered from the cache.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
from collections.abc import Sequence
from typing import Any

import sqlglot
from sqlglot import exp

from veil.errors import ConfigurationError

__all__ = ["AggKind", "Aggregate", "Query"]


class AggKind(enum.Enum):
    """The statistics veil releases."""

    COUNT = "count"  # rows
    COUNT_UNITS = "count_units"  # distinct privacy units
    SUM = "sum"
    MEAN = "mean"
    VARIANCE = "variance"
    STDDEV = "stddev"
    QUANTILE = "quantile"
    HISTOGRAM = "histogram"

    @property
    def needs_value(self) -> bool:
        return self not in (AggKind.COUNT, AggKind.COUNT_UNITS)


def _normalise_sql(text: str, what: str) -> str:
    """One canonical spelling of a scalar SQL expression (DuckDB dialect)."""
    try:
        tree = sqlglot.parse_one(text, read="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise ConfigurationError(f"cannot parse the {what} {text!r}: {exc}") from None
    return tree.sql(dialect="duckdb")


@dataclasses.dataclass(frozen=True)
class Aggregate:
    """One statistic: its kind, the value it aggregates (a column or a SQL expression), and for
    quantiles the level, for histograms the bin edges.

    Build with the class methods: ``Aggregate.mean("lweekinc")``, ``Aggregate.count()``,
    ``Aggregate.quantile("age", 0.5)``, ``Aggregate.histogram("age", [0, 18, 65, 120])``.
    """

    kind: AggKind
    value: str | None = None
    quantile: float | None = None
    edges: tuple[float, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.kind, AggKind):
            raise ConfigurationError(f"kind must be an AggKind, got {self.kind!r}")
        if self.kind.needs_value:
            if not isinstance(self.value, str) or not self.value.strip():
                raise ConfigurationError(f"{self.kind.value} needs a column or expression")
            object.__setattr__(self, "value", _normalise_sql(self.value, "aggregated value"))
        elif self.value is not None:
            raise ConfigurationError(f"{self.kind.value} takes no value")
        if self.kind is AggKind.QUANTILE:
            q = self.quantile
            if not isinstance(q, int | float) or isinstance(q, bool) or not 0 <= q <= 1:
                raise ConfigurationError(f"a quantile level must be in [0, 1], got {q!r}")
            object.__setattr__(self, "quantile", float(q))
        elif self.quantile is not None:
            raise ConfigurationError("only a quantile takes a level")
        if self.kind is AggKind.HISTOGRAM:
            try:
                edges = tuple(float(e) for e in self.edges)
            except (TypeError, ValueError):
                raise ConfigurationError(
                    f"histogram edges must be numbers: {self.edges!r}"
                ) from None
            if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
                raise ConfigurationError(
                    f"histogram edges must be at least two increasing numbers, got {edges!r}"
                )
            object.__setattr__(self, "edges", edges)
        elif self.edges:
            raise ConfigurationError("only a histogram takes edges")
        if not self.name:
            object.__setattr__(self, "name", self.default_name())

    def default_name(self) -> str:
        if self.kind is AggKind.COUNT:
            return "count"
        if self.kind is AggKind.COUNT_UNITS:
            return "count_units"
        base = "".join(c if c.isalnum() else "_" for c in str(self.value)).strip("_").lower()
        if self.kind is AggKind.QUANTILE:
            level = f"{self.quantile:g}".replace(".", "_")
            return f"q{level}_{base}" if self.quantile != 0.5 else f"median_{base}"
        prefix = {AggKind.MEAN: "avg"}.get(self.kind, self.kind.value)
        return f"{prefix}_{base}"

    def key(self) -> dict[str, Any]:
        """What identifies this statistic (not its display name)."""
        return {
            "kind": self.kind.value,
            "value": self.value,
            "quantile": self.quantile,
            "edges": list(self.edges),
        }

    # -- builders -----------------------------------------------------------------------------

    @classmethod
    def count(cls, *, name: str = "") -> Aggregate:
        return cls(AggKind.COUNT, name=name)

    @classmethod
    def count_units(cls, *, name: str = "") -> Aggregate:
        return cls(AggKind.COUNT_UNITS, name=name)

    @classmethod
    def sum(cls, value: str, *, name: str = "") -> Aggregate:
        return cls(AggKind.SUM, value, name=name)

    @classmethod
    def mean(cls, value: str, *, name: str = "") -> Aggregate:
        return cls(AggKind.MEAN, value, name=name)

    @classmethod
    def variance(cls, value: str, *, name: str = "") -> Aggregate:
        return cls(AggKind.VARIANCE, value, name=name)

    @classmethod
    def stddev(cls, value: str, *, name: str = "") -> Aggregate:
        return cls(AggKind.STDDEV, value, name=name)

    @classmethod
    def quantile_of(cls, value: str, level: float, *, name: str = "") -> Aggregate:
        return cls(AggKind.QUANTILE, value, quantile=level, name=name)

    @classmethod
    def median(cls, value: str, *, name: str = "") -> Aggregate:
        return cls(AggKind.QUANTILE, value, quantile=0.5, name=name)

    @classmethod
    def histogram(cls, value: str, edges: Sequence[float], *, name: str = "") -> Aggregate:
        return cls(AggKind.HISTOGRAM, value, edges=tuple(edges), name=name)


def _conjuncts(tree: Any) -> list[Any]:
    if isinstance(tree, exp.And):
        return _conjuncts(tree.left) + _conjuncts(tree.right)
    if isinstance(tree, exp.Paren):
        return _conjuncts(tree.this)
    return [tree]


@dataclasses.dataclass(frozen=True)
class Query:
    """Statistics over ``table``, grouped by ``group_by``, on the rows where ``where`` holds."""

    table: str
    aggregates: tuple[Aggregate, ...]
    group_by: tuple[str, ...] = ()
    where: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "aggregates", tuple(self.aggregates))
        object.__setattr__(self, "group_by", tuple(self.group_by))
        if not self.aggregates:
            raise ConfigurationError("a query needs at least one statistic")
        for a in self.aggregates:
            if not isinstance(a, Aggregate):
                raise ConfigurationError(f"not a statistic: {a!r}")
        names = [a.name for a in self.aggregates]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"two statistics have the same name: {names}")
        if len(set(self.group_by)) != len(self.group_by):
            raise ConfigurationError(f"a column is grouped by twice: {self.group_by}")
        if any(a.kind is AggKind.HISTOGRAM for a in self.aggregates) and len(self.aggregates) > 1:
            raise ConfigurationError(
                "a histogram is released on its own, not with other statistics"
            )
        if self.where is not None:
            object.__setattr__(self, "where", _normalise_sql(self.where, "filter"))

    def canonical(self) -> dict[str, Any]:
        """A form that two spellings of the same question share: aliases dropped, statistics,
        groups and ``AND``-ed conditions in a fixed order."""
        where = None
        if self.where is not None:
            terms = sorted(
                t.sql(dialect="duckdb")
                for t in _conjuncts(sqlglot.parse_one(self.where, read="duckdb"))
            )
            where = terms
        return {
            "table": self.table,
            "aggregates": sorted(
                (a.key() for a in self.aggregates), key=lambda k: json.dumps(k, sort_keys=True)
            ),
            "group_by": sorted(self.group_by),
            "where": where,
        }

    def columns(self) -> set[str]:
        """Every column the query reads (grouping, filter, aggregated values)."""
        cols = set(self.group_by)
        texts = [a.value for a in self.aggregates if a.value is not None]
        if self.where is not None:
            texts.append(self.where)
        for text in texts:
            cols.update(c.name for c in sqlglot.parse_one(text, read="duckdb").find_all(exp.Column))
        return cols
