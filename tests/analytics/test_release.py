"""Releases end to end: values, intervals, noise scale, partition selection, budget, cache,
inputs, and bad input that spends nothing. Statistical checks use fixed seeds; each states
its false-alarm rate."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from scipy import stats

from veil.analytics import Dataset, NoiseKind, Releaser, TableSpec
from veil.analytics.engines import DuckDBEngine
from veil.analytics.estimators import NoisyVector
from veil.analytics.release import _Computation, _exact, prepare
from veil.errors import BudgetExceededError, ConfigurationError, DataError
from veil.ledger import Ledger
from veil.privacy.random import InsecureSeededRandom

CENSUS_AVG = "SELECT state, AVG(lweekinc) FROM census2000 GROUP BY state"


def truth(dataset: Dataset, sql: str) -> dict[Any, float]:
    con = dataset.register("t")
    rows = con.execute(sql.replace(dataset.name, "t")).fetchall()
    return {r[0]: float(r[1]) for r in rows}


def _exact_for(dataset: Dataset, sql: str, *, epsilon: float, delta: float = 0.0) -> Any:
    """The prepared query and the engine's exact aggregates (nothing released, nothing spent)."""
    engine = DuckDBEngine(dataset)
    prepared = prepare(dataset, sql, engine, epsilon=epsilon, delta=delta, noise=NoiseKind.LAPLACE)
    exact = _exact(prepared, engine)
    engine.close()
    return prepared, exact


def test_census_mean_per_state_is_close_to_the_truth(census: Dataset, ledger: Ledger) -> None:
    ledger.set_budget("census2000/row", epsilon=10, delta=1e-5)
    releaser = Releaser(ledger, rng=InsecureSeededRandom(1))
    result = releaser.release(census, CENSUS_AVG, epsilon=5.0, delta=1e-6)
    assert result.columns == ("state", "value", "ci_low", "ci_high")
    true = truth(census, CENSUS_AVG)
    released = {r["state"]: r for r in result.records}
    assert set(released) <= set(true)
    assert len(released) >= 45  # small states may fall below the selection threshold
    inside = 0
    for state, r in released.items():
        assert 0.0 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 10.0
        assert abs(r["value"] - true[state]) < 0.25
        inside += r["ci_low"] <= true[state] <= r["ci_high"]
    assert inside / len(released) >= 0.9  # 95 % intervals (conservative by construction)
    status = ledger.status("census2000/row")
    assert status.events == 1
    assert status.spent_epsilon == pytest.approx(5.0, abs=1e-3)


def test_every_statistic_in_one_query(census: Dataset, ledger: Ledger) -> None:
    ledger.set_budget("census2000/row", epsilon=100, delta=1e-5)
    result = Releaser(ledger, rng=InsecureSeededRandom(2)).release(
        census,
        "SELECT COUNT(*), SUM(educ), AVG(lweekinc), VARIANCE(lweekinc), STDDEV(lweekinc), "
        "MEDIAN(lweekinc), QUANTILE_CONT(lweekinc, [0.1, 0.9]) FROM census2000",
        epsilon=50.0,
    )
    [r] = result.records
    con = census.register("t")
    (n, total, mean, var, std, med, q1, q9) = con.execute(
        "SELECT count(*), sum(educ), avg(lweekinc), var_pop(least(greatest(lweekinc, 0), 10)), "
        "stddev_pop(least(greatest(lweekinc, 0), 10)), median(lweekinc), "
        "quantile_cont(lweekinc, 0.1), quantile_cont(lweekinc, 0.9) FROM t"
    ).fetchone()
    assert r["count"] == pytest.approx(n, abs=10)
    assert r["sum_educ"] == pytest.approx(total, rel=1e-3)
    assert r["avg_lweekinc"] == pytest.approx(mean, abs=0.01)
    assert r["variance_lweekinc"] == pytest.approx(var, rel=0.05)
    assert r["stddev_lweekinc"] == pytest.approx(std, rel=0.03)
    width = 10 / 1024  # quantiles come from a tree of 1024 leaves on [0, 10]
    for name, value in (("median_lweekinc", med), ("q0_1_lweekinc", q1), ("q0_9_lweekinc", q9)):
        assert abs(r[name] - value) <= 3 * width
        assert r[f"{name}_ci_low"] - width <= value <= r[f"{name}_ci_high"] + width


def _laplace_pmf(t: float) -> Any:
    def pmf(k: np.ndarray) -> np.ndarray:
        p = math.exp(-1 / t)
        return (1 - p) / (1 + p) * np.exp(-np.abs(k) / t)

    return pmf


