"""The ledger under real concurrency: separate processes, and processes killed with SIGKILL."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from veil.errors import BudgetExceededError
from veil.ledger import Ledger
from veil.privacy import events as ev
from veil.privacy.accountants import AccountingMethod

SCOPE = "census2000/person"
CTX = mp.get_context("spawn")  # a fresh interpreter per spender, as in real deployments


def _spend_until_refused(url: str, event_json: str, barrier: Any, results: Any) -> None:
    event = ev.event_from_json(event_json)
    granted = 0
    with Ledger(url, actor=f"worker-{os.getpid()}") as ledger:
        barrier.wait()  # everyone starts spending at the same moment
        while True:
            try:
                with ledger.reserve(SCOPE, event, purpose="concurrent"):
                    pass
            except BudgetExceededError:
                break
            granted += 1
    results.put(granted)


def _run_spenders(url: str, event: ev.Event, processes: int = 8) -> list[int]:
    barrier = CTX.Barrier(processes)
    results = CTX.Queue()
    workers = [
        CTX.Process(target=_spend_until_refused, args=(url, event.to_json(), barrier, results))
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    counts = [results.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    return counts


def test_eight_processes_never_overspend_a_pure_budget(ledger_url: str) -> None:
    with Ledger(ledger_url) as ledger:
        ledger.set_budget(SCOPE, epsilon=4.0, method=AccountingMethod.PURE)
    counts = _run_spenders(ledger_url, ev.PureDpEvent(0.01))
    # exactly 400 spends of 0.01 fit in 4.0, however the processes interleave
    assert sum(counts) == 400
    assert sum(1 for c in counts if c > 0) >= 2  # they really did compete
    with Ledger(ledger_url) as ledger:
        status = ledger.status(SCOPE)
        assert status.events == 400
        assert status.pending == 0
        assert status.spent_epsilon == pytest.approx(4.0)
        assert ledger.verify().ok


def test_eight_processes_never_overspend_a_tight_budget(ledger_url: str) -> None:
    with Ledger(ledger_url) as ledger:
        ledger.set_budget(SCOPE, epsilon=1.0, delta=1e-6)
    counts = _run_spenders(ledger_url, ev.GaussianEvent(30.0))
    with Ledger(ledger_url) as ledger:
        status = ledger.status(SCOPE)
        assert status.events == sum(counts) > 8
        assert status.spent_epsilon <= 1.0 + 1e-9
        with pytest.raises(BudgetExceededError):
            ledger.reserve(SCOPE, ev.GaussianEvent(30.0))
        assert ledger.verify().ok


def _reserve_then_hang(url: str, ready: str) -> None:
    with Ledger(url) as ledger:
        reservation = ledger.reserve(SCOPE, ev.PureDpEvent(0.3), purpose="killed mid-release")
        Path(ready).write_text(reservation.id)
        time.sleep(600)  # the noise would be drawn here; the parent kills us first


def test_sigkill_between_reserve_and_commit_leaves_the_spend_counted(
    ledger_url: str, tmp_path: Path
) -> None:
    with Ledger(ledger_url) as ledger:
        ledger.set_budget(SCOPE, epsilon=1.0, method=AccountingMethod.PURE)
    ready = tmp_path / "reserved"
    worker = CTX.Process(target=_reserve_then_hang, args=(ledger_url, str(ready)))
    worker.start()
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert time.monotonic() < deadline, "the worker never reserved"
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
    worker.join(timeout=30)
    assert worker.exitcode == -signal.SIGKILL
    with Ledger(ledger_url) as ledger:
        status = ledger.status(SCOPE)
        assert (status.events, status.pending) == (1, 1)
        assert status.spent_epsilon == pytest.approx(0.3)
        entry = next(e for e in ledger.history() if e.kind == "reserve")
        assert entry.entry_id == ready.read_text()
        assert entry.status == "pending"
        with pytest.raises(BudgetExceededError):
            ledger.reserve(SCOPE, ev.PureDpEvent(0.71))
        ledger.reserve(SCOPE, ev.PureDpEvent(0.7)).commit()
        assert ledger.verify().ok


def _spend_forever(url: str, started: Any) -> None:
    with Ledger(url) as ledger:
        while True:
            with ledger.reserve(SCOPE, ev.PureDpEvent(1e-6), purpose="busy"):
                pass
            started.set()


def test_processes_killed_at_random_moments_never_corrupt_the_ledger(ledger_url: str) -> None:
    with Ledger(ledger_url) as ledger:
        ledger.set_budget(SCOPE, epsilon=1.0, method=AccountingMethod.PURE)
    killed = 0
    for delay in (0.0, 0.013, 0.051, 0.2):
        started = [CTX.Event() for _ in range(3)]
        workers = [CTX.Process(target=_spend_forever, args=(ledger_url, e)) for e in started]
        for w in workers:
            w.start()
        for e in started:
            assert e.wait(timeout=120), "a worker never spent"
        time.sleep(delay)  # now all three are reserving and committing as fast as they can
        for w in workers:
            os.kill(w.pid, signal.SIGKILL)  # type: ignore[arg-type]
        for w in workers:
            w.join(timeout=30)
            killed += 1
    with Ledger(ledger_url) as ledger:
        report = ledger.verify()
        assert report.ok, report.problems
        status = ledger.status(SCOPE)
        assert status.events >= killed
        assert status.pending <= killed  # at most one open reservation per killed process
        assert status.spent_epsilon == pytest.approx(status.events * 1e-6)


def _spend_and_abandon(url: str, barrier: Any, results: Any) -> None:
    committed = abandoned = 0
    with Ledger(url, actor=f"worker-{os.getpid()}") as ledger:
        barrier.wait()
        while True:
            try:
                reservation = ledger.reserve(SCOPE, ev.PureDpEvent(0.01), purpose="concurrent")
            except BudgetExceededError:
                break
            if (committed + abandoned) % 2:
                reservation.abandon("released nothing")
                abandoned += 1
            else:
                reservation.commit()
                committed += 1
    results.put((committed, abandoned))


def test_processes_abandoning_concurrently_free_exactly_their_room(ledger_url: str) -> None:
    """Four processes reserve at once and abandon every other reservation. The ledger counts
    exactly the committed ones, and the room the abandoned ones held is all there is left:
    afterwards the budget takes exactly the spends that fill it, not one more or less."""
    with Ledger(ledger_url) as ledger:
        ledger.set_budget(SCOPE, epsilon=1.0, method=AccountingMethod.PURE)
    barrier = CTX.Barrier(4)
    results = CTX.Queue()
    workers = [
        CTX.Process(target=_spend_and_abandon, args=(ledger_url, barrier, results))
        for _ in range(4)
    ]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    committed = sum(c for c, _ in outcomes)
    abandoned = sum(a for _, a in outcomes)
    assert abandoned > 0
    with Ledger(ledger_url) as ledger:
        status = ledger.status(SCOPE)
        assert (status.events, status.pending, status.abandoned) == (committed, 0, abandoned)
        assert status.spent_epsilon == pytest.approx(committed * 0.01)
        more = 0
        while True:
            try:
                ledger.reserve(SCOPE, ev.PureDpEvent(0.01)).commit()
            except BudgetExceededError:
                break
            more += 1
        assert committed + more == 100
        report = ledger.verify()
        assert report.ok, report.problems
        assert report.abandoned == abandoned
