"""The SQL front end: an analyst's ``SELECT`` becomes a :class:`~veil.analytics.query.Query`.

Supported::

    SELECT g1, g2, <statistic>, ... FROM table [WHERE condition] [GROUP BY g1, g2]

with statistics ``COUNT(*)``, ``COUNT(DISTINCT <privacy unit>)``, ``SUM(x)``, ``AVG(x)``,
``VARIANCE(x)`` / ``VAR_POP`` / ``VAR_SAMP``, ``STDDEV(x)`` / ``STDDEV_POP`` / ``STDDEV_SAMP``,
``MEDIAN(x)``, ``QUANTILE_CONT(x, q)`` (or a list of levels), ``PERCENTILE_CONT(q) WITHIN GROUP
(ORDER BY x)`` and ``HISTOGRAM(x, edge0, edge1, ...)``, where ``x`` is a column or a scalar
expression over columns. Anything else (joins, subqueries, HAVING, ORDER BY, LIMIT, window
functions, MIN/MAX, ...) is refused with an error that names it.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from veil.analytics.query import Aggregate, Query
from veil.errors import ConfigurationError

__all__ = ["parse_query"]

_VARIANCE = (exp.Variance, exp.VariancePop)
_STDDEV = (exp.Stddev, exp.StddevPop, exp.StddevSamp)
_REFUSED_AGGREGATES = {
    exp.Min: "MIN",
    exp.Max: "MAX",
    exp.ArrayAgg: "LIST/ARRAY_AGG",
    exp.ApproxDistinct: "APPROX_COUNT_DISTINCT",
}


def _unsupported(construct: str, hint: str = "") -> ConfigurationError:
    message = f"{construct} is not supported in a private query"
    return ConfigurationError(f"{message}; {hint}" if hint else message)


def _number(node: exp.Expression, what: str) -> float:
    value = node
    negative = False
    if isinstance(value, exp.Neg):
        negative, value = True, value.this
    if not isinstance(value, exp.Literal) or value.is_string:
        raise ConfigurationError(f"{what} must be a number, got {node.sql()}")
    number = float(value.this)
    return -number if negative else number


def _levels(node: exp.Expression) -> list[float]:
    if isinstance(node, exp.Array):
        return [_number(e, "a quantile level") for e in node.expressions]
    return [_number(node, "a quantile level")]


def _value(node: exp.Expression) -> str:
    if any(True for _ in node.find_all(exp.AggFunc)):
        raise _unsupported("an aggregate inside an aggregate")
    if any(True for _ in node.find_all(exp.Subquery, exp.Select)):
        raise _unsupported("a subquery")
    return node.sql(dialect="duckdb")


def _aggregates(node: exp.Expression, alias: str, privacy_unit: str | None) -> list[Aggregate]:
    for cls, name in _REFUSED_AGGREGATES.items():
        if isinstance(node, cls):
            raise _unsupported(f"{name}()", "extremes of private data cannot be released")
    if isinstance(node, exp.Count):
        arg = node.this
        if isinstance(arg, exp.Star) or (isinstance(arg, exp.Literal) and not arg.is_string):
            return [Aggregate.count(name=alias)]
        if isinstance(arg, exp.Distinct):
            cols = arg.expressions
            if (
                len(cols) == 1
                and isinstance(cols[0], exp.Column)
                and privacy_unit is not None
                and cols[0].name == privacy_unit
            ):
                return [Aggregate.count_units(name=alias)]
            raise _unsupported(
                f"COUNT(DISTINCT {', '.join(c.sql() for c in cols)})",
                "only COUNT(DISTINCT <privacy unit>) is; count rows with COUNT(*)",
            )
        raise _unsupported(f"COUNT({arg.sql()})", "use COUNT(*) with WHERE <column> IS NOT NULL")
    if isinstance(node, exp.Sum):
        return [Aggregate.sum(_value(node.this), name=alias)]
    if isinstance(node, exp.Avg):
        return [Aggregate.mean(_value(node.this), name=alias)]
    if isinstance(node, _VARIANCE):
        return [Aggregate.variance(_value(node.this), name=alias)]
    if isinstance(node, _STDDEV):
        return [Aggregate.stddev(_value(node.this), name=alias)]
    if isinstance(node, exp.Median):
        return [Aggregate.median(_value(node.this), name=alias)]
    if isinstance(node, exp.PercentileCont | exp.PercentileDisc | exp.Quantile):
        value_node = node.this
        level_node = node.args.get("expression") or node.args.get("quantile")
        if level_node is None:
            raise ConfigurationError(f"{node.sql()} needs a quantile level")
        levels = _levels(level_node)
        names = [alias] if alias and len(levels) == 1 else [""] * len(levels)
        return [
            Aggregate.quantile_of(_value(value_node), q, name=n)
            for q, n in zip(levels, names, strict=True)
        ]
    if isinstance(node, exp.WithinGroup):
        inner = node.this
        order = node.expression
        if not isinstance(inner, exp.PercentileCont | exp.PercentileDisc) or not isinstance(
            order, exp.Order
        ):
            raise _unsupported(node.sql())
        ordered = order.expressions[0]
        value = ordered.this if isinstance(ordered, exp.Ordered) else ordered
        levels = _levels(inner.this)
        names = [alias] if alias and len(levels) == 1 else [""] * len(levels)
        return [
            Aggregate.quantile_of(_value(value), q, name=n)
            for q, n in zip(levels, names, strict=True)
        ]
    if isinstance(node, exp.Anonymous) and node.name.upper() == "HISTOGRAM":
        args = node.expressions
        if len(args) < 3:
            raise ConfigurationError("HISTOGRAM(x, edge0, edge1, ...) needs at least two edges")
        edges = [_number(a, "a histogram edge") for a in args[1:]]
        return [Aggregate.histogram(_value(args[0]), edges, name=alias)]
    if isinstance(node, exp.AggFunc):
        raise _unsupported(f"the aggregate {node.sql()}")
    raise ConfigurationError(
        f"{node.sql()} is neither a grouping column nor a statistic; select the GROUP BY "
        "columns and statistics such as COUNT(*), AVG(x), SUM(x), MEDIAN(x)"
    )


def parse_query(sql: str, *, privacy_unit: str | None = None) -> Query:
    """Parse one ``SELECT`` into a :class:`Query`; errors name the unsupported construct."""
    try:
        statements = sqlglot.parse(sql, read="duckdb")
    except sqlglot.errors.ParseError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigurationError(f"cannot parse the SQL: {first}") from None
    statements = [s for s in statements if s is not None]
    if len(statements) != 1:
        raise ConfigurationError(f"give exactly one SELECT statement, got {len(statements)}")
    tree = statements[0]
    if isinstance(tree, exp.Union | exp.Except | exp.Intersect):
        raise _unsupported(type(tree).__name__.upper())
    if not isinstance(tree, exp.Select):
        raise ConfigurationError(f"only SELECT is supported, got {type(tree).__name__.upper()}")
    for key, construct in (
        ("with_", "WITH (a common table expression)"),
        ("joins", "JOIN"),
        ("having", "HAVING"),
        (
            "order",
            "ORDER BY",
        ),
        ("limit", "LIMIT"),
        ("offset", "OFFSET"),
        ("qualify", "QUALIFY"),
        ("windows", "WINDOW"),
    ):
        if tree.args.get(key):
            hints = {
                "ORDER BY": "sort the released table instead",
                "HAVING": "filter the released table instead",
                "LIMIT": "every group is released; filter the released table instead",
            }
            raise _unsupported(construct, hints.get(construct, ""))
    if tree.args.get("distinct"):
        raise _unsupported("SELECT DISTINCT", "use GROUP BY")
    if any(True for _ in tree.find_all(exp.Window)):
        raise _unsupported("a window function (OVER ...)")
    from_ = tree.args.get("from_") or tree.args.get("from")
    if from_ is None:
        raise ConfigurationError("the query needs FROM <table>")
    source = from_.this
    if not isinstance(source, exp.Table) or not isinstance(source.this, exp.Identifier):
        raise _unsupported("a FROM clause other than one table name")
    table = source.name
    if tree.args.get("where") is not None:
        condition = tree.args["where"].this
        if any(True for _ in condition.find_all(exp.Subquery, exp.Select)):
            raise _unsupported("a subquery in WHERE")
        if any(True for _ in condition.find_all(exp.AggFunc)):
            raise _unsupported("an aggregate in WHERE")
        where: str | None = condition.sql(dialect="duckdb")
    else:
        where = None
    group_by: list[str] = []
    group = tree.args.get("group")
    if group is not None:
        for g in group.expressions:
            if not isinstance(g, exp.Column):
                raise _unsupported(
                    f"GROUP BY {g.sql()}", "group by columns (bin values with HISTOGRAM)"
                )
            group_by.append(g.name)
    aggregates: list[Aggregate] = []
    for item in tree.expressions:
        if isinstance(item, exp.Star):
            raise _unsupported("SELECT *", "select statistics such as COUNT(*)")
        alias = item.alias if isinstance(item, exp.Alias) else ""
        node = item.unalias()
        if isinstance(node, exp.Column) and not any(True for _ in node.find_all(exp.AggFunc)):
            if node.name not in group_by:
                raise ConfigurationError(
                    f"column {node.name!r} is selected but not grouped by; add it to GROUP BY "
                    "or aggregate it"
                )
            continue
        aggregates.extend(_aggregates(node, alias, privacy_unit))
    if not aggregates:
        raise ConfigurationError("the query selects no statistic (COUNT(*), AVG(x), ...)")
    return Query(table=table, aggregates=tuple(aggregates), group_by=tuple(group_by), where=where)