def _noise_fits(noise: np.ndarray, t: float) -> float:
    """p-value of a chi-square test of integer noise against discrete Laplace of scale t."""
    support = np.arange(int(noise.min()) - 1, int(noise.max()) + 2)
    expected = _laplace_pmf(t)(support) * noise.size
    keep = expected >= 20
    observed = np.array([(noise == s).sum() for s in support[keep]], dtype=float)
    exp_kept = expected[keep]
    observed = np.append(observed, noise.size - observed.sum())
    exp_kept = np.append(exp_kept, noise.size - exp_kept.sum())
    return float(stats.chisquare(observed, exp_kept).pvalue)


def test_count_noise_matches_the_declared_epsilon_and_sensitivity(people_table: Any) -> None:
    """Counts with K = 2 groups and k = 3 rows per unit need scale K k / epsilon. The same test
    rejects a release that forgot the row bound (scale K / epsilon). False alarm: 1e-4."""
    data = people_table(3000, seed=3)
    spec = TableSpec(
        "people",
        privacy_unit="person",
        max_groups_per_unit=2,
        max_rows_per_group=3,
        keys={"grp": tuple(range(20))},
    )
    dataset = Dataset(pd.DataFrame(data), spec)
    prepared, exact = _exact_for(
        dataset, "SELECT grp, COUNT(*) FROM people GROUP BY grp", epsilon=0.8, delta=0.0
    )
    true_counts = exact.aggregates["__rows"].astype(float)
    order = np.argsort(exact.aggregates["__g0"])
    true_counts = true_counts[order]

    def noise_sample(p: Any) -> np.ndarray:
        rng = InsecureSeededRandom(11)
        draws = [
            np.array([r["value"] for r in _Computation(p, exact, rng, 0.05).run()[1]]) - true_counts
            for _ in range(400)
        ]
        return np.concatenate(draws)

    right = noise_sample(prepared)
    assert _noise_fits(right, 2 * 3 / 0.8) > 1e-4
    [stat] = prepared.statistics
    label, vector = stat.vectors[0]
    bug = NoisyVector(vector.label, 2 * 1, math.sqrt(2), 2, True, 0.8, 0.0, NoiseKind.LAPLACE)
    stat.vectors[0] = (label, bug)
    assert _noise_fits(noise_sample(prepared), 2 * 3 / 0.8) < 1e-4


def test_sums_are_unbiased(people_table: Any) -> None:
    data = people_table(2000, seed=5)
    spec = TableSpec(
        "people",
        privacy_unit="person",
        bounds={"income": (0.0, 60000.0)},
        max_groups_per_unit=3,
        max_rows_per_group=4,
        keys={"grp": tuple(range(20))},
    )
    dataset = Dataset(pa.table(data), spec)
    prepared, exact = _exact_for(
        dataset, "SELECT grp, SUM(income) FROM people GROUP BY grp", epsilon=1.0, delta=0.0
    )
    order = np.argsort(exact.aggregates["__g0"])
    true_sums = exact.aggregates["__s0"].astype(float)[order]
    rng = InsecureSeededRandom(7)
    draws = np.array(
        [
            [r["value"] for r in _Computation(prepared, exact, rng, 0.05).run()[1]]
            for _ in range(300)
        ]
    )
    scale = 3 * 4 * 60000 / 1.0
    standard_error = math.sqrt(2) * scale / math.sqrt(300)
    # each group's mean error is within 4.5 standard errors (false alarm about 1e-4 over 20)
    assert np.all(np.abs(draws.mean(axis=0) - true_sums) < 4.5 * standard_error)


def test_partition_selection_releases_a_lonely_unit_no_more_than_delta_allows() -> None:
    """A group that holds one unit is released with probability P(1 + Z >= tau), which is at
    most the selection's delta; measured over 4,000 runs (false alarm about 1e-6)."""
    rows = {"person": [0, *list(range(1, 201))], "grp": ["lonely"] + ["crowd"] * 200}
    spec = TableSpec("t", privacy_unit="person")
    dataset = Dataset(pd.DataFrame(rows), spec)
    prepared, exact = _exact_for(
        dataset, "SELECT grp, COUNT(*) FROM t GROUP BY grp", epsilon=1.0, delta=0.2
    )
    assert prepared.selection is not None
    t = 1 / prepared.selection.epsilon
    p = math.exp(-1 / t)
    chance = p ** (prepared.threshold - 1) / (1 + p)  # P(Z >= tau - 1)
    assert chance <= prepared.selection_delta * (1 + 1e-9)
    assert prepared.selection_delta <= 0.2
    rng = InsecureSeededRandom(13)
    runs = 4000
    released = sum(
        any(r["grp"] == "lonely" for r in _Computation(prepared, exact, rng, 0.05).run()[1])
        for _ in range(runs)
    )
    sd = math.sqrt(chance * (1 - chance) / runs)
    assert released / runs <= chance + 5 * sd
    assert released / runs >= chance - 5 * sd  # and the threshold is not needlessly high


