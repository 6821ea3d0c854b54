"""The query plan: contribution bounding and exact aggregation, as SQL that runs in the engine.

Everything that touches rows runs inside the engine (DuckDB, or Spark through the same SQL in
its dialect); Python receives one row per group. The plan bounds each privacy unit's
contribution as the literature does:

* values are clamped to their declared bounds;
* a unit contributes to at most ``K = max_groups_per_unit`` groups and at most
  ``k = max_rows_per_group`` rows in each, chosen at random when it has more.

The random choice needs window functions, which cost several times a plain aggregation. Most
units need no choice (they sit in one group with few rows), so the plan first aggregates per
unit, recognises those units (their smallest and largest group keys agree and they have at most
``k`` rows) and takes their totals as they are; only the other units' rows go through the
windows. On data where every unit is within its limits this costs about one GROUP BY per unit.

Per group the aggregate query returns the number of units, the number of (bounded) rows, and
per aggregated value the count of non-null values, their sum and their sum of squares (as the
estimators need). The leaf query returns, per group
and bin, the number of bounded rows (quantiles and histograms).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from sqlglot import exp

from veil.errors import ConfigurationError

__all__ = ["Moments", "Plan", "ValueSpec"]

SOURCE = "__veil_src"


class Moments:
    """Names of the per-value columns the aggregate query returns (``__c0``, ``__s0``, ...)."""

    COUNT = "c"  # non-null values
    SUM = "s"  # sum of clamped values
    SQUARES = "q"  # sum of squared clamped values


@dataclasses.dataclass(frozen=True)
class ValueSpec:
    """An aggregated value: its SQL expression, its bounds, and which of the moments
    (``Moments``: c, s, q) the estimators need."""

    sql: str
    low: float
    high: float
    moments: str = "csq"

    @property
    def midpoint(self) -> float:
        return (self.low + self.high) / 2.0

    @property
    def radius(self) -> float:
        return (self.high - self.low) / 2.0

    @property
    def magnitude(self) -> float:
        """The largest absolute value a clamped value can take."""
        return max(abs(self.low), abs(self.high))


def literal(value: Any) -> str:
    """A SQL literal for a key value."""
    if value is None:
        raise ConfigurationError("a public key cannot be NULL")
    return exp.convert(value).sql(dialect="duckdb")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Bounded aggregation of ``values`` per group of ``groups`` over the filtered source."""

    unit: str | None
    groups: tuple[str, ...]
    values: tuple[ValueSpec, ...]
    where: str | None
    keys: Mapping[str, tuple[Any, ...]]
    max_groups_per_unit: int
    max_rows_per_group: int

    # -- pieces --------------------------------------------------------------------------------

    @property
    def _group_cols(self) -> list[str]:
        return [f"__g{i}" for i in range(max(1, len(self.groups)))]

    def _source(self) -> str:
        cols = []
        if self.unit is not None:
            cols.append(f'"{self.unit}" AS __u')
        if self.groups:
            cols += [f'"{g}" AS __g{i}' for i, g in enumerate(self.groups)]
        else:
            cols.append("0 AS __g0")
        for i, v in enumerate(self.values):
            raw = f"CAST(({v.sql}) AS DOUBLE)"
            # A CASE keeps NULL as NULL (least/greatest would not) and runs about twice as fast.
            clamped = (
                f"CASE WHEN {raw} < {v.low!r} THEN {v.low!r} "
                f"WHEN {raw} > {v.high!r} THEN {v.high!r} ELSE {raw} END"
            )
            cols.append(f"{clamped} AS __x{i}")
        conditions = []
        if self.where is not None:
            conditions.append(f"({self.where})")
        for column, values in sorted(self.keys.items()):
            conditions.append(f'"{column}" IN ({", ".join(literal(v) for v in values)})')
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        return f"SELECT {', '.join(cols)} FROM {SOURCE}{where}"

    def _moment_aggs(self, prefix: str = "") -> list[str]:
        aggs = []
        for i, v in enumerate(self.values):
            x = f"{prefix}__x{i}"
            formulas = {"c": f"count({x})", "s": f"sum({x})", "q": f"sum({x} * {x})"}
            aggs += [f"{formulas[k]} AS __{k}{i}" for k in v.moments]
        return aggs

    def _moment_cols(self) -> list[str]:
        return [f"__{k}{i}" for i, v in enumerate(self.values) for k in v.moments]

    def _single_group(self) -> str:
        """SQL condition on the per-unit table: the unit's rows are all in one group."""
        parts = []
        for g in self._group_cols:
            parts.append(f"(n{g} = 0 OR n{g} = __rows) AND lo{g} IS NOT DISTINCT FROM hi{g}")
        return " AND ".join(parts)

    def _bounding_ctes(self) -> list[str]:
        """CTEs shared by both queries: per-unit summary, slow path with random choice."""
        k, big_k = self.max_rows_per_group, self.max_groups_per_unit
        groups = ", ".join(self._group_cols)
        per_unit = [
            f"min({g}) AS lo{g}, max({g}) AS hi{g}, count({g}) AS n{g}" for g in self._group_cols
        ]
        fast = f"({self._single_group()}) AND __rows <= {k}"
        return [
            f"rows AS ({self._source()})",
            f"pu AS (SELECT __u, {', '.join(per_unit)}, count(*) AS __rows"
            + (", " + ", ".join(self._moment_aggs()) if self.values else "")
            + " FROM rows GROUP BY __u)",
            f"fast_u AS (SELECT * FROM pu WHERE {fast})",
            f"slow_u AS (SELECT __u FROM pu WHERE NOT ({fast}))",
            "slow_rows AS (SELECT rows.*, random() AS __r FROM rows "
            "SEMI JOIN slow_u ON rows.__u = slow_u.__u)",
            f"ranked AS (SELECT *, row_number() OVER (PARTITION BY __u, {groups} ORDER BY __r) "
            "AS __rn FROM slow_rows)",
            f"kept AS (SELECT * FROM ranked WHERE __rn <= {k})",
            f"ug AS (SELECT __u, {groups}, random() AS __r2 FROM kept GROUP BY __u, {groups})",
            "picked AS (SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY __u ORDER BY "
            f"__r2) AS __gr FROM ug) WHERE __gr <= {big_k})",
        ]

    def _on_groups(self, left: str, right: str) -> str:
        conditions = [f"{left}.__u = {right}.__u"] + [
            f"{left}.{g} IS NOT DISTINCT FROM {right}.{g}" for g in self._group_cols
        ]
        return " AND ".join(conditions)

    # -- the two queries -----------------------------------------------------------------------

    def _contrib_ctes(self) -> list[str]:
        """The bounding CTEs ending in ``contrib``: one row per kept (unit, group) with the
        unit's bounded row count and moments there."""
        groups = ", ".join(self._group_cols)
        moments = self._moment_cols()
        fast_groups = ", ".join(f"lo{g} AS {g}" for g in self._group_cols)
        ctes = self._bounding_ctes()
        ctes.append(
            "slow_ug AS (SELECT kept.__u, "
            + ", ".join(f"kept.{g}" for g in self._group_cols)
            + ", count(*) AS __rows"
            + (", " + ", ".join(self._moment_aggs("kept.")) if self.values else "")
            + " FROM kept SEMI JOIN picked ON "
            + self._on_groups("kept", "picked")
            + f" GROUP BY kept.__u, {', '.join(f'kept.{g}' for g in self._group_cols)})"
        )
        tail = f", {', '.join(moments)}" if moments else ""
        ctes.append(
            f"contrib AS (SELECT __u, {fast_groups}, __rows{tail} FROM fast_u "
            f"UNION ALL SELECT __u, {groups}, __rows{tail} FROM slow_ug)"
        )
        return ctes

    def contributions_sql(self) -> str:
        """Every kept (unit, group) with its bounded contribution (for tests and audits of the
        bounding; a release never reads this)."""
        if self.unit is None:
            raise ConfigurationError("without a privacy unit there is nothing to bound")
        return "WITH " + ", ".join(self._contrib_ctes()) + " SELECT * FROM contrib"

    def aggregate_sql(self) -> str:
        """Per group: ``__units``, ``__rows`` and the moments ``__c/__s/__q{i}``."""
        groups = ", ".join(self._group_cols)
        moments = self._moment_cols()
        if self.unit is None:
            aggs = ["count(*) AS __units", "count(*) AS __rows", *self._moment_aggs()]
            return (
                f"WITH rows AS ({self._source()}) "
                f"SELECT {groups}, {', '.join(aggs)} FROM rows GROUP BY {groups}"
            )
        sums = ", ".join(f"sum({m}) AS {m}" for m in moments)
        return (
            "WITH " + ", ".join(self._contrib_ctes()) + f" SELECT {groups}, count(*) AS __units, "
            f"sum(__rows) AS __rows{', ' + sums if sums else ''} FROM contrib GROUP BY {groups}"
        )

    def leaf_sql(self, value: int, bin_sql: str) -> str:
        """Per group and bin (``__bin``, from ``bin_sql`` over ``__x``) the bounded row count
        ``__n``; rows whose bin is NULL are dropped."""
        groups = ", ".join(self._group_cols)
        binned = bin_sql.replace("__x", f"__x{value}")
        if self.unit is None:
            return (
                f"WITH rows AS ({self._source()}), b AS (SELECT {groups}, {binned} AS __bin "
                f"FROM rows) SELECT {groups}, __bin, count(*) AS __n FROM b "
                f"WHERE __bin IS NOT NULL GROUP BY {groups}, __bin"
            )
        ctes = self._bounding_ctes()
        cols = ", ".join([*self._group_cols, f"__x{value}"])
        kept_cols = ", ".join(f"kept.{c}" for c in [*self._group_cols, f"__x{value}"])
        ctes.append(
            f"bounded AS (SELECT {cols} FROM rows SEMI JOIN fast_u ON rows.__u = fast_u.__u "
            f"UNION ALL SELECT {kept_cols} FROM kept SEMI JOIN picked ON "
            + self._on_groups("kept", "picked")
            + ")"
        )
        ctes.append(f"b AS (SELECT {groups}, {binned} AS __bin FROM bounded)")
        return (
            "WITH " + ", ".join(ctes) + f" SELECT {groups}, __bin, count(*) AS __n FROM b "
            f"WHERE __bin IS NOT NULL GROUP BY {groups}, __bin"
        )


def leaf_bin_sql(low: float, high: float, leaves: int) -> str:
    """Leaf index in ``[0, leaves)`` of a clamped value ``__x`` on ``[low, high]`` (NULL stays
    NULL)."""
    if leaves < 1 or not math.isfinite(low) or not high > low:
        raise ConfigurationError("bad leaf grid")
    width = (high - low) / leaves
    return (
        f"CASE WHEN __x IS NULL THEN NULL "
        f"ELSE least(CAST(floor((__x - {low!r}) / {width!r}) AS BIGINT), {leaves - 1}) END"
    )


def histogram_bin_sql(edges: Sequence[float]) -> str:
    """Bin index of a value ``__x`` clamped to ``[edges[0], edges[-1]]``: bins are
    ``[e_i, e_{i+1})``, the last one closed (so values outside the edges, clamped, land in the
    first or last bin); NULL stays NULL."""
    cases = ["WHEN __x IS NULL THEN NULL"]
    cases += [f"WHEN __x < {e!r} THEN {i}" for i, e in enumerate(edges[1:-1])]
    cases.append(f"ELSE {len(edges) - 2}")
    return f"CASE {' '.join(cases)} END"
