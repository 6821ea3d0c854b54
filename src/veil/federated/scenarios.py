"""Ready-made federations for ``veil fl simulate`` and ``veil demo``.

=============  ==============================================  ==================================
scenario       data and split                                  model
=============  ==============================================  ==================================
hospitals      breast cancer, 3 hospitals, Dirichlet(0.5)      MLP (30-16-1)
phones         digits, 100 phones, Dirichlet(0.5)              MLP (64-64-10)
shakespeare    Shakespeare, one client per speaking role       character LSTM
fashion        Fashion-MNIST (Debian package), Dirichlet(0.5)  small CNN
=============  ==============================================  ==================================

:func:`run_scenario` trains one with or without DP (client- or record-level, calibrated to a
target epsilon and charged to a ledger), and the central baseline: the same model trained on
the pooled data for as many epochs as each client trains in the whole run.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veil.errors import ConfigurationError, ScopeNotFoundError
from veil.federated import data as fdata
from veil.federated import models
from veil.federated.dp import DpAggregator, DpSgd
from veil.federated.messages import TrainConfig
from veil.federated.protocol import ClientSampling
from veil.federated.secure import SecureAggregation
from veil.federated.simulation import RoundRecord, Simulation, SimulationResult
from veil.federated.strategies import Sgd, Strategy, fedavg
from veil.ledger import Ledger
from veil.privacy.calibration import dpsgd_noise_multiplier

__all__ = ["SCENARIOS", "DpMode", "FlRun", "Scenario", "run_scenario", "write_outputs"]


class DpMode(enum.Enum):
    NONE = "none"
    CLIENT = "client"
    RECORD = "record"
    DISTRIBUTED = "distributed"
    """Client-level DP whose noise the clients add before secure aggregation masks it."""


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A data set, its split, a model and the training settings that suit them."""

    name: str
    description: str
    clients: int
    rounds: int
    config: TrainConfig
    load: Callable[[int, int], fdata.FederatedData]
    """(clients, seed) -> the federation."""
    model: Callable[[fdata.FederatedData], nn.Module]
    sampling_fraction: float = 1.0
    """Clients per round under client-level DP (Poisson rate); 1 otherwise."""
    client_clip: float = 0.5
    record_dp: DpSgd = dataclasses.field(
        default_factory=lambda: DpSgd(noise_multiplier=1.0, clip_norm=1.0, batch_size=32)
    )
    dp_learning_rate: float | None = None


def _binary_or_classes(d: fdata.FederatedData) -> int:
    return 1 if d.classes == 2 else d.classes


def _hospital_names(clients: int) -> list[str]:
    base = ["st-marys", "general", "childrens", "university", "riverside", "northfield"]
    return [base[i] if i < len(base) else f"hospital-{i}" for i in range(clients)]


