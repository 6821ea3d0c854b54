"""FedAvg simulation: veil against two numpy floors and Flower's simulation runtime.

Run from the repository root; ``--setup`` (needed the first time, harmless later) builds or
updates Flower's environment before measuring::

    .venv/bin/python benchmarks/fl_simulation.py [--clients 100,1000] [--rounds 10] [--setup]
        [--peers flower] [--repeats 3] [--timeout 600] [--flower-cpus-per-client 1]
        [--veil-threads 1]

The question: how much does a federated-learning simulator cost over the arithmetic it
simulates? veil's simulator should stay close to a plain numpy loop and far ahead of Flower.

The workload, identical for every method: FedAvg of logistic regression with 20 features and a
bias, all in float64. Each of C clients holds 500 synthetic samples, drawn by a numpy Generator
seeded with (SEED, client id): standard normal features, labels Bernoulli(sigmoid(x·w* + b* +
s_c)) for one global (w*, b*) and a per-client logit shift s_c ~ N(0, 0.5²) (a mild label shift).
The global model [w..., b] starts at zero. In each round every client trains: one epoch of
full-batch gradient descent, i.e. one step θ ← θ - 0.5·∇ of the mean binary cross-entropy over
its 500 samples; the server then averages the clients' models weighted by their numbers of
examples. 10 rounds, no evaluation inside the rounds. The data is generated once per client count,
before anything is timed.

Timed in this process, one warm-up and then ``--repeats`` rounds in which the methods alternate
(so drift on a shared machine hits them alike); the table shows the median and the best:

* the loop floor: a plain Python loop over the clients with numpy arithmetic on each client's
  (500, 21) design matrix (the features plus a column of ones), prepared before timing;
* the vectorised floor: the same rounds on all clients at once, one (C, 500, 21) array;
* veil: ``veil_fedavg`` below, which reports the seconds of its own rounds (the harness also
  shows the wall time of the whole call).

Flower 1.42 runs in its own virtual environment, ``.bench-envs/flower`` (``--setup`` creates it:
flwr 1.42.0 pins certifi>=2026.10.19, newer than the registry offers, so the wheel is installed
with ``--no-deps`` and its requirements, Ray included, by hand with certifi 2026.10.18). Each
repeat is a fresh subprocess, started as ``<env>/bin/python fl_simulation.py --adapter flower``,
that calls ``flwr.simulation.run_simulation`` with a ServerApp running the Message-API
``flwr.serverapp.strategy.FedAvg`` (every node sampled every round, no evaluation) and a ClientApp
whose ``train`` does the same gradient step on its partition. The clients read the very arrays
the floors use, from ``.npy`` files written before timing (memory-mapped, each client's design
matrix cached in its Ray worker on first use). Reported: the total wall time of
``run_simulation`` (Ray start, actors, node registration and shutdown included), the cold first
round (from the ServerApp's start to the first aggregate), and the steady seconds per round (the
median of rounds 2..R). ``--timeout`` bounds each phase of a Flower run (start-up, every round);
a run that overruns is killed and reported as a timeout.

Correctness: every method's final model is compared with the loop floor's (max absolute
difference); all of them do the same float64 arithmetic, so differences are rounding, ~1e-16.

Nothing here is a timed unit test: it prints times next to the floors measured in the same run,
and ratios with their targets (veil at most 2x the loop floor; Flower's steady seconds per round
at least 50x veil's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from _harness import (
    PROGRESS,
    QUIET_ENV,
    RESULT,
    machine,
    pip_tail,
    ratio_text,
    run_round_adapter,
    write_raw,
)

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / ".bench-data"
ENV_DIR = ROOT / ".bench-envs"

SEED = 2026_11_23
SAMPLES = 500  # per client
FEATURES = 20  # plus a bias
LR = 0.5
LABEL_SHIFT = 0.5  # standard deviation of the per-client logit shift
DTYPE = np.float64

TARGET_FLOOR = 2.0  # veil / loop floor, at most
TARGET_FLOWER = 50.0  # Flower steady s/round / veil s/round, at least


# --------------------------------------------------------------------------------------------
# The workload (numpy only: the Flower adapter uses these same functions)
# --------------------------------------------------------------------------------------------


def true_model() -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(SEED)
    return rng.normal(0.0, 1.0 / np.sqrt(FEATURES), FEATURES), float(rng.normal(0.0, 0.5))


def generate(clients: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (C, 500, 20) and 0/1 labels (C, 500), float64; seeded per client id."""
    w, b = true_model()
    features = np.empty((clients, SAMPLES, FEATURES), dtype=DTYPE)
    labels = np.empty((clients, SAMPLES), dtype=DTYPE)
    for c in range(clients):
        rng = np.random.default_rng([SEED, c])
        x = rng.standard_normal((SAMPLES, FEATURES))
        shift = rng.normal(0.0, LABEL_SHIFT)
        p = 1.0 / (1.0 + np.exp(-(x @ w + b + shift)))
        features[c] = x
        labels[c] = rng.random(SAMPLES) < p
    features.setflags(write=False)  # every method gets the same, untouched arrays
    labels.setflags(write=False)
    return features, labels


