"""Secure aggregation: one round of veil's SecAgg and SecAgg+ against plain summation, a
client's memory, and Flower's SecAgg+ and SecAgg against Flower's plain FedAvg.

Run from the repository root; ``--setup`` (needed once, harmless later) builds Flower's
environment with ``fl_simulation.py``'s recipe::

    .venv/bin/python benchmarks/secagg.py [--clients 10,50,100] [--dims 100000,1000000]
        [--dropout 0,0.1] [--graphs complete,harary] [--repeats 3] [--peers flower]
        [--flower-clients 50] [--flower-dim 100000] [--flower-rounds 3] [--timeout 900]
        [--setup]

The question: what does it cost to sum n clients' d-dimensional updates so that the server
learns only the sum, when some clients drop out after sharing their keys?

**veil** (this process). One round of ``veil.secagg.protocol`` with all parties in this process,
on random ``uint32`` vectors, over one of two neighbour graphs:

* ``complete``: plain SecAgg (Bonawitz et al. 2017);
* ``harary``: SecAgg+ (Bell et al. 2020), ``neighbours_harary`` (a fresh random graph every
  round);

with the degree k and threshold t that veil's planner chooses,
``veil.secagg.planning.plan_round(n, graph=..., dropout=--plus-dropout, failure=2^-eta)``:
for the complete graph a strict majority, for SecAgg+ the least even k whose union bound on an
aborted round is at most ``failure``, and the complete graph when no sparser one is good
enough. The design point (10% dropouts, failure 2^-20) is fixed, so the 0% and 10% rows share
k and t. (Without ``veil.secagg.planning``, the fallback is the bounds below for SecAgg+ and
``t = ceil(2n/3)`` for the complete graph.)

A dropout rate r removes ``round(r n)`` clients after the share-keys stage (the costliest place:
the server must rebuild their pairwise masks). Timed, after the inputs are made: every client's
work (keys, Shamir sharing, sealing, masking, unmasking) and the server's (graph, routing,
reconstruction, unmasking), reported as the server's seconds and all parties' seconds per round
(wall, and CPU seconds of the one thread all parties run in: the machine may be shared), median
of ``--repeats``, next to the floor: the plain sum of the same n vectors in ``Z_2^32``
(numpy ``uint32``). Every run's output is checked against the exact sum of the survivors.

A cross-check of SecAgg+'s k and t, printed beside the planner's: this benchmark's own bounds
in the manner of Bell et al. (tail bounds over the random relabelling of the Harary graph, a
statistical security parameter sigma and a correctness parameter eta); the bounds are the
benchmark's own, not the paper's constants. Design point: a fraction ``--plus-dropout`` (0.1) of
the clients drop, a fraction ``--plus-corrupt`` (0.1) collude with the server, sigma = 40,
eta = 20. With D dropped and C corrupted clients, a client's k neighbours are a uniformly random
k-subset of the other n - 1, so with hypergeometric tails and union bounds over the n clients:

* privacy: ``n P[Hyp(n-1, C, k) >= t] <= 2^-sigma`` (no client has t corrupted neighbours) and
  ``n^2/2 ((C + D)/n)^k <= 2^-sigma`` (the honest survivors stay connected: removing nodes from a
  relabelled Harary graph disconnects it only if two runs of k/2 ring neighbours go);
* correctness: ``n P[Hyp(n-1, D, k) >= k - t + 1] <= 2^-eta`` (every client keeps t surviving
  neighbours) and ``n^2/2 (D/n)^k <= 2^-eta`` (the survivors stay connected; clients refuse
  otherwise).

k is the least even degree below n - 1 for which some t meets all four, and t the largest such
(the most privacy the dropouts allow); when none does, the complete graph. Unlike the planner,
these bounds count clients colluding with the server.

**Client memory**: one extra round per d at the largest n and dropout, per graph, each in a
fresh process (so that what veil caches per process, such as the zero source of the mask
expansion, is allocated by client 1, the first to mask), tracing client 1 with ``tracemalloc``
during its own calls only: its peak is, over its calls, the most
it allocated within a call plus what its earlier calls left allocated (its copy of the vector,
keys, received shares and the messages it sent, an upper bound), shown as bytes per parameter.

**Flower** (``--peers flower``): Flower 1.42 in its own environment ``.bench-envs/flower``. Each
variant is a fresh subprocess, ``<env>/bin/python secagg.py --adapter flower``, running
``flwr.simulation.run_simulation`` with ``--flower-clients`` supernodes (Ray actors with one CPU
each) and a legacy ``ServerApp`` whose ``DefaultWorkflow`` uses as its fit workflow:

* ``fedavg``: Flower's default fit workflow (plain FedAvg, the floor);
* ``secagg+``: ``SecAggPlusWorkflow(num_shares=k+1, reconstruction_threshold=t)`` with veil's
  SecAgg+ k and t for that n (Flower counts the client itself among its shares), and
  ``secaggplus_mod`` on the clients;
* ``secagg+ 7/4``: the same with 7 shares and threshold 4, the setting of the measurement quoted
  in issue 5 (research notes, ``/work/shared/notes/fl.md`` 4.2);
* ``secagg``: ``SecAggWorkflow(reconstruction_threshold=t)`` (every client a neighbour of every
  other) with veil's complete-graph t and ``secagg_mod`` on the clients;
* ``secagg n/2``: the same with threshold n/2 (the issue's setting: 25 of 50).

All secure variants use ``max_weight=1.0`` (as the issue's measurement did; it changes the
quantisation's precision, not the work).

The clients do not train: each returns a fixed float32 update of ``--flower-dim`` parameters
(uniform in [-1, 1], seeded by its partition id) with weight 1; FedAvg (``fraction_fit = 1``, no
evaluation) averages them. Timed: each round's fit workflow, from its start to the aggregate;
reported: the steady seconds per round (the median of rounds 2..R) and the cold first round. The
final model is compared with the exact mean of the updates (Flower's SecAgg quantises: clipping
range 8, 2^22 levels, so about 4e-6). No dropouts on Flower's side. ``--timeout`` bounds each
phase (start-up, every round); a run that overruns is killed and reported as a timeout.

Raw results go to ``.bench-data/secagg_<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import tracemalloc
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from _harness import PROGRESS, RESULT, machine, ratio_text, run_round_adapter, write_raw

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / ".bench-data"
ENV_DIR = ROOT / ".bench-envs"
PEERS = ("flower",)
GRAPHS = ("complete", "harary")
FLOWER_VARIANTS = ("fedavg", "secagg+", "secagg")  # the adapter's workflows
FLOWER_RUNS = ("fedavg", "secagg+", "secagg+ 7/4", "secagg", "secagg n/2")
SEED = 2026_11_23


# --------------------------------------------------------------------------------------------
# SecAgg+ parameters (Bell et al. 2020, bounds computed here)
# --------------------------------------------------------------------------------------------


def _hypergeometric_at_least(population: int, marked: int, draws: int, at_least: int) -> float:
    """P[X >= at_least] for X the number of marked items among ``draws`` drawn without
    replacement from ``population`` items of which ``marked`` are marked."""
    total = math.comb(population, draws)
    top = min(marked, draws)
    return (
        sum(
            math.comb(marked, i) * math.comb(population - marked, draws - i)
            for i in range(max(at_least, 0), top + 1)
        )
        / total
    )


def secagg_plus_parameters(
    n: int, dropout: float, corrupt: float, sigma: float, eta: float
) -> tuple[int, int, bool]:
    """SecAgg+'s (degree k, threshold t, whether the complete graph is needed) for n clients;
    the bounds are in the module docstring."""
    dropped = math.ceil(dropout * n)
    corrupted = math.floor(corrupt * n)
    privacy, correctness = 2.0**-sigma, 2.0**-eta
    for k in range(2, n - 1, 2):
        if n * n / 2 * ((corrupted + dropped) / n) ** k > privacy:
            continue
        if n * n / 2 * (dropped / n) ** k > correctness:
            continue
        good = [
            t
            for t in range(2, k + 2)
            if n * _hypergeometric_at_least(n - 1, corrupted, k, t) <= privacy
            and n * _hypergeometric_at_least(n - 1, dropped, k, k - t + 1) <= correctness
        ]
        if good:
            return k, max(good), False
    return n - 1, max(2, math.ceil(2 * n / 3)), True


# --------------------------------------------------------------------------------------------
# veil (this process)
# --------------------------------------------------------------------------------------------


class ClientMemory:
    """tracemalloc around one client's own calls: the peak of each call on top of what the
    client's earlier calls left allocated."""

    def __init__(self) -> None:
        self.kept = 0  # bytes the client's earlier calls left allocated
        self.peak = 0

    def call(self, fn: Any, *args: Any) -> Any:
        tracemalloc.start()
        try:
            out = fn(*args)
            after, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.peak = max(self.peak, self.kept + peak)
        self.kept += after
        return out