def test_differencing_attack_is_charged_twice_and_gains_nothing(
    ledger: Ledger, people_table: Any
) -> None:
    data = people_table(500, seed=9)
    spec = TableSpec(
        "people",
        privacy_unit="person",
        bounds={"income": (0.0, 100000.0)},
        max_groups_per_unit=3,
        max_rows_per_group=4,
    )
    dataset = Dataset(pd.DataFrame(data), spec)
    ledger.set_budget("people/person", epsilon=3.0)
    releaser = Releaser(ledger, cache=False)
    everyone = releaser.release(dataset, "SELECT SUM(income) FROM people", epsilon=1.0)
    but_one = releaser.release(
        dataset, "SELECT SUM(income) FROM people WHERE person <> 17", epsilon=1.0
    )
    status = ledger.status("people/person")
    assert status.events == 2
    assert status.spent_epsilon == pytest.approx(2.0)
    # the difference estimates person 17's total with noise of the full scale, twice over
    scale = 12 * 100000 / 1.0
    target = sum(
        min(max(v, 0), 1e5) for p, v in zip(data["person"], data["income"], strict=True) if p == 17
    )
    assert target <= 12 * 100000
    error = (everyone.records[0]["value"] - but_one.records[0]["value"]) - target
    assert abs(error) < 15 * scale  # finite, and no better than the noise allows:
    with pytest.raises(BudgetExceededError):
        releaser.release(dataset, "SELECT SUM(income) FROM people WHERE person <> 18", epsilon=1.5)


def test_the_same_question_is_answered_from_the_cache(census: Dataset, ledger: Ledger) -> None:
    ledger.set_budget("census2000/row", epsilon=2.5, delta=1e-5)
    releaser = Releaser(ledger)
    first = releaser.release(census, CENSUS_AVG, epsilon=1.0, delta=1e-6)
    again = releaser.release(
        census,
        "select state, avg(lweekinc) as m from census2000 group by state",
        epsilon=1.0,
        delta=1e-6,
    )
    assert again.cached
    assert not first.cached
    assert again.records == first.records
    assert ledger.status("census2000/row").events == 1
    other = releaser.release(census, CENSUS_AVG, epsilon=1.2, delta=1e-6)
    assert not other.cached
    assert ledger.status("census2000/row").events == 2


@pytest.mark.parametrize("kind", ["csv", "parquet", "pandas", "polars", "arrow", "duckdb"])
def test_every_input_gives_the_same_exact_aggregates(
    kind: str, tmp_path: Path, people_table: Any
) -> None:
    data = people_table(300, seed=4)
    frame = pd.DataFrame(data)
    spec = TableSpec(
        "people",
        privacy_unit="person",
        bounds={"income": (0.0, 1e5)},
        max_groups_per_unit=2,
        max_rows_per_group=2,
    )
    if kind == "csv":
        frame.to_csv(tmp_path / "people.csv", index=False)
        source: Any = tmp_path / "people.csv"
    elif kind == "parquet":
        frame.to_parquet(tmp_path / "people.parquet")
        source = tmp_path / "people.parquet"
    elif kind == "pandas":
        source = frame
    elif kind == "polars":
        source = pl.from_pandas(frame)
    elif kind == "arrow":
        source = pa.Table.from_pandas(frame)
    else:
        con = duckdb.connect()
        con.register("df", frame)
        con.execute("CREATE TABLE people AS SELECT * FROM df")
        source = (con, "people")
    dataset = Dataset(source, spec)
    engine = DuckDBEngine(dataset)
    prepared = prepare(
        dataset,
        "SELECT grp, AVG(income) FROM people GROUP BY grp",
        engine,
        epsilon=1.0,
        delta=1e-6,
        noise=NoiseKind.LAPLACE,
    )
    exact = _exact(prepared, engine)
    engine.close()
    order = np.argsort(exact.aggregates["__g0"])
    totals = exact.aggregates["__units"][order].tolist()
    # the same units are counted whatever the input (the random choice of extra rows aside)
    reference = [
        len({p for p, g in zip(data["person"], data["grp"], strict=True) if g == grp})
        for grp in sorted(set(data["grp"].tolist()))
    ]
    assert sum(totals) <= sum(reference)
    assert len(totals) == len(reference)


