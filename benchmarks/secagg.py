"""Secure aggregation: one round of veil's SecAgg against plain summation of the same vectors.

Run from the repository root::

    .venv/bin/python benchmarks/secagg.py [--clients 10,50,100] [--dims 100000,1000000]
        [--dropout 0,0.1] [--repeats 3]

The question: what does it cost to sum n clients' d-dimensional updates so that the server
learns only the sum, when some clients drop out after sharing their keys? One round of
``veil.secagg.protocol`` with the complete neighbour graph (plain SecAgg) and threshold
``t = ceil(2n/3)``, all parties in this process, against the floor: the plain sum of the n
quantised vectors in ``Z_2^32`` (numpy ``uint32``). A dropout rate r removes ``round(r n)``
clients after the share-keys stage (the costliest place: the server must rebuild their pairwise
masks). Timed, after the inputs are made: every client's work (keys, Shamir sharing, sealing,
masking, unmasking) and the server's work (routing, reconstruction, unmasking), reported
separately as seconds per round and as the server's share, median of ``--repeats``; the output
is checked against the exact sum of the survivors in every run.

Not measured here yet: the SecAgg+ sparse graph (the protocol takes any symmetric graph; this
benchmark uses the complete one), Flower's SecAgg+ in its own environment, and the network.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from importlib import metadata

import numpy as np

from _harness import machine, ratio_text
from veil.secagg.protocol import SecAggClient, SecAggServer, neighbours_complete


def one_round(inputs: dict[int, np.ndarray], dropped: set[int], threshold: int) -> dict[str, float]:
    n = len(inputs)
    dim = next(iter(inputs.values())).size
    clock = time.perf_counter
    client_s = 0.0
    server_s = 0.0
    t = clock()
    clients = {u: SecAggClient(u, session=b"bench", round=1, vector=x) for u, x in inputs.items()}
    adverts = [c.advertise() for c in clients.values()]
    client_s += clock() - t
    t = clock()
    server = SecAggServer(
        session=b"bench",
        round=1,
        threshold=threshold,
        dimension=dim,
        neighbours=neighbours_complete(range(1, n + 1)),
    )
    directory = server.collect_keys(adverts)
    server_s += clock() - t
    t = clock()
    shares = [c.share_keys(directory) for c in clients.values()]
    client_s += clock() - t
    t = clock()
    routed = server.collect_shares(shares)
    server_s += clock() - t
    alive = [u for u in clients if u not in dropped]
    t = clock()
    masked = [clients[u].masked_input(routed[u]) for u in alive]
    client_s += clock() - t
    t = clock()
    request = server.collect_masked(masked)
    server_s += clock() - t
    t = clock()
    answers = [clients[u].unmask(request) for u in alive]
    client_s += clock() - t
    t = clock()
    total = server.finish(answers)
    server_s += clock() - t
    expected = np.zeros(dim, dtype=np.uint32)
    for u in alive:
        expected += inputs[u]
    if not np.array_equal(total, expected):
        raise AssertionError("the secure sum differs from the exact sum of the survivors")
    return {"client_total": client_s, "client_each": client_s / n, "server": server_s}


def plain_sum(inputs: dict[int, np.ndarray]) -> float:
    t = time.perf_counter()
    total = np.zeros(next(iter(inputs.values())).size, dtype=np.uint32)
    for x in inputs.values():
        total += x
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--clients", default="10,50,100")
    parser.add_argument("--dims", default="100000,1000000")
    parser.add_argument("--dropout", default="0,0.1")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    versions = (f"numpy {np.__version__}", f"cryptography {metadata.version('cryptography')}")
    print(f"Machine: {machine(*versions)}")
    print(
        "\n| clients | d | dropout | plain sum s | client s (each) | server s | "
        "server / plain sum | all parties s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for n in [int(c) for c in args.clients.split(",")]:
        for dim in [int(d) for d in args.dims.split(",")]:
            inputs = {
                u: rng.integers(0, 2**32, size=dim, dtype=np.uint64).astype(np.uint32)
                for u in range(1, n + 1)
            }
            for rate in [float(r) for r in args.dropout.split(",")]:
                dropped = set(range(n, n - round(rate * n), -1))
                threshold = max(2, math.ceil(2 * n / 3))
                runs = [one_round(inputs, dropped, threshold) for _ in range(args.repeats)]
                plain = statistics.median(plain_sum(inputs) for _ in range(args.repeats))
                each = statistics.median(r["client_each"] for r in runs)
                server = statistics.median(r["server"] for r in runs)
                everything = statistics.median(r["client_total"] + r["server"] for r in runs)
                print(
                    f"| {n} | {dim:,} | {rate:.0%} | {plain:.4f} | {each:.4f} | {server:.3f} | "
                    f"{ratio_text(server, plain)} | {everything:.2f} |",
                    flush=True,
                )
    print(f"\nTotal wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
