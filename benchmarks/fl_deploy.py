"""Benchmark: federated rounds over gRPC against the simulator on the same workload.

A coordinator (``veil fl serve``) and N client agents (``veil fl join``), each its own process,
talk over mutual TLS on loopback; the simulator runs the same federation in one process. Same
model (an MLP 256 -> 3800 -> 10, 1,014,610 parameters), same data (200 synthetic examples per
client), same training (one full-batch epoch), same aggregation (plain FedAvg, or SecAgg+).

Reported per round (the median over rounds 2..R; round 1 includes the agents' first contact):
seconds, and bytes on the wire as the coordinator counts them (gRPC payloads in and out, not
TLS or HTTP/2 framing), against the simulator's seconds and the payload bytes it counts. The
ratio ``deployed / simulator`` is the transport's overhead (target: at most 1.5). The agents
also report the seconds they spent computing (training, encoding, masking); the deployed round
minus its slowest agent's computing is the coordination and the transport (on this 2-core
machine N agent processes share two cores, where in a consortium each has its own machine).

    .venv/bin/python benchmarks/fl_deploy.py                      # 3 and 10 clients, both modes
    .venv/bin/python benchmarks/fl_deploy.py --clients 3 --mode secagg+ --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _harness import machine, ratio_text, write_raw

FEATURES, HIDDEN, CLASSES, EXAMPLES = 256, 3800, 10, 200


def make_data(clients: int, folder: Path) -> list[str]:
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(FEATURES, CLASSES))
    names = [f"hospital-{i:02d}" for i in range(clients)]
    for name in names:
        x = rng.normal(size=(EXAMPLES, FEATURES)).astype(np.float32)
        y = np.argmax(x @ teacher + rng.normal(size=(EXAMPLES, CLASSES)), axis=1)
        np.savez(folder / f"{name}.npz", x=x, y=y.astype(np.int64))
    return names


def make_pki(folder: Path, names: list[str]) -> None:
    from veil.tls import issue, make_ca

    ca_cert, ca_key = make_ca("benchmark CA")
    (folder / "ca.pem").write_bytes(ca_cert)
    pairs = {"coordinator": issue(ca_cert, ca_key, "coordinator", hosts=["127.0.0.1"])}
    pairs.update({n: issue(ca_cert, ca_key, n, client=True) for n in names})
    for name, (cert, key) in pairs.items():
        (folder / f"{name}.pem").write_bytes(cert)
        (folder / f"{name}.key").write_bytes(key)


def write_config(folder: Path, names: list[str], rounds: int, mode: str, port: int) -> Path:
    text = f"""
[federation]
name = "benchmark"
clients = {json.dumps(names)}
rounds = {rounds}
listen = "127.0.0.1:{port}"
state = "coordinator.sqlite"
stage_seconds = 300
start_seconds = 600
min_clients = {len(names)}

[model]
kind = "mlp"
features = {FEATURES}
classes = {CLASSES}
hidden = [{HIDDEN}]

[training]
local_epochs = 1
learning_rate = 0.1

[secure_aggregation]
graph = "{mode if mode != "plain" else "none"}"

