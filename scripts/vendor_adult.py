"""Convert UCI Adult's training split (../shared/data/adult/adult.data) into the Parquet file
vendored at src/veil/datasets/data/adult.parquet: named columns, whitespace trimmed, rows with
a missing value ('?') kept as NULL. Run once; the output is committed with its attribution."""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb

COLUMNS = {
    "age": "INTEGER", "workclass": "VARCHAR", "fnlwgt": "INTEGER", "education": "VARCHAR",
    "education_num": "INTEGER", "marital_status": "VARCHAR", "occupation": "VARCHAR",
    "relationship": "VARCHAR", "race": "VARCHAR", "sex": "VARCHAR", "capital_gain": "INTEGER",
    "capital_loss": "INTEGER", "hours_per_week": "INTEGER", "native_country": "VARCHAR",
    "income": "VARCHAR",
}


def main(source: str, target: str) -> None:
    cols = ", ".join(f"'{k}': 'VARCHAR'" for k in COLUMNS)
    select = ", ".join(
        f"CAST(NULLIF(trim(\"{k}\"), '?') AS {t}) AS \"{k}\"" for k, t in COLUMNS.items()
    )
    duckdb.sql(
        f"COPY (SELECT {select} FROM read_csv('{source}', header=false, columns={{{cols}}})) "
        f"TO '{target}' (FORMAT parquet, COMPRESSION zstd)"
    )
    print(duckdb.sql(f"SELECT count(*), count(DISTINCT education) FROM '{target}'").fetchall())


if __name__ == "__main__":
    here = Path(__file__).resolve().parents[1]
    main(
        sys.argv[1] if len(sys.argv) > 1 else str(here.parent / "shared/data/adult/adult.data"),
        str(here / "src/veil/datasets/data/adult.parquet"),
    )