def with_bias(features: np.ndarray) -> np.ndarray:
    """The design matrix: the features and a last column of ones, so θ = [w..., b]."""
    ones = np.ones((*features.shape[:-1], 1), dtype=DTYPE)
    return np.ascontiguousarray(np.concatenate([features, ones], axis=-1))


def local_step(theta: np.ndarray, x: np.ndarray, y: np.ndarray, lr: float) -> np.ndarray:
    """One full-batch gradient step on the mean binary cross-entropy of one client."""
    p = 1.0 / (1.0 + np.exp(-(x @ theta)))
    return theta - lr * (x.T @ (p - y)) / len(y)


# --------------------------------------------------------------------------------------------
# The floors and veil (this process)
# --------------------------------------------------------------------------------------------


def loop_floor(
    designs: list[np.ndarray], labels: list[np.ndarray], rounds: int, lr: float
) -> np.ndarray:
    """FedAvg as a plain Python loop over the clients."""
    theta = np.zeros(FEATURES + 1, dtype=DTYPE)
    for _ in range(rounds):
        total = np.zeros_like(theta)
        examples = 0
        for x, y in zip(designs, labels, strict=True):
            total += len(y) * local_step(theta, x, y, lr)
            examples += len(y)
        theta = total / examples
    return theta


def vectorised_floor(design: np.ndarray, labels: np.ndarray, rounds: int, lr: float) -> np.ndarray:
    """FedAvg on all clients at once: ``design`` is (C, n, 21), ``labels`` (C, n)."""
    clients, n, d = design.shape
    counts = np.full(clients, n, dtype=DTYPE)  # examples per client: the FedAvg weights
    theta = np.zeros(d, dtype=DTYPE)
    for _ in range(rounds):
        p = 1.0 / (1.0 + np.exp(-np.matmul(design, theta)))  # (C, n)
        # batched (1, n) @ (n, 21): faster than einsum or a transposed view
        gradients = np.matmul((p - labels)[:, None, :], design)[:, 0, :] / counts[:, None]
        local = theta - lr * gradients  # every client's model, (C, 21)
        theta = counts @ local / counts.sum()
    return theta


# ============================================================================================
# veil: filled in by the federated issue
# ============================================================================================


VEIL_THREADS = [1]  # set from --veil-threads