[tls]
dir = "{folder}"
name = "coordinator"
"""
    path = folder / "fed.toml"
    path.write_text(text)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deployed(clients: int, rounds: int, mode: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        names = make_data(clients, folder)
        make_pki(folder, names)
        port = free_port()
        config = write_config(folder, names, rounds, mode, port)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        veil = [sys.executable, "-m", "veil"]
        log = (folder / "coordinator.err").open("wb")
        serve = subprocess.Popen(
            [*veil, "fl", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=folder,
            env=env,
        )
        agents = [
            subprocess.Popen(
                [
                    *veil,
                    "fl",
                    "join",
                    "--server",
                    f"127.0.0.1:{port}",
                    "--cert",
                    str(folder / f"{n}.pem"),
                    "--data",
                    str(folder / f"{n}.npz"),
                    *(["--allow-plain-updates"] if mode == "plain" else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=(folder / f"{n}.err").open("wb"),
                cwd=folder,
                env=env,
            )
            for n in names
        ]
        try:
            code = serve.wait(timeout=3600)
            for a in agents:
                a.wait(timeout=120)
        finally:
            for p in (serve, *agents):
                if p.poll() is None:
                    p.kill()
            log.close()
        events = [
            json.loads(line)
            for line in (folder / "coordinator.err").read_text().splitlines()
            if line.startswith("{")
        ]
        if code != 0:
            raise SystemExit(f"the coordinator failed: {(folder / 'coordinator.err').read_text()}")
        compute: dict[int, float] = {}
        for n in names:
            for line in (folder / f"{n}.err").read_text().splitlines():
                if line.startswith('{"event": "round_done"'):
                    e = json.loads(line)
                    compute[e["round"]] = max(compute.get(e["round"], 0.0), e["compute_seconds"])
    closed = [e for e in events if e["event"] == "round_closed"]
    later = closed[1:] or closed
    started = {e["round"]: e["t"] for e in events if e["event"] == "round_started"}
    stages = [
        {"round": e["round"], "stage": e["stage"], "at": round(e["t"] - started[e["round"]], 3)}
        for e in events
        if e["event"] == "stage_closed"
    ]
    return {
        "seconds": statistics.median(e["seconds"] for e in later),
        "slowest_agent_compute": statistics.median(compute[e["round"]] for e in later),
        "bytes": statistics.median(e["bytes_received"] + e["bytes_sent"] for e in later),
        "completed": [e["completed"] for e in closed],
        "rounds": [
            {k: e[k] for k in ("round", "seconds", "bytes_received", "bytes_sent")} for e in closed
        ],
        "stages": stages,
    }


def simulated(clients: int, rounds: int, mode: str) -> dict[str, Any]:
    import torch

    from veil.deploy.config import ModelSpec
    from veil.federated import SecureAggregation, Simulation, TrainConfig
    from veil.federated.data import FederatedData
    from veil.federated.training import ClientData

    with tempfile.TemporaryDirectory() as tmp:
        names = make_data(clients, Path(tmp))
        parts = [np.load(Path(tmp) / f"{n}.npz") for n in names]
        x = np.concatenate([p["x"] for p in parts])
        y = np.concatenate([p["y"] for p in parts])
    sizes = [EXAMPLES] * clients
    starts = np.cumsum([0, *sizes[:-1]])
    data = FederatedData(
        "benchmark",
        torch.from_numpy(x),
        torch.from_numpy(y),
        tuple(np.arange(s, s + n) for s, n in zip(starts, sizes, strict=True)),
        tuple(names),
        ClientData(torch.from_numpy(x[:EXAMPLES]), torch.from_numpy(y[:EXAMPLES])),
        CLASSES,
    )
    model = ModelSpec(kind="mlp", features=FEATURES, classes=CLASSES, hidden=(HIDDEN,)).build()
    sim = Simulation(
        model=model,
        data=data,
        rounds=rounds,
        config=TrainConfig(local_epochs=1, learning_rate=0.1),
        secure_aggregation=None if mode == "plain" else SecureAggregation(graph=mode),
        seed=0,
        evaluate_every=0,
    )
    records = sim.run().rounds
    later = records[1:] or records
    return {
        "seconds": statistics.median(r.seconds for r in later),
        "bytes": statistics.median((r.bytes_sent or 0) + (r.bytes_received or 0) for r in later),
        "parameters": sim.layout.size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--mode", nargs="+", default=["plain", "secagg+"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks"))
    args = parser.parse_args()
    import grpc
    import torch

    print(machine(f"torch {torch.__version__}", f"grpcio {grpc.__version__}"))
    rows = []
    for mode in args.mode:
        for n in args.clients:
            started = time.perf_counter()
            sim = simulated(n, args.rounds, mode)
            dep = deployed(n, args.rounds, mode)
            rows.append({"mode": mode, "clients": n, "simulator": sim, "deployed": dep})
            rest = dep["seconds"] - dep["slowest_agent_compute"]
            print(
                f"{mode:8s} n={n:3d} d={sim['parameters']:,}: simulator {sim['seconds']:.3f} s "
                f"and {sim['bytes'] / 1e6:.1f} MB per round; deployed {dep['seconds']:.3f} s "
                f"(slowest agent computing {dep['slowest_agent_compute']:.3f} s, the rest "
                f"{rest:.3f} s) and {dep['bytes'] / 1e6:.1f} MB per round; ratio "
                f"{ratio_text(dep['seconds'], sim['seconds'])} "
                f"(completed {dep['completed']}; {time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    path = write_raw(args.out, "fl_deploy", {"rows": rows, "rounds": args.rounds})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
