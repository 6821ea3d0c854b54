"""``veil fl``: federated learning from the command line: the simulator, and the deployment
over gRPC (``serve``, ``join``, ``status``, in :mod:`veil.cli.fl_deploy`)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from veil.cli import fl_deploy
from veil.cli._common import console, fmt, parse_enum
from veil.errors import ConfigurationError, MissingDependencyError

app = typer.Typer(
    help="Federated learning: simulate a federation in one process, or deploy one over gRPC.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

# Each setting of a TOML file, and the type its value must have.
_KEYS: dict[str, tuple[type, ...]] = {
    "scenario": (str,),
    "rounds": (int,),
    "clients": (int,),
    "dp": (str,),
    "epsilon": (int, float),
    "delta": (int, float),
    "seed": (int,),
    "out": (str,),
    "ledger": (str,),
    "compare_central": (bool,),
    "threads": (int,),
    "secure_aggregation": (str,),
}


_TYPE_NAMES = {
    (str,): "a string",
    (int,): "an integer",
    (int, float): "a number",
    (bool,): "true or false",
}


def _federated() -> Any:
    try:
        from veil.federated import scenarios
    except ImportError as exc:
        raise MissingDependencyError("torch", "federated") from exc
    return scenarios


def _config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigurationError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
    table = raw.get("simulate", raw)
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise ConfigurationError(
            f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}"
        )
    for key, value in table.items():
        types = _KEYS[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            expected = _TYPE_NAMES[types]
            raise ConfigurationError(
                f"{path}: {key} must be {expected}, found {type(value).__name__} {value!r}"
            )
    return dict(table)


@app.command("simulate")
def simulate(
    scenario: str | None = typer.Option(
        None, "--scenario", help="hospitals, phones, shakespeare or fashion [default: hospitals]."
    ),
    rounds: int | None = typer.Option(None, "--rounds", help="Rounds [default: the scenario's]."),
    clients: int | None = typer.Option(
        None, "--clients", help="Clients [default: the scenario's]."
    ),
    dp: str | None = typer.Option(
        None,
        "--dp",
        help=(
            "none, client (DP-FedAvg), record (DP-SGD per party) or distributed (clients add "
            "the noise under secure aggregation) [default: none]."
        ),
    ),
    secure_aggregation: str | None = typer.Option(
        None,
        "--secure-aggregation",
        help="none, secagg or secagg+: the server sees only the sum [default: none].",
    ),
    epsilon: float | None = typer.Option(None, "--epsilon", help="Target epsilon under DP."),
    delta: float | None = typer.Option(None, "--delta", help="Target delta [default: 1e-5]."),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed: a reproducible simulation, noise not secure [default: 0]."
    ),
    out: Path | None = typer.Option(  # noqa: B008
        None, "--out", help="Folder for metrics and plots [default: veil-fl]."
    ),
    ledger: str | None = typer.Option(
        None, "--ledger", help="Ledger for the DP spends [default: OUT/ledger.sqlite]."
    ),
    compare_central: bool | None = typer.Option(
        None, "--central/--no-central", help="Also train centrally on the pooled data."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="PyTorch threads while simulating [default: 1]."
    ),
    config: Path | None = typer.Option(  # noqa: B008
        None, "--config", help="A TOML file with these settings (options override it)."
    ),
) -> None:
    """Simulate a federation, write metrics (JSON, CSV) and plots, print a summary."""
    settings: dict[str, Any] = _config(config) if config is not None else {}
    given = {
        "scenario": scenario,
        "rounds": rounds,
        "clients": clients,
        "dp": dp,
        "epsilon": epsilon,
        "delta": delta,
        "seed": seed,
        "out": out,
        "ledger": ledger,
        "compare_central": compare_central,
        "threads": threads,
        "secure_aggregation": secure_aggregation,
    }
    settings.update({k: v for k, v in given.items() if v is not None})
    sc = _federated()
    name = str(settings.get("scenario", "hospitals"))
    if name not in sc.SCENARIOS:
        raise ConfigurationError(
            f"unknown scenario {name!r}; choose from {', '.join(sc.SCENARIOS)}"
        )
    spec = sc.SCENARIOS[name]
    mode = parse_enum(sc.DpMode, str(settings.get("dp", "none")), "--dp")
    if mode is sc.DpMode.NONE:
        extra = [k for k in ("epsilon", "delta", "ledger") if settings.get(k) is not None]
        if extra:
            raise ConfigurationError(
                f"--{extra[0]} applies only to a private run: add --dp client or --dp record"
            )
    folder = Path(settings.get("out", "veil-fl")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    ledger_path = settings.get("ledger") or str(folder / "ledger.sqlite")
    total = int(settings.get("rounds") or spec.rounds)
    _check_positive_int("rounds", settings.get("rounds"))
    _check_positive_int("clients", settings.get("clients"))
    _check_positive_int("threads", settings.get("threads"))
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(f"{name} ({mode.value})", total=total, status="")

        def on_round(rec: Any) -> None:
            status = f"acc {rec.test_accuracy:.3f}"
            spent = rec.epsilon_spent if rec.epsilon_spent is not None else rec.record_epsilon_max
            if spent is not None:
                status += f"  ε {spent:.3g}"
            progress.update(task, advance=1, status=status)

        run = sc.run_scenario(
            spec,
            dp=mode,
            epsilon=settings.get("epsilon"),
            delta=float(settings.get("delta", 1e-5)),
            rounds=settings.get("rounds"),
            clients=settings.get("clients"),
            seed=int(settings.get("seed", 0)),
            ledger_path=ledger_path if mode is not sc.DpMode.NONE else None,
            central_baseline=bool(settings.get("compare_central", True)),
            on_round=on_round,
            threads=int(settings.get("threads", 1)),
            secure_aggregation=str(settings.get("secure_aggregation", "none")),
        )
    written = sc.write_outputs([run], folder)
    _print_summary(run.summary())
    for path in written:
        console.print(f"wrote {path}")


app.command("serve")(fl_deploy.serve)
app.command("join")(fl_deploy.join)
app.command("status")(fl_deploy.status)


def _check_positive_int(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ConfigurationError(f"--{name} must be an integer >= 1, got {value!r}")


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title="federated run")
    table.add_column("")
    table.add_column("value")
    for key, value in summary.items():
        text = fmt(value) if isinstance(value, float) else "-" if value is None else str(value)
        table.add_row(key.replace("_", " "), text)
    console.print(table)


__all__ = ["app"]
