"""``veil release``: differentially private statistics from a CSV or Parquet file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from veil.cli._common import LEDGER_OPTION, console, fmt, parse_enum, print_json
from veil.errors import ConfigurationError

app = typer.Typer(
    help="Release differentially private statistics (SQL over CSV or Parquet), charged to the "
    "ledger; `veil release study` measures accuracy at several epsilons.",
    invoke_without_command=True,
)

DATA = typer.Option(None, "--data", help="A CSV or Parquet file; queried as the table <file stem>.")
SQL = typer.Option(
    None, "--sql", help='e.g. "SELECT state, AVG(lweekinc) FROM census GROUP BY state"'
)
UNIT = typer.Option(
    None, "--privacy-unit", help="The column identifying a person (default: each row is one)."
)
BOUNDS = typer.Option(
    [], "--bounds", help="COL=LOW:HIGH, declared bounds of an aggregated column (repeatable)."
)
KEYS = typer.Option(
    [], "--keys", help="COL=v1,v2,... public keys of a grouping column (repeatable)."
)
MAX_GROUPS = typer.Option(None, "--max-groups-per-unit", help="Groups one unit may contribute to.")
MAX_ROWS = typer.Option(
    None, "--max-rows-per-group", help="Rows one unit may contribute per group."
)
SPEC = typer.Option(None, "--spec", help="A TOML file of table declarations.")
DELTA = typer.Option(0.0, "--delta", help="Delta (needed for Gaussian noise or private keys).")
NOISE = typer.Option("laplace", "--noise", help="laplace or gaussian.")
ENGINE = typer.Option("duckdb", "--engine", help="duckdb (default) or spark.")


def _dataset(
    data: Path | None,
    unit: str | None,
    bounds: list[str],
    keys: list[str],
    max_groups: int | None,
    max_rows: int | None,
    spec_file: Path | None,
) -> Any:
    from veil.analytics import Dataset, TableSpec, load_specs

    if data is None:
        raise ConfigurationError("give --data FILE (a CSV or Parquet file)")
    dataset = Dataset(data)
    spec = TableSpec(dataset.name)
    if spec_file is not None:
        specs = load_specs(spec_file)
        if dataset.name not in specs:
            raise ConfigurationError(
                f"{spec_file} declares {sorted(specs)}, not the table {dataset.name!r}"
            )
        spec = specs[dataset.name]
    changes: dict[str, Any] = {}
    if unit is not None:
        changes["privacy_unit"] = unit
    if bounds:
        merged = dict(spec.bounds)
        for item in bounds:
            column, sep, rng = item.partition("=")
            low, colon, high = rng.partition(":")
            if not sep or not colon:
                raise ConfigurationError(f"--bounds takes COL=LOW:HIGH, got {item!r}")
            try:
                merged[column.strip()] = (float(low), float(high))
            except ValueError:
                raise ConfigurationError(f"--bounds needs numbers: {item!r}") from None
        changes["bounds"] = merged
    if keys:
        merged_keys: dict[str, Any] = dict(spec.keys)
        for item in keys:
            column, sep, values = item.partition("=")
            if not sep or not values:
                raise ConfigurationError(f"--keys takes COL=v1,v2,..., got {item!r}")
            merged_keys[column.strip()] = [_key_value(v) for v in values.split(",")]
        changes["keys"] = merged_keys
    if max_groups is not None:
        changes["max_groups_per_unit"] = max_groups
    if max_rows is not None:
        changes["max_rows_per_group"] = max_rows
    if changes:
        spec = spec.replace(**changes)
    return dataset.with_spec(spec)


def _key_value(text: str) -> Any:
    text = text.strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text


@app.callback()
def release(
    ctx: typer.Context,
    data: Path | None = DATA,
    sql: str | None = SQL,
    epsilon: float | None = typer.Option(None, "--epsilon", help="Epsilon for this release."),
    delta: float = DELTA,
    privacy_unit: str | None = UNIT,
    bounds: list[str] = BOUNDS,
    keys: list[str] = KEYS,
    max_groups_per_unit: int | None = MAX_GROUPS,
    max_rows_per_group: int | None = MAX_ROWS,
    spec: Path | None = SPEC,
    noise: str = NOISE,
    scope: str | None = typer.Option(
        None, "--scope", help="Ledger scope (default <table>/<privacy unit or row>)."
    ),
    output: str = typer.Option("table", "--format", help="table, csv or json."),
    explain: bool = typer.Option(
        False, "--explain", help="Show the cost and accuracy without releasing anything."
    ),
    alpha: float = typer.Option(0.05, "--alpha", help="Confidence intervals at 1 - alpha."),
    engine: str = ENGINE,
    ledger: str | None = LEDGER_OPTION,
) -> None:
    """Release a SQL query's statistics with differential privacy; each comes with its
    confidence interval, and the spend shows in `veil ledger show`."""
    if ctx.invoked_subcommand is not None:
        return
    from veil.analytics import EngineKind, NoiseKind, Releaser
    from veil.ledger import Ledger

    if sql is None or epsilon is None:
        raise ConfigurationError('give --sql "SELECT ..." and --epsilon E (and --data FILE)')
    if output not in ("table", "csv", "json"):
        raise ConfigurationError(f"--format must be table, csv or json, got {output!r}")
    dataset = _dataset(
        data, privacy_unit, bounds, keys, max_groups_per_unit, max_rows_per_group, spec
    )
    noise_kind = parse_enum(NoiseKind, noise, "--noise")
    engine_kind = parse_enum(EngineKind, engine, "--engine")
    with Ledger(ledger) as led:
        releaser = Releaser(led, scope=scope, engine=engine_kind, alpha=alpha)
        if explain:
            explanation = releaser.explain(
                dataset, sql, epsilon=epsilon, delta=delta, noise=noise_kind
            )
            _print_explanation(explanation, output)
            return
        result = releaser.release(dataset, sql, epsilon=epsilon, delta=delta, noise=noise_kind)
    if output == "json":
        typer.echo(json.dumps(json.loads(result.to_json()), indent=2, ensure_ascii=False))
    elif output == "csv":
        typer.echo(result.to_csv(), nl=False)
    else:
        table = Table(title=f"released from {dataset.name} ({1 - alpha:.0%} intervals)")
        for c in result.columns:
            table.add_column(
                c,
                justify="left"
                if c in dataset.spec.keys or c not in ("value", "ci_low", "ci_high")
                else "right",
            )
        for record in result.records:
            table.add_row(*(_cell(record[c]) for c in result.columns))
        console.print(table)
        how = (
            "answered from the cache, nothing spent"
            if result.cached
            else (f"charged epsilon {result.epsilon:g}, delta {result.delta:g} to {result.scope}")
        )
        console.print(f"{len(result.records)} rows; {how}")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return fmt(value, 6)
    return str(value)


def _print_explanation(explanation: Any, output: str) -> None:
    if output == "json":
        print_json(
            {
                "scope": explanation.scope,
                "epsilon": explanation.epsilon,
                "delta": explanation.delta,
                "event": explanation.event.to_dict(),
                "selection": explanation.selection,
                "vectors": explanation.to_records(),
            }
        )
        return
    table = Table(
        title=f"what this release would cost and how accurate it would be "
        f"({1 - explanation.alpha:.0%} noise bounds)"
    )
    for col in (
        "statistic",
        "noisy vector",
        "mechanism",
        "epsilon",
        "delta",
        "noise std",
        "noise bound",
    ):
        table.add_column(col)
    for v in explanation.vectors:
        table.add_row(
            v.statistic,
            v.vector,
            v.mechanism,
            fmt(v.epsilon),
            f"{v.delta:g}",
            fmt(v.noise_std),
            fmt(v.error_bound),
        )
    console.print(table)
    if explanation.selection:
        console.print(explanation.selection)
    console.print(
        f"total: epsilon {explanation.epsilon:g}, delta {explanation.delta:g}, "
        f"charged to {explanation.scope}; nothing was spent"
    )


@app.command("study")
def study(
    data: Path | None = DATA,
    sql: str | None = SQL,
    epsilons: str = typer.Option("0.1,0.5,1,2,5,10", "--epsilons", help="Comma-separated."),
    repeats: int = typer.Option(20, "--repeats", help="Releases per epsilon."),
    delta: float = DELTA,
    privacy_unit: str | None = UNIT,
    bounds: list[str] = BOUNDS,
    keys: list[str] = KEYS,
    max_groups_per_unit: int | None = MAX_GROUPS,
    max_rows_per_group: int | None = MAX_ROWS,
    spec: Path | None = SPEC,
    noise: str = NOISE,
    out: Path = typer.Option(Path("veil-study"), "--out", help="Folder for the report."),  # noqa: B008
) -> None:
    """Measure accuracy against the true values at several epsilons (data owner's side only:
    charged to nothing, never to be released), and draw the privacy-utility curve."""
    from veil.analytics import NoiseKind
    from veil.analytics.study import utility_study, write_study_report

    if sql is None:
        raise ConfigurationError('give --sql "SELECT ..." (and --data FILE)')
    try:
        values = [float(e) for e in epsilons.split(",") if e.strip()]
    except ValueError:
        raise ConfigurationError(
            f"--epsilons takes numbers like 0.1,1,10, got {epsilons!r}"
        ) from None
    dataset = _dataset(
        data, privacy_unit, bounds, keys, max_groups_per_unit, max_rows_per_group, spec
    )
    rows = utility_study(
        dataset,
        sql,
        epsilons=values,
        repeats=repeats,
        delta=delta,
        noise=parse_enum(NoiseKind, noise, "--noise"),
    )
    table = Table(title="utility study (not for release)")
    for col in (
        "epsilon",
        "statistic",
        "MSE",
        "mean rel. error",
        "within 10%",
        "CI coverage",
        "groups released",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            f"{r.epsilon:g}",
            r.statistic,
            fmt(r.mse),
            f"{r.mean_relative_error:.2%}",
            f"{r.within_10_percent:.0%}",
            f"{r.ci_coverage:.0%}",
            f"{r.groups_released:.0%}",
        )
    console.print(table)
    html = write_study_report(
        rows, out.resolve(), title=f"utility study: {dataset.name}", query_text=sql
    )
    console.print(f"report written to {html.parent} (nothing was spent)")
