"""Utility studies: how accurate a release would be at several epsilons, measured on the data.

A study compares noisy answers with the true ones, so it reads the data without protection: it
is a tool for the data owner, run on their side. It is charged to no budget and nothing it
computes may be released; its report says so.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from veil.analytics.engines import EngineKind, make_engine
from veil.analytics.estimators import NoiseKind
from veil.analytics.query import AggKind, Query
from veil.analytics.release import _Computation, _exact, prepare
from veil.analytics.sources import Dataset
from veil.analytics.sql import parse_query
from veil.errors import ConfigurationError
from veil.privacy.random import RandomSource
from veil.reports import Report
from veil.reports.plots import have_matplotlib, line_plot

__all__ = ["StudyRow", "utility_study", "write_study_report"]

NOT_FOR_RELEASE = (
    "Utility study on the data owner's side: it compares noisy answers with the true values, "
    "so it is charged to no budget and none of it may be released."
)


@dataclasses.dataclass(frozen=True)
class StudyRow:
    """Accuracy of one statistic at one epsilon, over the repeats and the released groups."""

    epsilon: float
    statistic: str
    mse: float
    mean_relative_error: float
    within_10_percent: float
    ci_coverage: float
    groups_released: float
    repeats: int


def _truth_sql(query: Query, unit: str | None) -> str:
    parts = []
    for a in query.aggregates:
        v = a.value
        sql = {
            AggKind.COUNT: "count(*)",
            AggKind.COUNT_UNITS: f'count(DISTINCT "{unit}")',
            AggKind.SUM: f"sum({v})",
            AggKind.MEAN: f"avg({v})",
            AggKind.VARIANCE: f"var_pop({v})",
            AggKind.STDDEV: f"stddev_pop({v})",
            AggKind.QUANTILE: f"quantile_cont({v}, {a.quantile!r})",
        }.get(a.kind)
        if sql is None:
            raise ConfigurationError(f"a utility study does not cover {a.kind.value}")
        parts.append(f'{sql} AS "{a.name}"')
    groups = [f'"{g}"' for g in query.group_by]
    select = ", ".join([*groups, *parts])
    where = f" WHERE {query.where}" if query.where else ""
    group = f" GROUP BY {', '.join(groups)}" if groups else ""
    return f"SELECT {select} FROM __veil_src{where}{group}"  # noqa: S608


def utility_study(
    dataset: Dataset,
    query: str | Query,
    *,
    epsilons: Sequence[float],
    repeats: int = 20,
    delta: float = 0.0,
    noise: NoiseKind = NoiseKind.LAPLACE,
    rng: RandomSource | None = None,
    alpha: float = 0.05,
    engine: EngineKind = EngineKind.DUCKDB,
) -> list[StudyRow]:
    """Release ``query`` ``repeats`` times at each epsilon, without spending anything, and
    compare with the true values (mean squared error, mean relative error, share within 10 %
    of the truth, coverage of the confidence intervals, share of groups released)."""
    if not epsilons:
        raise ConfigurationError("give at least one epsilon")
    if not isinstance(repeats, int) or repeats < 1:
        raise ConfigurationError(f"repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(query, str):
        query = parse_query(query, privacy_unit=dataset.spec.privacy_unit)
    runner = make_engine(engine, dataset)
    try:
        first = prepare(dataset, query, runner, epsilon=epsilons[0], delta=delta, noise=noise)
        exact = _exact(first, runner)
        truth_frame = runner.fetch(_truth_sql(query, dataset.spec.privacy_unit))
        prepared_by_epsilon = {
            e: prepare(dataset, query, runner, epsilon=e, delta=delta, noise=noise)
            for e in epsilons
        }
    finally:
        runner.close()
    groups = list(query.group_by)
    n_truth = len(next(iter(truth_frame.values()))) if truth_frame else 0
    truth: dict[tuple[Any, ...], dict[str, float]] = {}
    for r in range(n_truth):
        key = tuple(_plain(truth_frame[g][r]) for g in groups)
        truth[key] = {a.name: float(truth_frame[a.name][r]) for a in query.aggregates}
    single = len(query.aggregates) == 1
    rows = []
    for epsilon in epsilons:
        prepared = prepared_by_epsilon[epsilon]
        errors: dict[str, list[tuple[float, float, float, float]]] = {
            a.name: [] for a in query.aggregates
        }
        released = []
        for _ in range(repeats):
            _, records = _Computation(prepared, exact, rng, alpha).run()
            released.append(len(records) / max(1, len(truth)))
            for record in records:
                key = tuple(record[g] for g in groups)
                if key not in truth:
                    continue
                for a in query.aggregates:
                    name = a.name
                    labels = (
                        ("value", "ci_low", "ci_high")
                        if single
                        else (name, f"{name}_ci_low", f"{name}_ci_high")
                    )
                    got = tuple(float(record[label]) for label in labels)
                    errors[name].append((got[0], truth[key][name], got[1], got[2]))
        for a in query.aggregates:
            data = np.array(errors[a.name]).reshape(-1, 4)
            est, true, low, high = data[:, 0], data[:, 1], data[:, 2], data[:, 3]
            nonzero = true != 0
            rel = np.abs(est[nonzero] - true[nonzero]) / np.abs(true[nonzero])
            rows.append(
                StudyRow(
                    epsilon=float(epsilon),
                    statistic=a.name,
                    mse=float(np.mean((est - true) ** 2)) if est.size else math.nan,
                    mean_relative_error=float(np.mean(rel)) if rel.size else math.nan,
                    within_10_percent=float(np.mean(rel <= 0.1)) if rel.size else math.nan,
                    ci_coverage=float(np.mean((low <= true) & (true <= high)))
                    if est.size
                    else math.nan,
                    groups_released=float(np.mean(released)),
                    repeats=repeats,
                )
            )
    return rows


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def write_study_report(rows: Sequence[StudyRow], out: Path, *, title: str, query_text: str) -> Path:
    """Write ``study.csv``, the privacy-utility curves (PNG) and ``report.html`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    header = [
        "epsilon",
        "statistic",
        "mse",
        "mean_relative_error",
        "within_10_percent",
        "ci_coverage",
        "groups_released",
        "repeats",
    ]
    lines = [",".join(header)]
    for r in rows:
        lines.append(",".join(str(getattr(r, h)) for h in header))
    (out / "study.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = Report(title)
    report.paragraph(NOT_FOR_RELEASE)
    report.code(query_text)
    report.table(
        [
            "epsilon",
            "statistic",
            "MSE",
            "mean relative error",
            "within 10 %",
            "CI coverage",
            "groups released",
        ],
        [
            [
                f"{r.epsilon:g}",
                r.statistic,
                f"{r.mse:.4g}",
                f"{r.mean_relative_error:.2%}",
                f"{r.within_10_percent:.0%}",
                f"{r.ci_coverage:.0%}",
                f"{r.groups_released:.0%}",
            ]
            for r in rows
        ],
    )
    if have_matplotlib():
        statistics = list(dict.fromkeys(r.statistic for r in rows))
        epsilons = sorted({r.epsilon for r in rows})
        for metric, label, filename, log in (
            ("mean_relative_error", "mean relative error", "utility_error.png", True),
            (
                "within_10_percent",
                "share of groups within 10 % of the truth",
                "utility_within.png",
                False,
            ),
        ):
            series = {
                s: [
                    next(getattr(r, metric) for r in rows if r.statistic == s and r.epsilon == e)
                    for e in epsilons
                ]
                for s in statistics
            }
            line_plot(
                out / filename,
                x=epsilons,
                series=series,
                xlabel="epsilon",
                ylabel=label,
                title=f"privacy-utility: {label}",
                logx=True,
                logy=log,
            )
            report.image(filename, f"{label} against epsilon ({rows[0].repeats} repeats each)")
    html, _ = report.write(out)
    return html