def veil_fedavg(
    features: np.ndarray, labels: np.ndarray, *, rounds: int, lr: float, threads: int = 1
) -> tuple[np.ndarray, float]:
    """Run the workload above with veil's federated simulator.

    ``features`` is (C, 500, 20) and ``labels`` (C, 500), both float64 (labels 0.0 or 1.0),
    client c's data being ``features[c]``, ``labels[c]``. Start from θ = 0; in each of
    ``rounds`` rounds every client takes one full-batch gradient step with learning rate ``lr``
    on its mean binary cross-entropy and the server averages the models weighted by examples;
    no evaluation. Return the final parameters as one float64 vector [w_1..w_20, b] and the
    wall seconds of the rounds themselves (from the first round's start to the final model,
    after any one-off conversion of the arrays into veil's structures; the harness shows the
    whole call's wall time beside it).
    """
    import torch

    from veil.federated import ClientData, FederatedData, Simulation, TrainConfig, models

    clients, per_client, dims = features.shape
    x = torch.tensor(features.reshape(clients * per_client, dims))
    y = torch.tensor(labels.reshape(-1))
    parts = tuple(
        np.arange(c * per_client, (c + 1) * per_client, dtype=np.int64) for c in range(clients)
    )
    data = FederatedData(
        "benchmark",
        x,
        y,
        parts,
        tuple(f"c{c}" for c in range(clients)),
        ClientData(x[:1], y[:1]),
        2,
    )
    model = models.LogisticRegression(dims, 1).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    sim = Simulation(
        model=model,
        data=data,
        rounds=rounds,
        config=TrainConfig(local_epochs=1, learning_rate=lr),
        evaluate_every=0,  # the floors do not evaluate either
        seed=0,
        threads=threads,
    )
    started = time.perf_counter()
    result = sim.run()
    return result.parameters, time.perf_counter() - started


# ============================================================================================


@dataclass
class Measured:
    """One method's figures at one client count."""

    seconds: list[float] = field(default_factory=list)  # total wall per run
    params: list[np.ndarray] = field(default_factory=list)
    call_seconds: list[float] = field(default_factory=list)  # veil: the whole call
    first_round: list[float] = field(default_factory=list)  # Flower: cold first round
    steady: list[float] = field(default_factory=list)  # Flower: median of rounds 2..R per run
    version: str = ""
    actors: int | None = None
    problem: str | None = None  # not run, failed, or timed out

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def best(self) -> float | None:
        return min(self.seconds) if self.seconds else None


LOCAL = ("loop", "vectorised", "veil")


def time_local(
    features: np.ndarray, labels: np.ndarray, rounds: int, repeats: int
) -> dict[str, Measured]:
    design = with_bias(features)  # prepared before timing, like the data
    designs = list(design)  # views, one contiguous (500, 21) block per client
    label_list = list(labels)
    out = {name: Measured() for name in LOCAL}

    def veil_run() -> tuple[np.ndarray, float]:
        return veil_fedavg(features, labels, rounds=rounds, lr=LR, threads=VEIL_THREADS[0])

    for round_ in range(repeats + 1):  # round 0 is the warm-up
        for name in LOCAL:
            m = out[name]
            if m.problem is not None:
                continue
            start = time.perf_counter()
            if name == "loop":
                params = loop_floor(designs, label_list, rounds, LR)
            elif name == "vectorised":
                params = vectorised_floor(design, labels, rounds, LR)
            else:
                try:
                    params, own = veil_run()
                except NotImplementedError as exc:
                    m.problem = f"not run: {exc}"
                    continue
                except Exception as exc:
                    m.problem = f"failed: {type(exc).__name__}: {exc}"
                    continue
            elapsed = time.perf_counter() - start
            if round_ == 0:
                continue
            m.params.append(np.asarray(params, dtype=DTYPE))
            if name == "veil":
                m.seconds.append(float(own))
                m.call_seconds.append(elapsed)
            else:
                m.seconds.append(elapsed)
    return out


# --------------------------------------------------------------------------------------------
# Flower: its environment and its adapter
# --------------------------------------------------------------------------------------------

