"""Differentially private statistics: counts, sums, means, variances, quantiles, histograms,
grouped or not, over CSV, Parquet, data frames or DuckDB tables, on DuckDB (or Spark).

    from veil.analytics import Dataset, Releaser, TableSpec
    from veil.ledger import Ledger

    census = Dataset("census.csv", TableSpec("census", bounds={"lweekinc": (0, 10)}))
    with Ledger("ledger.sqlite") as ledger:
        ledger.set_budget("census/row", epsilon=2, delta=1e-6)
        result = Releaser(ledger).release(
            census, "SELECT state, AVG(lweekinc) FROM census GROUP BY state",
            epsilon=1, delta=1e-6)

Needs ``pip install 'veil[analytics]'`` (DuckDB, sqlglot, pyarrow).
"""

from veil.analytics.engines import EngineKind
from veil.analytics.estimators import NoiseKind
from veil.analytics.query import AggKind, Aggregate, Query
from veil.analytics.release import Explanation, Release, Releaser
from veil.analytics.sources import Dataset
from veil.analytics.spec import TableSpec, load_specs
from veil.analytics.sql import parse_query
from veil.analytics.study import StudyRow, utility_study

__all__ = [
    "AggKind",
    "Aggregate",
    "Dataset",
    "EngineKind",
    "Explanation",
    "NoiseKind",
    "Query",
    "Release",
    "Releaser",
    "StudyRow",
    "TableSpec",
    "load_specs",
    "parse_query",
    "utility_study",
]
