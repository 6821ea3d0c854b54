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
    """A SQL literal for a key value (written directly: a thousand keys through sqlglot's
    renderer cost tens of milliseconds per release)."""
    if value is None:
        raise ConfigurationError("a public key cannot be NULL")
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"a public key must be finite, got {value!r}")
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
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
        # Public keys matter before aggregation only when units are bounded: rows outside them
        # must not use up a unit's groups. Without a unit, the release reads only the public
        # keys' groups from the result, and filtering after aggregation there is free, whereas
        # an IN list over every row costs as much as the aggregation itself.
        for column, values in sorted(self.keys.items()) if self.unit is not None else ():
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

    @property
    def _fast(self) -> str:
        """The unit is within its limits as it stands: one group, at most k rows there."""
        return f"({self._single_group()}) AND __rows <= {self.max_rows_per_group}"

    def _per_unit(self, *, moments: bool) -> str:
        """One pass over the source: per unit, its smallest and largest group keys, how many
        non-null keys and rows it has, and (with ``moments``) the totals of its values."""
        per_unit = [
            f"min({g}) AS lo{g}, max({g}) AS hi{g}, count({g}) AS n{g}" for g in self._group_cols
        ]
        aggs = self._moment_aggs() if moments else []
        return (
            f"SELECT __u, {', '.join(per_unit)}, count(*) AS __rows"
            + (", " + ", ".join(aggs) if aggs else "")
            + f" FROM ({self._source()}) AS r GROUP BY __u"
        )

    def _slow_ctes(self) -> list[str]:
        """The units over their limits: a random choice of at most k rows per group and K
        groups, by window functions over their rows only (a second pass over the source)."""
        k, big_k = self.max_rows_per_group, self.max_groups_per_unit
        groups = ", ".join(self._group_cols)
        return [
            f"pu AS ({self._per_unit(moments=False)})",
            f"slow_u AS (SELECT __u FROM pu WHERE NOT ({self._fast}))",
            f"slow_rows AS (SELECT r.*, random() AS __r FROM ({self._source()}) AS r "
            "SEMI JOIN slow_u ON r.__u = slow_u.__u)",
            f"ranked AS (SELECT *, row_number() OVER (PARTITION BY __u, {groups} ORDER BY __r) "
            "AS __rn FROM slow_rows)",
            f"kept AS (SELECT * FROM ranked WHERE __rn <= {k})",
            f"ug AS (SELECT __u, {groups}, random() AS __r2 FROM kept GROUP BY __u, {groups})",
            "picked AS (SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY __u ORDER BY "
            f"__r2) AS __gr FROM ug) WHERE __gr <= {big_k})",
            "slow_ug AS (SELECT kept.__u, "
            + ", ".join(f"kept.{g}" for g in self._group_cols)
            + ", count(*) AS __rows"
            + (", " + ", ".join(self._moment_aggs("kept.")) if self.values else "")
            + " FROM kept SEMI JOIN picked ON "
            + self._on_groups("kept", "picked")
            + f" GROUP BY kept.__u, {', '.join(f'kept.{g}' for g in self._group_cols)})",
        ]

    def _on_groups(self, left: str, right: str) -> str:
        conditions = [f"{left}.__u = {right}.__u"] + [
            f"{left}.{g} IS NOT DISTINCT FROM {right}.{g}" for g in self._group_cols
        ]
        return " AND ".join(conditions)

    # -- the queries ---------------------------------------------------------------------------

    def fast_sql(self) -> str:
        """Per group: ``__units``, ``__rows`` and the moments ``__c/__s/__q{i}`` of the units
        within their limits, and ``__slow``, how many other units there are (their totals come
        from :meth:`slow_sql`, needed only when ``__slow`` is not zero). One pass over the
        source, which DuckDB streams without buffering it."""
        groups = ", ".join(self._group_cols)
        moments = self._moment_cols()
        if self.unit is None:
            aggs = [
                "count(*) AS __units",
                "count(*) AS __rows",
                *self._moment_aggs(),
                "0 AS __slow",
            ]
            return (
                f"SELECT {groups}, {', '.join(aggs)} FROM ({self._source()}) AS r GROUP BY {groups}"
            )
        fast = self._fast
        cols = ", ".join(f"lo{g} AS {g}" for g in self._group_cols)
        aggs = [
            f"sum(CASE WHEN {fast} THEN 1 ELSE 0 END) AS __units",
            f"sum(CASE WHEN {fast} THEN __rows ELSE 0 END) AS __rows",
            *(f"sum(CASE WHEN {fast} THEN {m} ELSE 0 END) AS {m}" for m in moments),
            f"sum(CASE WHEN {fast} THEN 0 ELSE 1 END) AS __slow",
        ]
        lo_groups = ", ".join(f"lo{g}" for g in self._group_cols)
        return (
            f"SELECT {cols}, {', '.join(aggs)} FROM ({self._per_unit(moments=True)}) AS pu "
            f"GROUP BY {lo_groups}"
        )

    def slow_sql(self) -> str:
        """Per group, ``__units``, ``__rows`` and moments of the units over their limits, after
        the random choice of their rows and groups."""
        if self.unit is None:
            raise ConfigurationError("without a privacy unit there is nothing to bound")
        groups = ", ".join(self._group_cols)
        moments = self._moment_cols()
        sums = "".join(f", sum({m}) AS {m}" for m in moments)
        return (
            "WITH " + ", ".join(self._slow_ctes()) + f" SELECT {groups}, count(*) AS __units, "
            f"sum(__rows) AS __rows{sums} FROM slow_ug GROUP BY {groups}"
        )

    def contributions_sql(self) -> str:
        """Every kept (unit, group) with its bounded contribution, fast and slow path together
        (for tests and audits of the bounding; a release never reads this)."""
        if self.unit is None:
            raise ConfigurationError("without a privacy unit there is nothing to bound")
        moments = self._moment_cols()
        tail = "".join(f", {m}" for m in moments)
        fast_groups = ", ".join(f"lo{g} AS {g}" for g in self._group_cols)
        groups = ", ".join(self._group_cols)
        ctes = self._slow_ctes()
        ctes.append(f"all_pu AS ({self._per_unit(moments=True)})")
        return (
            "WITH " + ", ".join(ctes) + f" SELECT __u, {fast_groups}, __rows{tail} FROM all_pu "
            f"WHERE {self._fast} UNION ALL SELECT __u, {groups}, __rows{tail} FROM slow_ug"
        )

    def fast_leaf_sql(self, value: int, bin_sql: str) -> str:
        """Per group and bin (``__bin``, from ``bin_sql`` over ``__x``) the row count ``__n`` of
        the units within their limits (all their rows); NULL bins are dropped."""
        groups = ", ".join(self._group_cols)
        binned = bin_sql.replace("__x", f"__x{value}")
        tail = f"WHERE __bin IS NOT NULL GROUP BY {groups}, __bin"
        if self.unit is None:
            return (
                f"SELECT {groups}, __bin, count(*) AS __n FROM (SELECT {groups}, {binned} AS "
                f"__bin FROM ({self._source()}) AS r) AS b {tail}"
            )
        return (
            f"WITH pu AS ({self._per_unit(moments=False)}), "
            f"fast_u AS (SELECT __u FROM pu WHERE {self._fast}) "
            f"SELECT {groups}, __bin, count(*) AS __n FROM (SELECT {groups}, {binned} AS __bin "
            f"FROM ({self._source()}) AS r SEMI JOIN fast_u ON r.__u = fast_u.__u) AS b {tail}"
        )

    def slow_leaf_sql(self, value: int, bin_sql: str) -> str:
        """:meth:`fast_leaf_sql` for the rows chosen from the units over their limits."""
        groups = ", ".join(self._group_cols)
        binned = bin_sql.replace("__x", f"__x{value}")
        kept_cols = ", ".join(f"kept.{c}" for c in [*self._group_cols, f"__x{value}"])
        ctes = self._slow_ctes()
        ctes.append(
            f"bounded AS (SELECT {kept_cols} FROM kept SEMI JOIN picked ON "
            + self._on_groups("kept", "picked")
            + ")"
        )
        return (
            "WITH " + ", ".join(ctes) + f" SELECT {groups}, __bin, count(*) AS __n FROM "
            f"(SELECT {groups}, {binned} AS __bin FROM bounded) AS b WHERE __bin IS NOT NULL "
            f"GROUP BY {groups}, __bin"
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