class Stopwatch:
    """Wall and CPU seconds (this thread's: every party runs in it) per party."""

    def __init__(self) -> None:
        self.wall = {"client": 0.0, "server": 0.0}
        self.cpu = {"client": 0.0, "server": 0.0}
        self._started = (0.0, 0.0)

    def start(self) -> None:
        self._started = (time.perf_counter(), time.thread_time())

    def stop(self, party: str) -> None:
        wall, cpu = self._started
        self.wall[party] += time.perf_counter() - wall
        self.cpu[party] += time.thread_time() - cpu


def one_round(
    inputs: dict[int, np.ndarray],
    dropped: set[int],
    threshold: int,
    graph: str,
    degree: int,
    memory: ClientMemory | None = None,
) -> dict[str, float]:
    from veil.secagg.protocol import (
        SecAggClient,
        SecAggServer,
        neighbours_complete,
        neighbours_harary,
    )

    n = len(inputs)
    dim = next(iter(inputs.values())).size
    watch = Stopwatch()
    watched = 1 if memory is not None else None

    def run(u: int, fn: Any, *args: Any) -> Any:
        if u == watched:
            assert memory is not None
            return memory.call(fn, *args)
        return fn(*args)

    watch.start()
    clients = {
        u: run(u, lambda u=u, x=x: SecAggClient(u, session=b"bench", round=1, vector=x))
        for u, x in inputs.items()
    }
    adverts = [run(u, c.advertise) for u, c in clients.items()]
    watch.stop("client")
    watch.start()
    ids = range(1, n + 1)
    if graph == "complete" or degree >= n - 1:
        neighbours = neighbours_complete(ids)
    else:
        neighbours = neighbours_harary(ids, degree=degree)
    server = SecAggServer(
        session=b"bench", round=1, threshold=threshold, dimension=dim, neighbours=neighbours
    )
    directory = server.collect_keys(adverts)
    watch.stop("server")
    watch.start()
    shares = [run(u, c.share_keys, directory) for u, c in clients.items()]
    watch.stop("client")
    watch.start()
    routed = server.collect_shares(shares)
    watch.stop("server")
    alive = [u for u in clients if u not in dropped]
    watch.start()
    masked = [run(u, clients[u].masked_input, routed[u]) for u in alive]
    watch.stop("client")
    watch.start()
    request = server.collect_masked(masked)
    watch.stop("server")
    watch.start()
    answers = [run(u, clients[u].unmask, request) for u in alive]
    watch.stop("client")
    watch.start()
    total = server.finish(answers)
    watch.stop("server")
    expected = np.zeros(dim, dtype=np.uint32)
    for u in alive:
        expected += inputs[u]
    if not np.array_equal(total, expected):
        raise AssertionError("the secure sum differs from the exact sum of the survivors")
    return {
        "client_total": watch.wall["client"],
        "client_each": watch.wall["client"] / n,
        "server": watch.wall["server"],
        "client_cpu": watch.cpu["client"],
        "server_cpu": watch.cpu["server"],
    }