def test_public_keys_answer_every_key_even_missing_ones(census: Dataset, ledger: Ledger) -> None:
    ledger.set_budget("census2000/row", epsilon=5)
    spec = census.spec.replace(keys={"educ": (9, 12, 16, 99)})
    result = Releaser(ledger, rng=InsecureSeededRandom(3)).release(
        census.with_spec(spec),
        "SELECT educ, COUNT(*) FROM census2000 GROUP BY educ",
        epsilon=1.0,
    )
    assert [r["educ"] for r in result.records] == [9, 12, 16, 99]
    nowhere = result.records[-1]
    assert 0 <= nowhere["value"] <= 15
    assert nowhere["ci_low"] == 0.0


@pytest.mark.parametrize("unit", [None, "person"])
def test_public_keys_that_are_a_subset_of_the_groups_get_their_own_values(
    ledger: Ledger, unit: str | None
) -> None:
    # the data holds groups a..f; only b, d and z are public keys, so rows of the other groups
    # must count nowhere (with or without a unit, whether filtered in SQL or after)
    frame = pd.DataFrame(
        {
            "person": np.arange(600),
            "g": np.array(list("abcdef"))[np.arange(600) % 6],
            "x": (np.arange(600) % 7).astype(float),
        }
    )
    spec = TableSpec(
        "t",
        privacy_unit=unit,
        bounds={"x": (0.0, 10.0)},
        keys={"g": ("b", "d", "z")},
        max_groups_per_unit=1,
        max_rows_per_group=1,
    )
    ledger.set_budget(f"t/{unit or 'row'}", epsilon=1e5)
    result = Releaser(ledger, rng=InsecureSeededRandom(2), cache=False).release(
        Dataset(frame, spec),
        "SELECT g, COUNT(*), SUM(x), MEDIAN(x) FROM t GROUP BY g",
        epsilon=1e4,
    )
    assert [r["g"] for r in result.records] == ["b", "d", "z"]
    for record in result.records:
        rows = frame[frame["g"] == record["g"]]
        assert record["count"] == pytest.approx(len(rows), abs=0.5)
        assert record["sum_x"] == pytest.approx(rows["x"].sum(), abs=0.5)
        if len(rows):
            assert record["median_x"] == pytest.approx(rows["x"].median(), abs=0.1)