SCENARIOS: dict[str, Scenario] = {
    "hospitals": Scenario(
        name="hospitals",
        description="three hospitals with non-IID breast cancer data (Dirichlet 0.5)",
        clients=3,
        rounds=30,
        config=TrainConfig(local_epochs=1, learning_rate=0.05, batch_size=16),
        load=lambda n, seed: fdata.breast_cancer(
            clients=n, alpha=0.5, seed=seed, names=_hospital_names(n)
        ),
        model=lambda d: models.Mlp(d.x.shape[1], _binary_or_classes(d), hidden=(16,)),
        record_dp=DpSgd(noise_multiplier=1.0, clip_norm=1.0, batch_size=16),
        dp_learning_rate=0.2,
    ),
    "phones": Scenario(
        name="phones",
        description="100 phones with non-IID handwritten digits (Dirichlet 0.5)",
        clients=100,
        rounds=40,
        config=TrainConfig(local_epochs=2, learning_rate=0.1, batch_size=8),
        load=lambda n, seed: fdata.digits(clients=n, alpha=0.5, seed=seed),
        model=lambda d: models.Mlp(d.x.shape[1], d.classes, hidden=(64,)),
        sampling_fraction=0.3,
        client_clip=1.0,
        record_dp=DpSgd(noise_multiplier=1.0, clip_norm=1.0, batch_size=4),
    ),
    "shakespeare": Scenario(
        name="shakespeare",
        description="next-character prediction, one client per speaking role",
        clients=6,
        rounds=10,
        config=TrainConfig(local_epochs=1, learning_rate=1.0, batch_size=32),
        load=lambda n, seed: fdata.shakespeare(clients=n, max_examples_per_role=800),
        model=lambda d: models.CharLSTM(d.classes, embedding=8, hidden=64),
        record_dp=DpSgd(noise_multiplier=1.0, clip_norm=1.0, batch_size=32),
    ),
    "fashion": Scenario(
        name="fashion",
        description="Fashion-MNIST split among 10 clients (Dirichlet 0.5)",
        clients=10,
        rounds=10,
        config=TrainConfig(local_epochs=1, learning_rate=0.05, batch_size=32),
        load=lambda n, seed: fdata.fashion_mnist(clients=n, alpha=0.5, seed=seed, limit=20000),
        model=lambda d: models.SmallCnn(28, d.classes),
        record_dp=DpSgd(noise_multiplier=1.0, clip_norm=1.0, batch_size=64),
    ),
}


@dataclasses.dataclass(frozen=True)
class FlRun:
    """A finished scenario run and what it was asked to do."""

    scenario: str
    dp: DpMode
    epsilon: float | None
    delta: float
    noise_multiplier: float | None
    clients: int
    result: SimulationResult
    seconds: float
    parameters: int
    ledger: str | None
    secure_aggregation: str = "none"

    def summary(self) -> dict[str, Any]:
        last = self.result.rounds[-1] if self.result.rounds else None
        return {
            "scenario": self.scenario,
            "dp": self.dp.value,
            "secure_aggregation": self.secure_aggregation,
            "epsilon_target": self.epsilon,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "clients": self.clients,
            "rounds_run": len(self.result.rounds),
            "model_parameters": self.parameters,
            "final_test_accuracy": None if last is None else last.test_accuracy,
            "central_test_accuracy": None
            if self.result.central is None
            else self.result.central["accuracy"],
            "epsilon_spent": None
            if last is None
            else (
                last.epsilon_spent if last.epsilon_spent is not None else last.record_epsilon_max
            ),
            "bytes_sent": _total(r.bytes_sent for r in self.result.rounds),
            "bytes_received": _total(r.bytes_received for r in self.result.rounds),
            "seconds": self.seconds,
            "stopped": self.result.stopped,
            "ledger": self.ledger,
        }


def _fresh_budget(ledger: Ledger, scope: str, epsilon: float, delta: float) -> None:
    """Set the run's budget on a scope that has spent nothing yet; a scope with earlier spends
    would stop the run at once (or mix two runs' spends), so it is refused."""
    try:
        spent = ledger.status(scope)
    except ScopeNotFoundError:
        spent = None
    if spent is not None and (spent.events or spent.pending):
        ledger.close()
        raise ConfigurationError(
            f"scope {scope} in this ledger already has {spent.events} spends; give this "
            "run a ledger of its own (--ledger, or another --out)"
        )
    ledger.set_budget(scope, epsilon=epsilon, delta=delta)


def _total(values: Iterable[int | None]) -> int | None:
    """The sum, or None if any is withheld (client-level DP)."""
    total = 0
    for v in values:
        if v is None:
            return None
        total += v
    return total


