"""A federated round under secure aggregation against the same round without it.

Run from the repository root::

    .venv/bin/python benchmarks/fl_secure_round.py [--workloads digits,fashion] [--clients 50]
        [--rounds 6] [--dropout 0,0.1]

The question: what does secure aggregation add to a whole FedAvg round of veil's simulator?
Two workloads of about 100,000 parameters, every client sampled, one local epoch of
mini-batches of 32 per round:

* ``digits``: the digits data (1,797 images) split IID among ``--clients`` clients (36 images
  each at 50 clients: almost no training), an MLP 64-1500-10 (112,510 parameters);
* ``fashion``: Fashion-MNIST's 60,000 training images (Debian's ``dataset-fashion-mnist``)
  split IID (1,200 each at 50 clients), an MLP 784-128-10 (101,770 parameters).
 Three runs of the same seeded rounds:
plain FedAvg (the server receives each update), SecAgg+ (the planned sparse graph) and SecAgg
(the complete graph), each client's crypto and the server's run one after another in this one
process, as the simulator does. Seconds per round are the median over rounds 2.. (round 1 warms
PyTorch up). A dropout rate r drops each client with probability r after it shared its keys,
so the server rebuilds its masks.

The floor is the primitives the SecAgg+ round cannot avoid, timed on their own: one AES-CTR
mask of d words per (client, neighbour) pair and per self mask, and two X25519 agreements per
pair. A round cannot be cheaper than plain FedAvg plus this floor.
"""

from __future__ import annotations

import argparse
import statistics
import time
from importlib import metadata

import torch

from _harness import machine, ratio_text
from veil.federated import Simulation, TrainConfig, data, models
from veil.federated.secure import SecureAggregation
from veil.secagg import crypto
from veil.secagg.planning import plan_round

WORKLOADS = {
    "digits": (lambda n: data.digits(clients=n, alpha=None, seed=0), 64, 1500),
    "fashion": (lambda n: data.fashion_mnist(clients=n, alpha=None, seed=0), 784, 128),
}


def seconds_per_round(
    fed: data.FederatedData,
    shape: tuple[int, int],
    rounds: int,
    dropout: float,
    secure: SecureAggregation | None,
) -> tuple[float, int, list[str]]:
    torch.manual_seed(0)
    model = models.Mlp(shape[0], 10, hidden=(shape[1],))
    sim = Simulation(
        model=model,
        data=fed,
        rounds=rounds,
        config=TrainConfig(learning_rate=0.1, batch_size=32),
        seed=0,
        dropout=dropout,
        secure_aggregation=secure,
        evaluate_every=0,
    )
    result = sim.run()
    steady = [r.seconds for r in result.rounds[1:]]
    return statistics.median(steady), sim.layout.size, sim.aborted


def floor(clients: int, dim: int, repeats: int = 3) -> tuple[float, int]:
    """Seconds for the masks and key agreements of one SecAgg+ round, and the degree."""
    plan = plan_round(clients)
    masks = clients * (plan.degree + 1)
    agreements = 2 * clients * plan.degree // 2 * 2  # two key pairs, both ends of each edge
    seed = crypto.random_seed()
    me, peer = crypto.AgreementKey(), crypto.AgreementKey()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(masks):
            crypto.mask(seed, dim)
        for _ in range(agreements):
            me.exchange(peer.public)
        best = min(best, time.perf_counter() - started)
    return best, plan.degree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--workloads", default="digits,fashion")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--dropout", default="0,0.1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    versions = (
        f"torch {torch.__version__}",
        f"cryptography {metadata.version('cryptography')}",
    )
    print(f"Machine: {machine(*versions)}")
    for workload in args.workloads.split(","):
        load, inputs, hidden = WORKLOADS[workload]
        try:
            fed = load(args.clients)
        except Exception as exc:  # Fashion-MNIST is a Debian package that may be missing
            print(f"\n{workload}: not run: {exc}")
            continue
        rows = []
        for rate in [float(r) for r in args.dropout.split(",")]:
            shape = (inputs, hidden)
            plain, dim, _ = seconds_per_round(fed, shape, args.rounds, rate, None)
            rows.append((rate, "plain FedAvg", plain, plain, []))
            for graph in ("secagg+", "secagg"):
                settings = SecureAggregation(graph=graph, dropout=max(rate, 0.1))  # type: ignore[arg-type]
                secs, _, aborted = seconds_per_round(fed, shape, args.rounds, rate, settings)
                rows.append((rate, graph, secs, plain, aborted))
        prim, degree = floor(args.clients, dim)
        print(
            f"\n{workload}: {args.clients} clients, d = {dim:,}, SecAgg+ degree {degree}; "
            f"seconds per round, median of rounds 2-{args.rounds}"
        )
        print("\n| dropout | aggregation | s / round | / plain FedAvg | aborted rounds |")
        print("|---|---|---|---|---|")
        for rate, name, secs, plain, aborted in rows:
            print(
                f"| {rate:.0%} | {name} | {secs:.3f} | {ratio_text(secs, plain)} | {len(aborted)} |"
            )
        plain0 = rows[0][2]
        print(
            f"\nPrimitive floor of a SecAgg+ round (masks and key agreements alone): "
            f"{prim:.3f} s; plain FedAvg + floor = {plain0 + prim:.3f} s = "
            f"{ratio_text(plain0 + prim, plain0)}"
        )
    print(f"\nTotal wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