def plain_sum(inputs: dict[int, np.ndarray]) -> float:
    t = time.perf_counter()
    total = np.zeros(next(iter(inputs.values())).size, dtype=np.uint32)
    for x in inputs.values():
        total += x
    return time.perf_counter() - t


def _s(value: float) -> str:
    """Seconds with the digits that matter."""
    return f"{value:.5f}" if value < 0.01 else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _planner() -> Any:
    try:
        from veil.secagg.planning import plan_round
    except ImportError:
        return None
    return plan_round


def graph_parameters(graph: str, n: int, args: argparse.Namespace) -> tuple[int, int, str]:
    """(degree, threshold, label) of a graph at n clients: veil's planner's, or the fallback."""
    plan_round = _planner()
    if plan_round is not None:
        plan = plan_round(
            n,
            graph="secagg" if graph == "complete" else "secagg+",
            dropout=args.plus_dropout,
            failure=2.0**-args.plus_eta,
        )
        k, t, complete = plan.degree, plan.threshold, plan.degree >= n - 1
    elif graph == "complete":
        k, t, complete = n - 1, max(2, math.ceil(2 * n / 3)), True
    else:
        k, t, complete = secagg_plus_parameters(
            n, args.plus_dropout, args.plus_corrupt, args.plus_sigma, args.plus_eta
        )
    if graph == "complete":
        return k, t, f"SecAgg (complete, k={k})"
    if complete:
        return k, t, f"SecAgg+ = complete (k={k})"
    return k, t, f"SecAgg+ (Harary, k={k})"


