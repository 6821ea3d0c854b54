"""``veil privacy``: what a composition of events costs, and the noise a target needs."""

from __future__ import annotations

import math

import typer
from rich.table import Table

from veil.cli._common import console, fmt, parse_enum, print_json
from veil.errors import ConfigurationError
from veil.privacy.accountants import (
    AccountingMethod,
    PldAccountant,
    PureDpAccountant,
    RdpAccountant,
    ZCdpAccountant,
)
from veil.privacy.calibration import dpsgd_noise_multiplier, gaussian_noise_multiplier
from veil.privacy.events import (
    ComposedEvent,
    Event,
    GaussianEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
    event_from_json,
)

app = typer.Typer(
    help="Privacy accounting: epsilon of a composition, noise for a target.", no_args_is_help=True
)


def _dpsgd_event(noise_multiplier: float | None, q: float | None, steps: int | None) -> Event:
    if noise_multiplier is None:
        raise ConfigurationError(
            "give --event JSON, or --noise-multiplier (with --steps and "
            "optionally --sampling-probability)"
        )
    inner: Event = GaussianEvent(noise_multiplier)
    if q is not None:
        if not 0 < q <= 1:
            raise ConfigurationError(f"--sampling-probability must be in (0, 1], got {q}")
        if q < 1:
            inner = PoissonSampledEvent(q, inner)
    if steps is not None and steps < 1:
        raise ConfigurationError(f"--steps must be at least 1, got {steps}")
    return SelfComposedEvent(inner, steps if steps is not None else 1)


@app.command("epsilon")
def epsilon(
    delta: float = typer.Option(..., "--delta", help="Target delta."),
    event: list[str] = typer.Option(  # noqa: B008 - typer's idiom for repeatable options
        [], "--event", help="A privacy event as JSON (repeatable; they are composed)."
    ),
    noise_multiplier: float | None = typer.Option(
        None, "--noise-multiplier", help="Gaussian noise std / L2 sensitivity (DP-SGD's sigma)."
    ),
    sampling_probability: float | None = typer.Option(
        None, "--sampling-probability", help="Poisson sampling probability q per step."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Number of steps (compositions)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Epsilon at DELTA of a composition, by every accountant that applies.

    Example (Abadi et al. 2016, MNIST): --noise-multiplier 1.1 --sampling-probability 0.0042667
    --steps 14063 --delta 1e-5
    """
    if event:
        composed: Event = ComposedEvent([event_from_json(e) for e in event])
        if len(event) == 1:
            composed = event_from_json(event[0])
    else:
        composed = _dpsgd_event(noise_multiplier, sampling_probability, steps)
    results: dict[str, float | str] = {}
    for acct in (PldAccountant(), RdpAccountant(), ZCdpAccountant(), PureDpAccountant()):
        reason = acct.unsupported_reason(composed)
        results[acct.name] = acct.compose(composed).epsilon(delta) if reason is None else reason
    numbers = [v for v in results.values() if isinstance(v, float)]
    tightest = min(numbers) if numbers else math.inf
    if as_json:
        print_json(
            {"event": composed.to_dict(), "delta": delta, "epsilon": results, "tightest": tightest}
        )
        return
    console.print(f"{composed.describe()}  at delta {delta:g}")
    table = Table()
    table.add_column("accountant")
    table.add_column("epsilon", justify="right")
    for name, value in results.items():
        shown = fmt(value, 6) if isinstance(value, float) else f"[dim]n/a: {value}[/dim]"
        table.add_row(name, shown)
    console.print(table)
    console.print(f"tightest: epsilon {fmt(tightest, 6)}")


@app.command("calibrate")
def calibrate_cmd(
    epsilon: float = typer.Option(..., "--epsilon", help="Target epsilon."),
    delta: float = typer.Option(..., "--delta", help="Target delta."),
    sampling_probability: float | None = typer.Option(
        None, "--sampling-probability", help="Poisson sampling probability q per step."
    ),
    steps: int = typer.Option(1, "--steps", help="Number of steps (compositions)."),
    method: str = typer.Option("pld", "--method", help="pld or rdp."),
) -> None:
    """The smallest Gaussian noise multiplier that meets (EPSILON, DELTA)."""
    m = parse_enum(AccountingMethod, method, "--method")
    if steps < 1:
        raise ConfigurationError(f"--steps must be at least 1, got {steps}")
    if sampling_probability is not None and not 0 < sampling_probability <= 1:
        raise ConfigurationError(
            f"--sampling-probability must be in (0, 1], got {sampling_probability}"
        )
    if m not in (AccountingMethod.PLD, AccountingMethod.RDP):
        raise ConfigurationError("--method must be pld or rdp for calibration")
    if sampling_probability is None and steps == 1:
        sigma = gaussian_noise_multiplier(epsilon=epsilon, delta=delta)
        how = "analytic Gaussian (exact)"
    else:
        sigma = dpsgd_noise_multiplier(
            epsilon=epsilon,
            delta=delta,
            sampling_probability=sampling_probability or 1.0,
            steps=steps,
            method=m,
        )
        how = f"{m.value.upper()} accounting"
    console.print(
        f"noise multiplier {sigma:.6g} ({how}; epsilon <= {epsilon:g} at delta {delta:g})"
    )