def run_scenario(
    scenario: Scenario,
    *,
    dp: DpMode = DpMode.NONE,
    epsilon: float | None = None,
    delta: float = 1e-5,
    rounds: int | None = None,
    clients: int | None = None,
    seed: int | None = 0,
    ledger_path: str | None = None,
    central_baseline: bool = True,
    on_round: Callable[[RoundRecord], None] | None = None,
    threads: int | None = 1,
    secure_aggregation: str = "none",
) -> FlRun:
    """Run ``scenario`` (see the module docstring). Under DP, ``epsilon`` is the target for the
    whole run (per client for client-level DP, per record at every party for record-level
    DP) and the noise multiplier is calibrated to it with the PLD accountant.

    ``secure_aggregation`` is ``none``, ``secagg`` or ``secagg+``; distributed DP needs one of
    the last two (``secagg+`` if not given) and is calibrated without amplification by
    sampling (see :mod:`veil.federated.secure`)."""
    rounds = rounds or scenario.rounds
    clients = clients or scenario.clients
    if secure_aggregation not in ("none", "secagg", "secagg+"):
        raise ConfigurationError(
            f"--secure-aggregation must be none, secagg or secagg+, got {secure_aggregation!r}"
        )
    if dp is DpMode.DISTRIBUTED and secure_aggregation == "none":
        secure_aggregation = "secagg+"
    if dp is not DpMode.NONE and (epsilon is None or not epsilon > 0):
        raise ConfigurationError(f"--dp {dp.value} needs a target --epsilon > 0")
    if dp is not DpMode.NONE and ledger_path is None:
        raise ConfigurationError("a private run needs a ledger path")
    data = scenario.load(clients, 0 if seed is None else seed)
    if seed is not None:
        torch.manual_seed(seed)
    model = scenario.model(data)
    config = scenario.config
    strategy = fedavg()
    sampling = None
    record_dp = None
    z: float | None = None
    ledger: Ledger | None = None
    client_scope = record_scope = None
    if dp in (DpMode.CLIENT, DpMode.DISTRIBUTED):
        q = scenario.sampling_fraction
        assert epsilon is not None
        z = dpsgd_noise_multiplier(
            epsilon=epsilon,
            delta=delta,
            # under secure aggregation (distributed DP included) rounds are not amplified
            sampling_probability=q if secure_aggregation == "none" else 1.0,
            steps=rounds,
        )
        strategy = Strategy(
            DpAggregator(noise_multiplier=z, clip_norm=scenario.client_clip),
            Sgd(),
            name="DP-FedAvg",
        )
        sampling = ClientSampling(fraction=q, poisson=True)
        ledger = Ledger(str(ledger_path), actor="veil fl simulate")
        client_scope = f"{data.name}/client"
        _fresh_budget(ledger, client_scope, epsilon, delta)
    elif dp is DpMode.RECORD:
        assert epsilon is not None
        smallest = min(data.sizes())
        base = scenario.record_dp
        q = base.sampling_probability(smallest)
        steps = rounds * base.steps(smallest, config.local_epochs)
        z = dpsgd_noise_multiplier(
            epsilon=epsilon, delta=delta, sampling_probability=q, steps=steps
        )
        record_dp = dataclasses.replace(base, noise_multiplier=z)
        if scenario.dp_learning_rate is not None:
            config = dataclasses.replace(config, learning_rate=scenario.dp_learning_rate)
        ledger = Ledger(str(ledger_path), actor="veil fl simulate")
        record_scope = f"{data.name}/record"
        for cid in data.client_ids:
            _fresh_budget(ledger, f"{record_scope}@{cid}", epsilon, delta)
    started = time.perf_counter()
    # The budgets above are the run's target, so the ledger's 80% alerts would fire in every
    # private run; the summary reports the spend instead.
    ledger_log = logging.getLogger("veil.ledger")
    level = ledger_log.level
    ledger_log.setLevel(logging.ERROR)
    try:
        sim = Simulation(
            model=model,
            data=data,
            rounds=rounds,
            config=config,
            strategy=strategy,
            sampling=sampling,
            record_dp=record_dp,
            ledger=ledger,
            client_scope=client_scope,
            record_scope=record_scope,
            seed=seed,
            threads=threads,
            secure_aggregation=None
            if secure_aggregation == "none"
            else SecureAggregation(
                graph=secure_aggregation,  # type: ignore[arg-type]
                distributed_dp=dp is DpMode.DISTRIBUTED,
            ),
        )
        result = sim.run(central_baseline=central_baseline, on_round=on_round)
    finally:
        ledger_log.setLevel(level)
        if ledger is not None:
            ledger.close()
    return FlRun(
        scenario=scenario.name,
        dp=dp,
        epsilon=epsilon,
        delta=delta,
        noise_multiplier=z,
        clients=len(data.client_ids),
        result=result,
        seconds=time.perf_counter() - started,
        parameters=sim.layout.size,
        ledger=ledger_path,
        secure_aggregation=secure_aggregation,
    )