def run_veil(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    print(
        "\n| clients | d | dropout | graph | t | plain sum s | client s (each) | server s | "
        "server / plain sum | all parties s | all parties / plain sum | server CPU s | "
        "all parties CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for n in args.clients:
        for dim in args.dims:
            inputs = {
                u: rng.integers(0, 2**32, size=dim, dtype=np.uint64).astype(np.uint32)
                for u in range(1, n + 1)
            }
            for rate in args.dropout:
                dropped = set(range(n, n - round(rate * n), -1))
                plain = statistics.median(plain_sum(inputs) for _ in range(args.repeats))
                for graph in args.graphs:
                    k, t, label = graph_parameters(graph, n, args)
                    runs = [one_round(inputs, dropped, t, graph, k) for _ in range(args.repeats)]
                    each = statistics.median(r["client_each"] for r in runs)
                    server = statistics.median(r["server"] for r in runs)
                    everything = statistics.median(r["client_total"] + r["server"] for r in runs)
                    server_cpu = statistics.median(r["server_cpu"] for r in runs)
                    all_cpu = statistics.median(r["client_cpu"] + r["server_cpu"] for r in runs)
                    rows.append(
                        {
                            "clients": n,
                            "dim": dim,
                            "dropout": rate,
                            "graph": graph,
                            "degree": k,
                            "threshold": t,
                            "plain": plain,
                            "client_each": each,
                            "server": server,
                            "all_parties": everything,
                            "server_cpu": server_cpu,
                            "all_parties_cpu": all_cpu,
                            "runs": runs,
                        }
                    )
                    print(
                        f"| {n} | {dim:,} | {rate:.0%} | {label} | {t} | {_s(plain)} | "
                        f"{_s(each)} | {_s(server)} | {ratio_text(server, plain)} | "
                        f"{_s(everything)} | {ratio_text(everything, plain)} | "
                        f"{_s(server_cpu)} | {_s(all_cpu)} |",
                        flush=True,
                    )
    return rows


def run_memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    n = max(args.clients)
    rate = max(args.dropout)
    rows: list[dict[str, Any]] = []
    print(
        f"\nClient memory: client 1 of n = {n}, {rate:.0%} dropout (it survives), tracemalloc "
        "during its own calls (peak of a call + what its earlier calls left allocated)\n"
    )
    print("| graph | d | peak bytes | bytes per parameter |")
    print("|---|---|---|---|")
    import subprocess

    for graph in args.graphs:
        k, t, label = graph_parameters(graph, n, args)
        for dim in args.dims:
            # A fresh process each: buffers veil caches per process (a zero source for the
            # mask expansion) are then allocated by client 1, the first to mask, as they would
            # be in a client's own process.
            spec = f"{graph},{dim},{n},{rate},{k},{t}"
            done = subprocess.run(
                [sys.executable, __file__, "--memory-child", spec],
                capture_output=True,
                text=True,
                check=False,
                timeout=args.timeout,
            )
            found = [x for x in done.stdout.splitlines() if x.startswith(RESULT)]
            if done.returncode != 0 or not found:
                tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                print(f"| {label} | {dim:,} | failed: {tail} | |", flush=True)
                continue
            peak = int(json.loads(found[-1][len(RESULT) :])["peak_bytes"])
            rows.append({"graph": graph, "degree": k, "dim": dim, "peak_bytes": peak})
            print(f"| {label} | {dim:,} | {peak:,} | {peak / dim:.1f} |", flush=True)
    for graph in args.graphs:
        mine = sorted((r["dim"], r["peak_bytes"]) for r in rows if r["graph"] == graph)
        if len(mine) >= 2 and mine[-1][0] > mine[0][0]:
            (d0, p0), (d1, p1) = mine[0], mine[-1]
            print(
                f"\n{graph}: {(p1 - p0) / (d1 - d0):.1f} bytes per extra parameter between "
                f"d = {d0:,} and d = {d1:,} (the rest, {p0 - (p1 - p0) / (d1 - d0) * d0:,.0f} "
                "bytes, does not grow with d)"
            )
    return rows


def memory_child(spec: str) -> None:
    """Hidden mode: one round in this fresh process, client 1 traced; one result line."""
    graph, dim, n, rate, k, t = spec.split(",")
    clients, size = int(n), int(dim)
    rng = np.random.default_rng(1)
    inputs = {
        u: rng.integers(0, 2**32, size=size, dtype=np.uint64).astype(np.uint32)
        for u in range(1, clients + 1)
    }
    dropped = set(range(clients, clients - round(float(rate) * clients), -1))
    memory = ClientMemory()
    one_round(inputs, dropped, int(t), graph, int(k), memory)
    print(RESULT + json.dumps({"peak_bytes": memory.peak}), flush=True)


# --------------------------------------------------------------------------------------------
# Flower: its adapter (run with Flower's python) and its runner
# --------------------------------------------------------------------------------------------


def source_version() -> str:
    """The commit veil runs from, and whether its secure aggregation has uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "src/veil/secagg")
    return head + (" + uncommitted changes in src/veil/secagg" if dirty else "")


def flower_python() -> Path:
    return ENV_DIR / "flower" / "bin" / "python"


def _progress(**fields: Any) -> None:
    print(PROGRESS + json.dumps(fields), file=sys.stderr, flush=True)


def _flower_update(partition: int, dim: int) -> np.ndarray:
    """The fixed update of the client with this partition id."""
    return np.random.default_rng([SEED, partition]).uniform(-1.0, 1.0, dim).astype(np.float32)


def flower_adapter(
    variant: str, clients: int, dim: int, rounds: int, shares: int, threshold: int
) -> None:
    """Hidden mode, run with Flower's python: one simulation, then one result line."""
    import logging
    import warnings

    warnings.simplefilter("ignore")  # deprecation notices of the legacy API
    started = time.perf_counter()
    from flwr.app import Context
    from flwr.client import NumPyClient
    from flwr.client.mod import secagg_mod, secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerApp, ServerConfig
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow, SecAggWorkflow
    from flwr.server.workflow.default_workflows import default_fit_workflow
    from flwr.simulation import run_simulation

    imported = time.perf_counter() - started
    _progress(phase="imported", seconds=imported)
    seconds: list[float] = []
    replies: list[tuple[int, int]] = []  # (results, failures) per round
    final: dict[str, Any] = {}

    class CountingFedAvg(FedAvg):  # type: ignore[misc]
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            replies.append((len(results), len(failures)))
            out = super().aggregate_fit(server_round, results, failures)
            if out[0] is not None:
                final["params"] = parameters_to_ndarrays(out[0])
            return out

    if variant == "fedavg":
        inner: Any = default_fit_workflow
    elif variant == "secagg+":
        inner = SecAggPlusWorkflow(
            num_shares=shares, reconstruction_threshold=threshold, max_weight=1.0
        )
    else:
        inner = SecAggWorkflow(reconstruction_threshold=threshold, max_weight=1.0)

    def timed_fit(grid: Any, context: Any) -> None:
        t = time.perf_counter()
        inner(grid, context)
        seconds.append(time.perf_counter() - t)
        _progress(round=len(seconds), seconds=seconds[-1])

    server = ServerApp()

    @server.main()
    def _server(grid: Any, context: Context) -> None:
        strategy = CountingFedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,  # no evaluation
            min_fit_clients=clients,  # every client every round...
            min_available_clients=clients,  # ...once all of them are registered
            initial_parameters=ndarrays_to_parameters([np.zeros(dim, dtype=np.float32)]),
        )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy
        )
        DefaultWorkflow(fit_workflow=timed_fit)(grid, legacy)

    class FixedUpdate(NumPyClient):  # type: ignore[misc]
        def __init__(self, partition: int) -> None:
            self.partition = partition

        def fit(self, parameters: Any, config: Any) -> Any:
            return [_flower_update(self.partition, dim)], 1, {}

    def client_fn(context: Context) -> Any:
        return FixedUpdate(int(context.node_config["partition-id"])).to_client()

    mods = {"fedavg": [], "secagg+": [secaggplus_mod], "secagg": [secagg_mod]}[variant]
    client = ClientApp(client_fn=client_fn, mods=mods)
    backend_config = {
        "client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
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
    if "params" not in final:
        raise RuntimeError("the ServerApp finished without a model")
    mean = np.mean([_flower_update(p, dim).astype(np.float64) for p in range(clients)], axis=0)
    print(
        RESULT
        + json.dumps(
            {
                "version": f"flwr {metadata.version('flwr')}, ray {metadata.version('ray')}",
                "import_seconds": imported,
                "total": total,
                "rounds": seconds,
                "replies": replies,
                "max_abs_diff": float(np.max(np.abs(final["params"][0] - mean))),
            }
        ),
        flush=True,
    )


def run_flower_once(
    variant: str,
    clients: int,
    dim: int,
    rounds: int,
    shares: int,
    threshold: int,
    timeout: float,
) -> dict[str, Any]:
    """One Flower simulation in a fresh subprocess; each phase (start-up, every round) gets
    ``timeout`` seconds of wall time, after which its process group is killed."""
    command = [
        str(flower_python()),
        __file__,
        "--adapter",
        "flower",
        "--variant",
        variant,
        "--flower-clients",
        str(clients),
        "--flower-dim",
        str(dim),
        "--flower-rounds",
        str(rounds),
        "--shares",
        str(shares),
        "--threshold",
        str(threshold),
    ]
    return run_round_adapter(command, timeout=timeout)


def run_flower(args: argparse.Namespace, problem: str | None) -> dict[str, dict[str, Any]]:
    n, dim = args.flower_clients, args.flower_dim
    k, t, _ = graph_parameters("harary", n, args)
    _, complete_t, _ = graph_parameters("complete", n, args)
    half_t = max(2, n // 2)
    settings = {
        "fedavg": ("fedavg", 0, 0, "plain FedAvg (default fit workflow)"),
        "secagg+": (
            "secagg+",
            k + 1,
            t,
            f"SecAgg+: SecAggPlusWorkflow(num_shares={k + 1}, threshold={t}), veil's k, t",
        ),
        "secagg+ 7/4": (
            "secagg+",
            7,
            4,
            "SecAgg+: SecAggPlusWorkflow(num_shares=7, threshold=4), the issue's setting",
        ),
        "secagg": (
            "secagg",
            n,
            complete_t,
            f"SecAgg: SecAggWorkflow(threshold={complete_t}), {n} shares, veil's t",
        ),
        "secagg n/2": (
            "secagg",
            n,
            half_t,
            f"SecAgg: SecAggWorkflow(threshold={half_t}), {n} shares, the issue's setting",
        ),
    }
    results: dict[str, dict[str, Any]] = {}
    for key in FLOWER_RUNS:
        variant, shares, threshold, label = settings[key]
        if problem is not None:
            run: dict[str, Any] = {"problem": problem}
        elif not flower_python().exists():
            run = {"problem": f"not run: no {flower_python().relative_to(ROOT)} (use --setup)"}
        else:
            t0 = time.perf_counter()
            run = run_flower_once(
                variant, n, dim, args.flower_rounds, shares, threshold, args.timeout
            )
            state = run.get("problem", "ok")
            print(f"flower {key}: {state} ({time.perf_counter() - t0:.0f} s)", flush=True)
        run["label"] = label
        if "rounds" in run:
            rounds = run["rounds"]
            run["first"] = rounds[0]
            run["steady"] = statistics.median(rounds[1:]) if len(rounds) > 1 else rounds[0]
            if any(tuple(r) != (n, 0) for r in run["replies"]):
                run["problem"] = f"(results, failures) per round: {run['replies']}"
        results[key] = run
    return results


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def print_flower(args: argparse.Namespace, flower: dict[str, dict[str, Any]]) -> None:
    n, dim = args.flower_clients, args.flower_dim
    version = next((r["version"] for r in flower.values() if "version" in r), "Flower")
    print(
        f"\nFlower ({version}): {n} clients, d = {dim:,}, {args.flower_rounds} rounds per "
        "variant, one process each, no dropouts\n"
    )
    print(
        "| variant | steady s/round (median of rounds 2..R) | cold 1st round s | "
        "x FedAvg (steady) | max abs diff vs exact mean | notes |"
    )
    print("|---|---|---|---|---|---|")
    floor = flower["fedavg"].get("steady")
    for key in FLOWER_RUNS:
        r = flower[key]
        if "steady" not in r:
            print(f"| {r['label']} | **{r['problem']}** | | | | |")
            continue
        print(
            f"| {r['label']} | {r['steady']:.3f} | {r['first']:.3f} | "
            f"{ratio_text(r['steady'], floor)} | {r['max_abs_diff']:.1e} | "
            f"{('**' + r['problem'] + '**') if r.get('problem') else ''} |"
        )


def print_ratios(
    args: argparse.Namespace, rows: list[dict[str, Any]], flower: dict[str, dict[str, Any]] | None
) -> None:
    print("\nRatios:\n")
    for row in rows:
        if row["graph"] != "harary":
            continue
        print(
            f"* veil SecAgg+ (k={row['degree']}, t={row['threshold']}) n={row['clients']}, "
            f"d={row['dim']:,}, {row['dropout']:.0%} dropout: server / plain sum = "
            f"{ratio_text(row['server'], row['plain'])}, all parties / plain sum = "
            f"{ratio_text(row['all_parties'], row['plain'])}"
        )
    if flower is None:
        return
    n, dim = args.flower_clients, args.flower_dim
    floor = flower["fedavg"].get("steady")
    for key in FLOWER_RUNS[1:]:
        r = flower[key]
        what = r["label"].split(":")[0] + f" ({key})"
        if "steady" in r and floor:
            print(
                f"* Flower {what} / Flower FedAvg, steady s/round, n={n}, d={dim:,}: "
                f"{ratio_text(r['steady'], floor)} ({r['steady']:.3f} s / {floor:.3f} s)"
            )
        else:
            print(f"* Flower {what} / Flower FedAvg: n/a ({r.get('problem', 'not run')})")
    same = {
        (row["graph"]): row
        for row in rows
        if row["clients"] == n and row["dim"] == dim and row["dropout"] == 0
    }
    for graph, variant, what in (
        ("harary", "secagg+", "SecAgg+"),
        ("complete", "secagg", "SecAgg"),
    ):
        row, r = same.get(graph), flower[variant]
        if row is None or "steady" not in r:
            print(f"* veil {what} vs Flower {what} at n={n}, d={dim:,}, 0%: n/a")
            continue
        overhead = r["steady"] - floor if floor else None
        print(
            f"* Flower {what} s/round / veil {what} all parties s, n={n}, d={dim:,}, 0% dropout: "
            f"{ratio_text(r['steady'], row['all_parties'])} ({r['steady']:.3f} s / "
            f"{row['all_parties']:.3f} s); Flower's cost over its FedAvg round "
            f"({overhead:.3f} s) / veil's cost over the plain sum "
            f"({row['all_parties'] - row['plain']:.3f} s): "
            f"{ratio_text(overhead, row['all_parties'] - row['plain'])}"
        )
    if floor and "harary" in same:
        row = same["harary"]
        print(
            f"* veil SecAgg+ all parties s / Flower FedAvg s/round at n={n}, d={dim:,}: "
            f"{ratio_text(row['all_parties'], floor)} (veil's in-process round, no transport, "
            "against Flower's whole plain round)"
        )


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--clients", default="10,50,100")
    parser.add_argument("--dims", default="100000,1000000")
    parser.add_argument("--dropout", default="0,0.1")
    parser.add_argument("--graphs", default=",".join(GRAPHS), help="from: complete, harary")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--plus-dropout", type=float, default=0.1, help="SecAgg+ design dropout")
    parser.add_argument("--plus-corrupt", type=float, default=0.1, help="SecAgg+ corrupt share")
    parser.add_argument("--plus-sigma", type=float, default=40.0, help="privacy: 2^-sigma")
    parser.add_argument("--plus-eta", type=float, default=20.0, help="correctness: 2^-eta")
    parser.add_argument("--peers", default=",".join(PEERS), help="'flower' or ''")
    parser.add_argument("--flower-clients", type=int, default=50)
    parser.add_argument("--flower-dim", type=int, default=100_000)
    parser.add_argument("--flower-rounds", type=int, default=3)
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds per phase of a Flower run"
    )
    parser.add_argument("--setup", action="store_true", help="create Flower's environment")
    # Hidden mode: the Flower adapter.
    parser.add_argument("--adapter", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=FLOWER_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--shares", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threshold", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.adapter or args.memory_child:
        return args
    args.clients = _ints(args.clients)
    args.dims = _ints(args.dims)
    args.dropout = [float(r) for r in args.dropout.split(",") if r.strip()]
    args.graphs = [g.strip() for g in args.graphs.split(",") if g.strip()]
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if set(args.graphs) - set(GRAPHS) or set(args.peers) - set(PEERS):
        parser.error(f"graphs from {GRAPHS}, peers from {PEERS}")
    if args.repeats < 1 or args.flower_rounds < 1:
        parser.error("--repeats and --flower-rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return 0
    if args.adapter:
        flower_adapter(
            args.variant,
            args.flower_clients,
            args.flower_dim,
            args.flower_rounds,
            args.shares,
            args.threshold,
        )
        return 0
    started = time.perf_counter()
    problem: str | None = None
    if args.setup and "flower" in args.peers:
        from fl_simulation import setup_flower

        t0 = time.perf_counter()
        problem = setup_flower()
        status = "ready" if problem is None else f"NOT ready: {problem}"
        print(f"setup flower: {status} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if problem is not None:
            problem = f"not run: could not be installed: {problem}"
    versions = (
        f"numpy {np.__version__}",
        f"cryptography {metadata.version('cryptography')}",
        f"veil {metadata.version('veil')}",
    )
    print(f"Machine: {machine(*versions)}")
    print(f"Load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"veil source: {source_version()}")
    source = "veil.secagg.planning.plan_round" if _planner() else "this benchmark's bounds"
    print(
        f"Design point: {args.plus_dropout:.0%} dropouts, round failure <= 2^-{args.plus_eta:g}; "
        f"k and t from {source}. Cross-check, this benchmark's Bell-style bounds with "
        f"{args.plus_corrupt:.0%} corrupt clients and privacy failure <= 2^-{args.plus_sigma:g}:"
    )
    for n in sorted(set(args.clients) | {args.flower_clients}):
        _, ct, _ = graph_parameters("complete", n, args)
        _, t, label = graph_parameters("harary", n, args)
        bk, bt, _ = secagg_plus_parameters(
            n, args.plus_dropout, args.plus_corrupt, args.plus_sigma, args.plus_eta
        )
        print(f"  n = {n}: complete t = {ct}; {label}, t = {t}; bounds: k = {bk}, t = {bt}")
    rows = run_veil(args)
    memory = run_memory(args) if args.memory else []
    flower = run_flower(args, problem) if "flower" in args.peers else None
    if flower is not None:
        print_flower(args, flower)
    print_ratios(args, rows, flower)
    raw = write_raw(
        DATA_DIR,
        "secagg",
        {
            "args": dict(vars(args)),
            "veil": rows,
            "memory": memory,
            "flower": flower,
        },
    )
    print(f"\nRaw results: {raw.relative_to(ROOT)}")
    print(f"Load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"Total wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
