"""Table declarations, the query model and the SQL front end."""

from __future__ import annotations

from pathlib import Path

import pytest

from veil.analytics import AggKind, Aggregate, Query, TableSpec, load_specs, parse_query
from veil.errors import ConfigurationError


def test_spec_validates_and_loads_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "tables.toml"
    path.write_text(
        '[census]\nprivacy_unit = "person"\nmax_groups_per_unit = 2\n'
        "[census.bounds]\nlweekinc = [0, 10]\n[census.keys]\nstate = ['A', 'B']\n"
    )
    spec = load_specs(path)["census"]
    assert spec == TableSpec(
        "census",
        privacy_unit="person",
        bounds={"lweekinc": (0.0, 10.0)},
        keys={"state": ("A", "B")},
        max_groups_per_unit=2,
    )
    for bad in (
        {"bounds": {"x": (1, 1)}},
        {"bounds": {"x": (0, float("inf"))}},
        {"bounds": {"x": "0:1"}},
        {"keys": {"x": []}},
        {"keys": {"x": "abc"}},
        {"max_groups_per_unit": 0},
        {"max_rows_per_group": 2},  # without a privacy unit
        {"privacy_unit": "a b"},
    ):
        with pytest.raises(ConfigurationError):
            TableSpec("t", **bad)  # type: ignore[arg-type]
    path.write_text("[census]\nbound = 3\n")
    with pytest.raises(ConfigurationError, match="unknown settings"):
        load_specs(path)
    with pytest.raises(ConfigurationError, match="no such"):
        load_specs(tmp_path / "missing.toml")


def test_sql_maps_onto_the_query_model() -> None:
    q = parse_query(
        "SELECT state, AVG(lweekinc) AS m, COUNT(*), COUNT(DISTINCT person), "
        "QUANTILE_CONT(x, [0.25, 0.75]), MEDIAN(x), STDDEV(x), VAR_POP(x), SUM(x), "
        "PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY x), "
        "AVG(CASE WHEN income = '>50K' THEN 1 ELSE 0 END) AS rich "
        "FROM census WHERE educ >= 12 AND state <> 'X' GROUP BY state",
        privacy_unit="person",
    )
    assert q.table == "census"
    assert q.group_by == ("state",)
    kinds = [(a.kind, a.value, a.quantile) for a in q.aggregates]
    assert kinds == [
        (AggKind.MEAN, "lweekinc", None),
        (AggKind.COUNT, None, None),
        (AggKind.COUNT_UNITS, None, None),
        (AggKind.QUANTILE, "x", 0.25),
        (AggKind.QUANTILE, "x", 0.75),
        (AggKind.QUANTILE, "x", 0.5),
        (AggKind.STDDEV, "x", None),
        (AggKind.VARIANCE, "x", None),
        (AggKind.SUM, "x", None),
        (AggKind.QUANTILE, "x", 0.9),
        (AggKind.MEAN, "CASE WHEN income = '>50K' THEN 1 ELSE 0 END", None),
    ]
    assert q.aggregates[0].name == "m"
    assert q.aggregates[-1].name == "rich"
    histogram = parse_query("SELECT HISTOGRAM(age, 0, 18, 65, 120) FROM people")
    assert histogram.aggregates[0] == Aggregate.histogram("age", [0, 18, 65, 120])


def test_the_same_question_spelled_differently_is_recognised() -> None:
    a = parse_query("SELECT a, SUM(x) AS total FROM t WHERE c < 2 AND b > 1 GROUP BY a")
    b = parse_query("select a, sum(x) from t where (b > 1 and c < 2) group by a")
    c = parse_query("select a, sum(x) from t where b > 1 group by a")
    assert a.canonical() == b.canonical()
    assert a.canonical() != c.canonical()
    built = Query("t", (Aggregate.sum("x"),), group_by=("a",), where="b > 1 AND c < 2")
    assert built.canonical() == a.canonical()


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("SELECT a, MAX(x) FROM t GROUP BY a", "MAX()"),
        ("SELECT * FROM t", "SELECT *"),
        ("SELECT a, COUNT(*) FROM t JOIN u ON t.a = u.a GROUP BY a", "JOIN"),
        ("SELECT a, COUNT(*) FROM t GROUP BY a HAVING COUNT(*) > 3", "HAVING"),
        ("SELECT a, COUNT(*) FROM t GROUP BY a ORDER BY a", "ORDER BY"),
        ("SELECT COUNT(*) FROM t LIMIT 3", "LIMIT"),
        ("SELECT COUNT(*) FROM (SELECT * FROM t)", "FROM clause"),
        ("SELECT COUNT(*) FROM t WHERE a IN (SELECT a FROM u)", "subquery"),
        ("WITH v AS (SELECT 1) SELECT COUNT(*) FROM v", "WITH"),
        ("SELECT COUNT(*) FROM t UNION SELECT COUNT(*) FROM u", "UNION"),
        ("SELECT a, SUM(x) OVER () FROM t", "window function"),
        ("SELECT COUNT(DISTINCT a) FROM t", "COUNT(DISTINCT a)"),
        ("SELECT COUNT(x) FROM t", "COUNT(x)"),
        ("SELECT b, COUNT(*) FROM t GROUP BY a", "not grouped by"),
        ("SELECT a + 1, COUNT(*) FROM t GROUP BY a + 1", "GROUP BY a + 1"),
        ("SELECT SUM(AVG(x)) FROM t", "aggregate inside an aggregate"),
        ("SELECT COUNT(*) FROM t; SELECT 1", "exactly one"),
        ("SELECT HISTOGRAM(x, 1) FROM t", "two edges"),
        ("SELECT QUANTILE_CONT(x, 1.5) FROM t", "[0, 1]"),
        ("SELEC COUNT(*) FROM t", ""),
    ],
)
def test_unsupported_sql_is_a_clear_error_naming_the_construct(sql: str, named: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_query(sql, privacy_unit="person")
    assert named in str(info.value)