def write_outputs(runs: list[FlRun], out: Path, *, plots: bool = True) -> list[Path]:
    """Write ``metrics.json``, ``metrics.csv`` and, with matplotlib, ``accuracy.png``,
    ``loss.png`` and ``epsilon.png`` (one line per run) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    path = out / "metrics.json"
    path.write_text(
        json.dumps(
            [{"summary": r.summary(), **r.result.to_dict()} for r in runs],
            indent=2,
            default=_json_default,
        )
    )
    written.append(path)
    path = out / "metrics.csv"
    with path.open("w", newline="") as fh:
        fields = [f.name for f in dataclasses.fields(RoundRecord)]
        writer = csv.DictWriter(fh, fieldnames=["run", *fields])
        writer.writeheader()
        for r in runs:
            for rec in r.result.rounds:
                writer.writerow({"run": label(r), **dataclasses.asdict(rec)})
    written.append(path)
    if plots and runs:
        from veil.reports.plots import have_matplotlib, line_plot

        if have_matplotlib():
            written += _plots(runs, out, line_plot)
    return written


def label(run: FlRun) -> str:
    secure = "" if run.secure_aggregation == "none" else f" ({run.secure_aggregation.upper()})"
    secure = secure.replace("SECAGG", "SecAgg")
    if run.dp is DpMode.NONE:
        return f"federated{secure}"
    if run.dp is DpMode.DISTRIBUTED:
        return f"federated, distributed DP ε={run.epsilon:g}{secure}"
    return f"federated, {run.dp.value}-level DP ε={run.epsilon:g}{secure}"


def _plots(runs: list[FlRun], out: Path, line_plot: Callable[..., None]) -> list[Path]:
    longest = max(len(r.result.rounds) for r in runs)
    x = list(range(1, longest + 1))

    def series(metric: str) -> dict[str, list[float]]:
        lines = {}
        for r in runs:
            values = [getattr(rec, metric) for rec in r.result.rounds]
            lines[label(r)] = values + [math.nan] * (longest - len(values))
        central = next((r.result.central for r in runs if r.result.central), None)
        if central is not None:
            key = "accuracy" if metric == "test_accuracy" else "loss"
            lines["central (pooled data)"] = [central[key]] * longest
        return lines

    written = []
    for metric, name, ylabel in (
        ("test_accuracy", "accuracy.png", "test accuracy"),
        ("test_loss", "loss.png", "test loss"),
    ):
        path = out / name
        line_plot(
            path,
            x=x,
            series=series(metric),
            xlabel="round",
            ylabel=ylabel,
            title=f"{runs[0].scenario}: {ylabel} per round",
        )
        written.append(path)
    private = [r for r in runs if r.dp is not DpMode.NONE]
    if private:
        lines = {}
        for r in private:
            values = [
                rec.epsilon_spent if rec.epsilon_spent is not None else rec.record_epsilon_max
                for rec in r.result.rounds
            ]
            lines[label(r)] = [math.nan if v is None else v for v in values] + [math.nan] * (
                longest - len(values)
            )
        path = out / "epsilon.png"
        line_plot(
            path,
            x=x,
            series=lines,
            xlabel="round",
            ylabel="ε spent (ledger)",
            title=f"{runs[0].scenario}: privacy spent per round",
        )
        written.append(path)
    return written


def _json_default(value: object) -> object:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