FLOWER_VERSION = "1.42.0"
# flwr 1.42.0's own requirements (from its wheel's METADATA) with certifi moved back one release
# (the registry has nothing >= 2026.10.19), plus Ray for the simulation extra.
FLOWER_REQUIREMENTS = (
    "certifi==2026.10.18",
    "numpy>=1.26.0,<3.0.0",
    "grpcio>=1.70.0,<2.0.0",
    "grpcio-health-checking>=1.70.0,<2.0.0",
    "protobuf>=5.28.0,<7.0.0",
    "cryptography>=50.0.0,<51.0.0",
    "pycryptodome>=3.18.0,<4.0.0",
    "iterators>=0.0.2,<0.0.3",
    "typer>=0.13.0,<0.21.0",
    "uv>=0.13.5,<0.14.0",
    "tomli>=2.0.1,<3.0.0",
    "tomli-w>=1.0.0,<2.0.0",
    "pathspec>=1.0.4,<2.0.0",
    "prompt-toolkit>=3.0.52,<4.0.0",
    "rich>=14.0.0,<15.0.0",
    "pyyaml>=6.0.2,<7.0.0",
    "requests>=2.33.0,<3.0.0",
    "httpx>=0.28.1,<1.0.0",
    "click>=8.0.0,<9.0.0",
    "packaging>=24.0,<26.0",
    "sqlalchemy[asyncio]>=2.0.45,<3.0.0",
    "alembic>=1.18.1,<2.0.0",
    "uvicorn[standard]>=0.49.0,<0.50.0",
    "fastapi>=0.138.0,<0.139.0",
    "starlette>=1.3.1,<1.4.0",
    "ray==2.55.1",
)
PEERS = ("flower",)


def flower_python() -> Path:
    return ENV_DIR / "flower" / "bin" / "python"