def test_tiny_groups_never_give_nan_inf_or_out_of_range(ledger: Ledger) -> None:
    frame = pd.DataFrame({"g": ["a", "b", "c"] * 2, "x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    spec = TableSpec("t", bounds={"x": (0.0, 10.0)}, keys={"g": ("a", "b", "c", "d")})
    ledger.set_budget("t/row", epsilon=10)
    result = Releaser(ledger, rng=InsecureSeededRandom(5), cache=False).release(
        Dataset(frame, spec),
        "SELECT g, AVG(x), STDDEV(x), MEDIAN(x), COUNT(*), SUM(x) FROM t GROUP BY g",
        epsilon=0.05,
    )
    for record in result.records:
        for column, value in record.items():
            if column == "g":
                continue
            assert math.isfinite(value), (column, value)
        assert 0 <= record["avg_x"] <= 10
        assert 0 <= record["stddev_x"] <= 5
        assert 0 <= record["median_x"] <= 10
        assert record["count"] >= 0
        assert record["sum_x"] >= 0


def test_histogram_with_given_bins(census: Dataset, ledger: Ledger) -> None:
    ledger.set_budget("census2000/row", epsilon=5)
    result = Releaser(ledger, rng=InsecureSeededRandom(8)).release(
        census, "SELECT HISTOGRAM(educ, 9, 12, 16, 20) FROM census2000", epsilon=2.0
    )
    assert result.columns == ("bin_low", "bin_high", "value", "ci_low", "ci_high")
    con = census.register("t")
    expected = list(
        con.execute(
            "SELECT count(*) FILTER (WHERE educ < 12), count(*) FILTER (WHERE educ >= 12 AND "
            "educ < 16), count(*) FILTER (WHERE educ >= 16) FROM t"
        ).fetchone()
    )
    for record, count in zip(result.records, expected, strict=True):
        assert abs(record["value"] - count) <= 10


@pytest.mark.parametrize(
    ("sql", "change", "error", "message"),
    [
        (
            "SELECT state, AVG(income) FROM census2000 GROUP BY state",
            {},
            ConfigurationError,
            "unknown column 'income'",
        ),
        (
            "SELECT state, AVG(exper) FROM census2000 GROUP BY state",
            {},
            ConfigurationError,
            "no bounds are declared for column 'exper'",
        ),
        (
            "SELECT AVG(state) FROM census2000",
            {"bounds": {"state": (0, 1)}},
            DataError,
            "not numeric",
        ),
        ("SELECT AVG(lweekinc) FROM other", {}, ConfigurationError, "reads table 'other'"),
        (
            "SELECT state, COUNT(*) FROM census2000 GROUP BY state",
            {},
            ConfigurationError,
            "needs delta > 0",
        ),
        (
            "SELECT AVG(lweekinc) FROM census2000",
            {"epsilon": 0.0},
            ConfigurationError,
            "epsilon must be",
        ),
        (
            "SELECT AVG(lweekinc) FROM census2000",
            {"epsilon": -1.0},
            ConfigurationError,
            "epsilon must be",
        ),
        (
            "SELECT AVG(lweekinc * 2) FROM census2000",
            {},
            ConfigurationError,
            "bounds of 'lweekinc * 2' are not known",
        ),
    ],
)
def test_bad_input_is_a_clear_error_and_spends_nothing(
    census: Dataset,
    ledger: Ledger,
    sql: str,
    change: dict[str, Any],
    error: type,
    message: str,
) -> None:
    ledger.set_budget("census2000/row", epsilon=5)
    epsilon = change.pop("epsilon", 1.0)
    dataset = census.with_spec(census.spec.replace(**change)) if change else census
    with pytest.raises(error, match=re.escape(message)):
        Releaser(ledger).release(dataset, sql, epsilon=epsilon)
    assert ledger.status("census2000/row").events == 0


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        # (pandas NaN means "missing" and is read as NULL; Arrow keeps NaN apart from NULL)
        (pa.table({"x": pa.array([1.0, float("nan"), 3.0])}), "NaN or infinite"),
        (pd.DataFrame({"x": [1.0, float("inf")]}), "NaN or infinite"),
        (pd.DataFrame({"x": pd.Series([], dtype=float)}), "empty"),
    ],
)
def test_bad_values_are_refused_before_spending(
    ledger: Ledger, frame: pd.DataFrame, message: str
) -> None:
    ledger.set_budget("t/row", epsilon=5)
    dataset = Dataset(frame, TableSpec("t", bounds={"x": (0.0, 10.0)}))
    with pytest.raises(DataError, match=message):
        Releaser(ledger).release(dataset, "SELECT AVG(x) FROM t", epsilon=1.0)
    assert ledger.status("t/row").events == 0


def test_explain_needs_no_data_and_spends_nothing(census: Dataset, ledger: Ledger) -> None:
    ledger.set_budget("census2000/row", epsilon=5, delta=1e-5)
    explanation = Releaser(ledger).explain(census, CENSUS_AVG, epsilon=1.0, delta=1e-6)
    assert [v.vector for v in explanation.vectors] == ["centred sum", "count", "units (selection)"]
    assert sum(v.epsilon for v in explanation.vectors) == pytest.approx(1.0)
    assert explanation.selection is not None and "at least" in explanation.selection
    assert all(v.error_bound > 0 for v in explanation.vectors)
    assert ledger.status("census2000/row").events == 0


def test_gaussian_noise_for_many_groups_per_unit(ledger: Ledger, people_table: Any) -> None:
    data = people_table(1000, seed=2)
    spec = TableSpec(
        "people",
        privacy_unit="person",
        max_groups_per_unit=3,
        max_rows_per_group=4,
        keys={"grp": tuple(range(20))},
    )
    ledger.set_budget("people/person", epsilon=3, delta=1e-5)
    result = Releaser(ledger, rng=InsecureSeededRandom(4)).release(
        Dataset(pd.DataFrame(data), spec),
        "SELECT grp, COUNT(*) FROM people GROUP BY grp",
        epsilon=1.0,
        delta=1e-6,
        noise=NoiseKind.GAUSSIAN,
    )
    assert len(result.records) == 20
    assert ledger.status("people/person").spent_epsilon <= 1.0 + 1e-3
