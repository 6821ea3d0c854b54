"""Ledger throughput: reservations per second with concurrent processes, and overshoot.

    .venv/bin/python benchmarks/ledger_throughput.py [--processes 8] [--per-process 250]
                                                     [--backends sqlite,postgres]

For each backend, in the same run:

* floor: the same processes each run plain durable write transactions (one INSERT per
  transaction, the database's own durability settings as the ledger uses them), no accounting;
* veil reserve: each process reserves (pure-DP event, epsilon 0.001) until refused; the budget
  holds exactly processes x per-process reservations, so any extra grant is an overshoot;
* veil spend: reserve then commit (two transactions per release), same budget rule;
* veil reserve (tight budget): Gaussian events under the default tightest accounting.

Prints reservations per second and the ratio to the floor. PostgreSQL runs as a throw-away local
server (Debian's package), with its default fsync settings.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CTX = mp.get_context("spawn")
SCOPE = "bench/person"


def _floor_worker(url: str, n: int, barrier: Any, out: Any) -> None:
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None, timeout=120)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        barrier.wait()
        start = time.time()
        for i in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO floor (worker, i) VALUES (?, ?)", (os.getpid(), i))
            conn.execute("COMMIT")
        out.put((start, time.time(), n))
        return
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as pg:
        barrier.wait()
        start = time.time()
        for i in range(n):
            with pg.transaction():
                pg.execute("INSERT INTO floor (worker, i) VALUES (%s, %s)", (os.getpid(), i))
        out.put((start, time.time(), n))


def _veil_worker(url: str, mode: str, barrier: Any, out: Any) -> None:
    from veil.errors import BudgetExceededError
    from veil.ledger import Ledger
    from veil.privacy.accountants import TightestAccountant
    from veil.privacy.events import GaussianEvent, PureDpEvent

    event = GaussianEvent(400.0) if mode == "tight" else PureDpEvent(0.001)
    # Start-up (imports, first use of the accountants) is not throughput: pay it before the start.
    TightestAccountant().compose(event).epsilon(1e-6)
    granted = 0
    with Ledger(url, actor=f"bench-{os.getpid()}") as ledger:
        ledger.status(SCOPE)
        barrier.wait()
        start = time.time()
        while True:
            try:
                reservation = ledger.reserve(SCOPE, event, purpose="benchmark")
            except BudgetExceededError:
                break
            if mode == "spend":
                reservation.commit()
            granted += 1
        out.put((start, time.time(), granted))


def _run(target: Any, args: tuple[Any, ...], processes: int) -> tuple[float, int]:
    barrier = CTX.Barrier(processes)
    out = CTX.Queue()
    workers = [CTX.Process(target=target, args=(*args, barrier, out)) for _ in range(processes)]
    for w in workers:
        w.start()
    results = [out.get(timeout=900) for _ in workers]
    for w in workers:
        w.join()
    elapsed = max(r[1] for r in results) - min(r[0] for r in results)
    return elapsed, sum(r[2] for r in results)


def _prepare_floor(url: str) -> None:
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute("CREATE TABLE floor (worker INTEGER, i INTEGER)")
        return
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as pg:
        pg.execute("CREATE TABLE floor (worker INTEGER, i INTEGER)")


def bench_backend(name: str, make_url: Any, processes: int, per_process: int) -> list[str]:
    from veil.ledger import Ledger
    from veil.privacy.accountants import AccountingMethod

    total = processes * per_process
    rows = []
    url = make_url()
    _prepare_floor(url)
    elapsed, n = _run(_floor_worker, (url, per_process), processes)
    floor_rate = n / elapsed
    rows.append(
        f"| {name} | floor: durable INSERT transactions | {n} | {elapsed:.2f} | "
        f"{floor_rate:,.0f} | 1.00 | - |"
    )
    for mode, label in (
        ("reserve", "veil reserve (pure budget)"),
        ("spend", "veil reserve + commit (pure budget)"),
        ("tight", "veil reserve (tightest accounting, Gaussian events)"),
    ):
        url = make_url()
        with Ledger(url) as ledger:
            if mode == "tight":
                # the budget ends where the cheap accountants reach it; count what fits instead
                ledger.set_budget(SCOPE, epsilon=0.5, delta=1e-6)
            else:
                ledger.set_budget(SCOPE, epsilon=total * 0.001, method=AccountingMethod.PURE)
        elapsed, granted = _run(_veil_worker, (url, mode), processes)
        with Ledger(url) as ledger:
            status = ledger.status(SCOPE)
            verified = ledger.verify().ok
        if mode == "tight":
            overshoot = "0" if status.spent_epsilon <= 0.5 + 1e-9 else "OVERSPENT"
        else:
            overshoot = str(granted - total)
        assert verified
        rate = granted / elapsed
        rows.append(
            f"| {name} | {label} | {granted} | {elapsed:.2f} | {rate:,.0f} | "
            f"{rate / floor_rate:.2f} | {overshoot} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--per-process", type=int, default=250)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    print(f"{args.processes} processes, {args.per_process} per process, on {os.cpu_count()} cores")
    header = [
        "| backend | what | operations | seconds | per second | vs floor | overshoot |",
        "|---|---|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    rows: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    counter = iter(range(10**6))
    if "sqlite" in args.backends:
        rows += bench_backend(
            "SQLite",
            lambda: f"sqlite:///{tmp / f'l{next(counter)}.sqlite'}",
            args.processes,
            args.per_process,
        )
    if "postgres" in args.backends:
        from veil.ledger.testing import TemporaryPostgres

        with TemporaryPostgres() as server:
            rows += bench_backend(
                "PostgreSQL", server.create_database, args.processes, args.per_process
            )
    print("\n" + "\n".join(header + rows))


if __name__ == "__main__":
    sys.exit(main())