def setup_flower() -> str | None:
    """Create ``.bench-envs/flower`` and install Flower; the problem, or None."""
    env = ENV_DIR / "flower"
    base = shutil.which("python3") or sys.executable
    pip = [str(flower_python()), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    steps = []
    if not flower_python().exists():
        steps.append(("creating the venv", [base, "-m", "venv", str(env)]))
    steps.append(("pip install flwr", [*pip, "--no-deps", f"flwr=={FLOWER_VERSION}"]))
    # pip says the certifi pin is broken (and exits 0): that is the point of the workaround.
    steps.append(("pip install its requirements", [*pip, *FLOWER_REQUIREMENTS]))
    for what, step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"{what} failed: " + (
                pip_tail(done.stderr + done.stdout) or f"exit {done.returncode}"
            )
    check = subprocess.run(
        [str(flower_python()), __file__, "--adapter", "flower", "--check"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **QUIET_ENV},
    )
    if check.returncode != 0:
        return f"installed, but the import fails: {pip_tail(check.stderr, 1) or check.returncode}"
    return None


def _progress(**fields: Any) -> None:
    print(PROGRESS + json.dumps(fields), file=sys.stderr, flush=True)


def _client_data(data: str, client: int) -> tuple[np.ndarray, np.ndarray]:
    """Client ``client``'s design matrix and labels, cached in the Ray worker's process.

    Flower pickles the ClientApp anew with every message, so the cache lives on a module object
    in ``sys.modules``, which outlives the unpickled functions."""
    import types

    cache = sys.modules.get("_veil_fl_bench_cache")
    if cache is None:
        cache = types.ModuleType("_veil_fl_bench_cache")
        cache.arrays = {}  # type: ignore[attr-defined]
        cache.clients = {}  # type: ignore[attr-defined]
        sys.modules["_veil_fl_bench_cache"] = cache
    if client not in cache.clients:
        if data not in cache.arrays:
            cache.arrays[data] = (
                np.load(Path(data) / "features.npy", mmap_mode="r"),
                np.load(Path(data) / "labels.npy", mmap_mode="r"),
            )
        features, labels = cache.arrays[data]
        cache.clients[client] = (with_bias(np.array(features[client])), np.array(labels[client]))
    return cache.clients[client]


def flower_adapter(data: Path, clients: int, rounds: int, cpus_per_client: float) -> None:
    """Hidden mode, run with Flower's python: one simulation, then one result line."""
    import logging
    import warnings

    warnings.simplefilter("ignore")  # run_simulation's deprecation notice
    started = time.perf_counter()
    import ray
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    imported = time.perf_counter() - started
    _progress(phase="imported", seconds=imported)
    data_dir = str(data)
    ends: list[float] = []  # perf_counter at the end of each round's aggregation
    ok: list[int] = []  # replies without an error, per round
    result: dict[str, Any] = {}

    class TimedFedAvg(FedAvg):  # type: ignore[misc]
        """FedAvg that notes when each round's aggregate is ready."""

        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            replies = list(replies)
            out = super().aggregate_train(server_round, replies)
            ends.append(time.perf_counter())
            ok.append(sum(not reply.has_error() for reply in replies))
            previous = ends[-2] if len(ends) > 1 else result["server_start"]
            _progress(round=server_round, seconds=ends[-1] - previous)
            return out

    server = ServerApp()

    @server.main()
    def _server(grid: Grid, context: Context) -> None:
        result["server_start"] = time.perf_counter()
        strategy = TimedFedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,  # no evaluation
            min_train_nodes=clients,  # every client trains every round...
            min_available_nodes=clients,  # ...so wait until all of them are registered
        )
        initial = ArrayRecord([np.zeros(FEATURES + 1, dtype=DTYPE)])
        outcome = strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=rounds,
            train_config=ConfigRecord({"lr": LR}),
        )
        result["params"] = outcome.arrays.to_numpy_ndarrays()[0]
        # Ray is still up (it stops when this returns); Flower's pool is CPUs / CPUs per client.
        result["cpus"] = float(ray.cluster_resources().get("CPU", 0.0))

    client = ClientApp()

    @client.train()
    def _train(message: Message, context: Context) -> Message:
        x, y = _client_data(data_dir, int(context.node_config["partition-id"]))
        theta = message.content["arrays"].to_numpy_ndarrays()[0]
        lr = float(message.content["config"]["lr"])
        reply = RecordDict(
            {
                "arrays": ArrayRecord([local_step(theta, x, y, lr)]),
                "metrics": MetricRecord({"num-examples": len(y)}),
            }
        )
        return Message(content=reply, reply_to=message)

    backend_config = {
        "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
        "init_args": {"logging_level": logging.ERROR, "include_dashboard": False},
    }
    start = time.perf_counter()
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=clients,
        backend_config=backend_config,  # type: ignore[arg-type]
    )
    total = time.perf_counter() - start
    if "params" not in result:
        raise RuntimeError("the ServerApp finished without a model")
    starts = [result["server_start"], *ends[:-1]]
    print(
        RESULT
        + json.dumps(
            {
                "version": f"flwr {metadata.version('flwr')}, ray {ray.__version__}",
                "import_seconds": imported,
                "total": total,
                "rounds": [b - a for a, b in zip(starts, ends, strict=True)],
                "actors": int(result["cpus"] / cpus_per_client),
                "replies": ok,
                "params": [float(v) for v in result["params"]],
            }
        ),
        flush=True,
    )


def flower_check() -> None:
    import ray
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    names = (FedAvg.__name__, run_simulation.__name__)
    print(json.dumps({"flwr": metadata.version("flwr"), "ray": ray.__version__, "api": names}))


def run_flower_once(
    data: Path, clients: int, rounds: int, cpus_per_client: float, timeout: float
) -> dict[str, Any]:
    """One Flower simulation in a fresh subprocess; each phase (start-up, every round) gets
    ``timeout`` seconds of wall time, after which its process group is killed."""
    command = [
        str(flower_python()),
        __file__,
        "--adapter",
        "flower",
        "--data",
        str(data),
        "--clients",
        str(clients),
        "--rounds",
        str(rounds),
        "--flower-cpus-per-client",
        str(cpus_per_client),
    ]
    return run_round_adapter(command, timeout=timeout)


