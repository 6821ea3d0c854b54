"""The same plan on Apache Spark (local mode): the same exact aggregates as DuckDB before noise.

Needs pyspark and a Java runtime; `make test` installs both (scripts/ensure-system-deps.sh)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from veil.analytics import Dataset, NoiseKind, TableSpec
from veil.analytics.engines import DuckDBEngine, SparkEngine
from veil.analytics.release import _exact, prepare
from veil.datasets import data_path

if shutil.which("java") is None:
    if os.environ.get("VEIL_REQUIRE_ALL") == "1":  # set by `make test`: nothing may be skipped
        pytest.fail("no Java runtime: run scripts/ensure-system-deps.sh", pytrace=False)
    pytest.skip("no Java runtime for Spark", allow_module_level=True)

pyspark_sql = pytest.importorskip("pyspark.sql")


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    session = (
        pyspark_sql.SparkSession.builder.master("local[2]")
        .appName("veil-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    yield session
    session.stop()


def _sorted(frame: dict[str, np.ndarray], keys: list[str]) -> dict[str, list[Any]]:
    order = sorted(range(len(frame[keys[0]])), key=lambda i: tuple(str(frame[k][i]) for k in keys))
    return {k: [frame[k][i] for i in order] for k in frame}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], keys: list[str]) -> None:
    sa, sb = _sorted(a, keys), _sorted(b, keys)
    assert set(sa) == set(sb)
    for column in sa:
        left, right = sa[column], sb[column]
        if column in keys:
            assert [str(x) for x in left] == [str(x) for x in right], column
        else:
            np.testing.assert_allclose(
                np.asarray(left, dtype=float),
                np.asarray(right, dtype=float),
                rtol=1e-9,
                err_msg=column,
            )


def _both(dataset: Dataset, sql: str, spark: Any) -> tuple[Any, Any]:
    duck = DuckDBEngine(dataset)
    prepared = prepare(dataset, sql, duck, epsilon=1.0, delta=1e-6, noise=NoiseKind.LAPLACE)
    on_duckdb = _exact(prepared, duck)
    on_spark = _exact(prepared, SparkEngine(dataset, session=spark))
    duck.close()
    return on_duckdb, on_spark


def test_census_aggregates_and_quantile_leaves_match(spark: Any) -> None:
    census = Dataset(
        data_path("census2000.csv"), TableSpec("census2000", bounds={"lweekinc": (0.0, 10.0)})
    )
    duck, sp = _both(
        census,
        "SELECT state, AVG(lweekinc), VARIANCE(lweekinc), MEDIAN(lweekinc) FROM census2000 "
        "WHERE educ >= 12 GROUP BY state",
        spark,
    )
    _same(duck.aggregates, sp.aggregates, ["__g0"])
    _same(duck.leaves[0], sp.leaves[0], ["__g0", "__bin"])


def test_bounded_contributions_match(spark: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)  # test data only
    person = np.repeat(np.arange(400), rng.integers(1, 4, size=400))
    frame = pd.DataFrame(
        {
            "person": person,
            "grp": rng.integers(0, 5, size=person.size),
            "x": rng.normal(50, 20, size=person.size),
        }
    )
    frame.to_parquet(tmp_path / "people.parquet")
    # limits every unit already meets: the bounding keeps everything, deterministically
    loose = TableSpec(
        "people",
        privacy_unit="person",
        bounds={"x": (0.0, 100.0)},
        max_groups_per_unit=3,
        max_rows_per_group=3,
    )
    duck, sp = _both(
        Dataset(tmp_path / "people.parquet", loose),
        "SELECT grp, SUM(x), COUNT(*) FROM people GROUP BY grp",
        spark,
    )
    _same(duck.aggregates, sp.aggregates, ["__g0"])
    # tight limits: which rows and groups are kept is random, but how many is not
    tight = loose.replace(max_groups_per_unit=1, max_rows_per_group=1)
    duck, sp = _both(
        Dataset(tmp_path / "people.parquet", tight),
        "SELECT grp, COUNT(*) FROM people GROUP BY grp",
        spark,
    )
    assert int(np.sum(duck.aggregates["__units"])) == int(np.sum(sp.aggregates["__units"])) == 400
    assert int(np.sum(sp.aggregates["__rows"])) == 400