def run_flower(
    data: Path, clients: int, rounds: int, repeats: int, cpus_per_client: float, timeout: float
) -> Measured:
    if not flower_python().exists():
        return Measured(problem=f"not installed (run with --setup): no {flower_python()}")
    m = Measured()
    for _ in range(repeats):
        run = run_flower_once(data, clients, rounds, cpus_per_client, timeout)
        if "problem" in run:
            m.problem = run["problem"]
            break
        m.version, m.actors = run["version"], run["actors"]
        if any(n != clients for n in run["replies"]):
            # FedAvg aggregates whoever answered: the model would not be the workload's
            m.problem = f"clients answering per round: {run['replies']}, not {clients}"
        m.seconds.append(run["total"])
        m.params.append(np.array(run["params"], dtype=DTYPE))
        m.first_round.append(run["rounds"][0])
        if len(run["rounds"]) > 1:
            m.steady.append(statistics.median(run["rounds"][1:]))
    return m


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

LABELS = {
    "loop": "numpy loop over clients (floor)",
    "vectorised": "numpy, all clients as one (C,500,21) array",
    "veil": "veil simulator",
    "flower": "Flower run_simulation (Ray)",
}


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}" if value < 10 else f"{value:.1f}"


def max_diff(m: Measured, reference: np.ndarray) -> str:
    if not m.params:
        return "-"
    return f"{max(float(np.max(np.abs(p - reference))) for p in m.params):.1e}"


def print_report(
    clients: int, rounds: int, repeats: int, local: dict[str, Measured], flower: Measured | None
) -> None:
    loop = local["loop"]
    floor_total = loop.median
    assert floor_total is not None
    floor_round = floor_total / rounds
    reference = loop.params[0]
    print(
        f"\n### C = {clients:,} clients x {SAMPLES} samples, {rounds} rounds; median of "
        f"{repeats} after a warm-up (Flower: {repeats} fresh process(es), no warm-up)\n"
    )
    print(
        "| method | total s (median) | total s (best) | s/round | x loop floor (total) | "
        "x loop floor (per round) | max abs diff vs floor | notes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows: list[tuple[str, Measured]] = [(k, local[k]) for k in LOCAL]
    if flower is not None:
        rows.append(("flower", flower))
    for name, m in rows:
        label = LABELS[name]
        if name == "flower" and m.version:
            label += f" ({m.version})"
        if not m.seconds:
            print(f"| {label} | **{m.problem}** | | | | | | |")
            continue
        total = m.median
        assert total is not None
        notes = ""
        if name == "flower":
            per_round = statistics.median(m.steady) if m.steady else None
            notes = (
                f"s/round = steady, median of rounds 2..{rounds}; cold 1st round "
                f"{_seconds(statistics.median(m.first_round))} s; total includes Ray start-up; "
                f"{m.actors} Ray actor(s)"
            )
        else:
            per_round = total / rounds
            if name == "veil":
                notes = f"the whole call: {_seconds(statistics.median(m.call_seconds))} s"
        if m.problem:
            notes = f"**{m.problem}** " + notes
        print(
            f"| {label} | {_seconds(total)} | {_seconds(m.best)} | {_seconds(per_round)} | "
            f"{ratio_text(total, floor_total)} | {ratio_text(per_round, floor_round)} | "
            f"{max_diff(m, reference)} | {notes} |"
        )

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    veil = local["veil"]
    veil_total = veil.median
    print("\nRatios against the targets:\n")
    if veil_total is None:
        print(f"* veil / loop floor (target <= {TARGET_FLOOR:g}): n/a, veil {veil.problem}")
        print(
            f"* Flower steady s/round / veil s/round (target >= {TARGET_FLOWER:g}): n/a, "
            f"veil {veil.problem}"
        )
        return
    r_floor = veil_total / floor_total
    print(
        f"* veil / loop floor = {ratio_text(veil_total, floor_total)} "
        f"(target <= {TARGET_FLOOR:g}): " + verdict(r_floor <= TARGET_FLOOR)
    )
    if flower is None or not flower.steady:
        why = "Flower not run" if flower is None else (flower.problem or "under 2 rounds")
        print(f"* Flower steady s/round / veil s/round (target >= {TARGET_FLOWER:g}): n/a, {why}")
        return
    veil_round = veil_total / rounds
    steady = statistics.median(flower.steady)
    flower_total = flower.median
    print(
        f"* Flower steady s/round / veil s/round = {ratio_text(steady, veil_round)} "
        f"(target >= {TARGET_FLOWER:g}): {verdict(steady / veil_round >= TARGET_FLOWER)}; "
        f"for context, end to end (Ray start included): {ratio_text(flower_total, veil_total)}"
    )


def save_raw(clients: int, rounds: int, results: dict[str, Measured]) -> Path:
    out = {}
    for name, m in results.items():
        out[name] = {
            "seconds": m.seconds,
            "call_seconds": m.call_seconds,
            "first_round": m.first_round,
            "steady": m.steady,
            "version": m.version,
            "actors": m.actors,
            "problem": m.problem,
            "params": [p.tolist() for p in m.params],
        }
    payload = {"clients": clients, "rounds": rounds, "results": out}
    return write_raw(DATA_DIR, f"fl_simulation_c{clients}_r{rounds}", payload)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--clients", default="100,1000", help="client counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--peers", default=",".join(PEERS), help=f"comma-separated, from: {', '.join(PEERS)}"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per phase of a Flower run"
    )
    parser.add_argument(
        "--flower-cpus-per-client",
        type=float,
        default=1.0,
        help="Ray CPUs per simulated client: 1 gives one actor per core (Flower's default is 2)",
    )
    parser.add_argument(
        "--veil-threads",
        type=int,
        default=1,
        help="PyTorch threads for veil's simulator (its default, 1; 2 helps on an idle machine)",
    )
    parser.add_argument("--setup", action="store_true", help="create Flower's environment")
    # Hidden mode: the Flower adapter.
    parser.add_argument("--adapter", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.rounds < 1:
        parser.error("--repeats and --rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.adapter:
        if args.check:
            flower_check()
        else:
            flower_adapter(args.data, int(args.clients), args.rounds, args.flower_cpus_per_client)
        return 0
    started = time.perf_counter()
    VEIL_THREADS[0] = args.veil_threads
    sizes = [int(s.replace("_", "")) for s in args.clients.split(",") if s.strip()]
    names = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = sorted(set(names) - set(PEERS))
    if unknown:
        print(f"unknown peers {unknown}; known: {', '.join(PEERS)}", file=sys.stderr)
        return 2
    problem: str | None = None
    if args.setup and "flower" in names:
        t0 = time.perf_counter()
        problem = setup_flower()
        status = "ready" if problem is None else f"NOT ready: {problem}"
        print(f"setup flower: {status} ({time.perf_counter() - t0:.0f} s)", flush=True)
    versions = (f"numpy {np.__version__}", f"veil {metadata.version('veil')}")
    print(f"Machine: {machine(*versions)}")
    print(f"Load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for clients in sizes:
        t0 = time.perf_counter()
        features, labels = generate(clients)
        print(f"\nC={clients:,}: data generated in {time.perf_counter() - t0:.1f} s", flush=True)
        local = time_local(features, labels, args.rounds, args.repeats)
        flower: Measured | None = None
        if "flower" in names:
            if problem is not None:
                flower = Measured(problem=f"could not be installed: {problem}")
            else:
                with tempfile.TemporaryDirectory(prefix="veil-fl-bench-") as tmp:
                    np.save(Path(tmp) / "features.npy", features)
                    np.save(Path(tmp) / "labels.npy", labels)
                    t0 = time.perf_counter()
                    flower = run_flower(
                        Path(tmp),
                        clients,
                        args.rounds,
                        args.repeats,
                        args.flower_cpus_per_client,
                        args.timeout,
                    )
                state = flower.problem or "ok"
                print(f"C={clients:,} flower: {state} ({time.perf_counter() - t0:.0f} s)")
        print_report(clients, args.rounds, args.repeats, local, flower)
        results = dict(local) | ({"flower": flower} if flower is not None else {})
        raw = save_raw(clients, args.rounds, results)
        print(f"\nRaw results: {raw.relative_to(ROOT)}", flush=True)
    print(f"\nLoad average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"Total wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
