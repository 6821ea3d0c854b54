"""The ledger's contract, run against SQLite and against a real PostgreSQL server."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from veil.errors import (
    BudgetExceededError,
    ConfigurationError,
    DataError,
    ReservationError,
    ScopeNotFoundError,
)
from veil.ledger import Alert, Ledger, Reservation, Scope
from veil.privacy import events as ev
from veil.privacy.accountants import AccountingMethod, NeighboringRelation
from veil.privacy.mechanisms import Domain, LaplaceMechanism
from veil.privacy.random import InsecureSeededRandom, RandomSource

SCOPE = "census2000/person"


@pytest.fixture
def ledger(ledger_url: str) -> Any:
    with Ledger(ledger_url, actor="tester") as led:
        yield led


def test_budget_round_trip_and_restart(ledger_url: str) -> None:
    with Ledger(ledger_url) as a:
        a.set_budget(SCOPE, epsilon=2.0, delta=1e-6, method=AccountingMethod.RDP, alert_at=0.5)
        a.reserve(SCOPE, ev.LaplaceEvent(2.0)).commit()
    with Ledger(ledger_url) as b:  # a new process would see the same
        budget = b.budget(SCOPE)
        assert (budget.epsilon, budget.delta, budget.method, budget.alert_at) == (
            2.0,
            1e-6,
            AccountingMethod.RDP,
            0.5,
        )
        status = b.status(SCOPE)
        assert status.events == 1
        assert 0 < status.spent_epsilon <= 2.0
        assert b.scopes() == [Scope("census2000", "person")]


def test_unknown_scope(ledger: Ledger) -> None:
    with pytest.raises(ScopeNotFoundError, match="no budget is set for scope nobody/person"):
        ledger.reserve("nobody/person", ev.LaplaceEvent(1.0))
    with pytest.raises(ScopeNotFoundError):
        ledger.status("nobody/person")


def test_pure_budget_allows_exactly_what_it_holds(ledger: Ledger) -> None:
    ledger.set_budget(SCOPE, epsilon=1.0, method=AccountingMethod.PURE)
    for _ in range(10):
        ledger.reserve(SCOPE, ev.LaplaceEvent(10.0)).commit()  # epsilon 0.1 each
    with pytest.raises(BudgetExceededError) as info:
        ledger.reserve(SCOPE, ev.LaplaceEvent(1000.0))
    err = info.value
    assert err.scope == SCOPE
    assert err.remaining_epsilon == pytest.approx(0.0, abs=1e-12)
    assert "Nothing was released" in str(err)
    assert ledger.status(SCOPE).events == 10


def test_refusal_happens_before_any_noise_is_drawn(ledger: Ledger) -> None:
    inner = InsecureSeededRandom(0)

    class SpyRandom:
        is_secure = False
        calls = 0

        def words(self, n: int) -> Any:
            SpyRandom.calls += 1
            return inner.words(n)

    rng: RandomSource = SpyRandom()
    ledger.set_budget(SCOPE, epsilon=0.5)
    mech = LaplaceMechanism(epsilon=1.0, sensitivity=1, domain=Domain.INTEGERS)
    entries_before = len(ledger.history())
    with pytest.raises(BudgetExceededError):
        ledger.release(SCOPE, mech, 42, rng=rng)
    assert SpyRandom.calls == 0
    assert len(ledger.history()) == entries_before  # nothing written either
    cheap = LaplaceMechanism(epsilon=0.25, sensitivity=1, domain=Domain.INTEGERS)
    value = ledger.release(SCOPE, cheap, 42, rng=rng, purpose="count")
    assert SpyRandom.calls > 0
    assert isinstance(value, int)
    assert [e.status for e in ledger.history() if e.kind == "reserve"] == ["committed"]


def test_bad_data_spends_nothing(ledger: Ledger) -> None:
    ledger.set_budget(SCOPE, epsilon=1.0)
    mech = LaplaceMechanism(epsilon=0.1, sensitivity=1)
    for bad in (float("nan"), [1.0, 2.0], "ten", None):
        with pytest.raises(DataError):
            ledger.release(SCOPE, mech, bad)
    assert ledger.status(SCOPE).events == 0


def test_stored_events_are_recomputed_with_the_tightest_accountant(ledger: Ledger) -> None:
    ledger.set_budget(SCOPE, epsilon=1.0, delta=1e-6)
    for _ in range(10):
        ledger.reserve(SCOPE, ev.LaplaceEvent(10.0)).commit()
    status = ledger.status(SCOPE)
    assert status.by_accountant["pure-DP"] == pytest.approx(1.0)
    assert status.by_accountant["PLD"] == pytest.approx(0.998978, abs=2e-6)
    assert status.spent_epsilon == status.by_accountant["PLD"]
    # the PLD accountant finds room that basic composition does not
    ledger.reserve(SCOPE, ev.LaplaceEvent(1000.0)).commit()


def test_pld_budget_accepts_what_rdp_alone_would_refuse(ledger: Ledger) -> None:
    # DP-SGD on MNIST: RDP says 2.597, PLD says 2.382 at delta 1e-5
    dpsgd = ev.SelfComposedEvent(ev.PoissonSampledEvent(256 / 60000, ev.GaussianEvent(1.1)), 14063)
    ledger.set_budget("mnist/example", epsilon=2.5, delta=1e-5, method=AccountingMethod.RDP)
    with pytest.raises(BudgetExceededError):
        ledger.reserve("mnist/example", dpsgd)
    ledger.set_budget("mnist/example", epsilon=2.5, delta=1e-5, method=AccountingMethod.TIGHTEST)
    r = ledger.reserve("mnist/example", dpsgd)
    assert r.spent_epsilon == pytest.approx(2.3818, abs=1e-3)


def test_reservation_lifecycle(ledger: Ledger) -> None:
    ledger.set_budget(SCOPE, epsilon=5.0)
    r = ledger.reserve(SCOPE, ev.LaplaceEvent(4.0), purpose="first")
    assert r.status == "pending"
    assert ledger.status(SCOPE).pending == 1
    r.commit()
    assert r.status == "committed"
    with pytest.raises(ReservationError):
        r.commit()
    with pytest.raises(ReservationError):
        r.fail("late")
    assert ledger.status(SCOPE).pending == 0

    def broken_release() -> None:
        with ledger.reserve(SCOPE, ev.LaplaceEvent(4.0), purpose="second"):
            raise RuntimeError("release broke")

    with pytest.raises(RuntimeError, match="release broke"):
        broken_release()
    history = ledger.history(SCOPE)
    statuses = [e.status for e in history if e.kind == "reserve"]
    assert statuses == ["committed", "failed"]
    failed = [e for e in history if e.kind == "fail"]
    assert failed[0].to_dict()["details"] == {"reason": "RuntimeError"}  # no message: may hold data
    # a failed release still counts
    assert ledger.status(SCOPE).events == 2


def test_alert_when_crossing_the_threshold(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Alert] = []
    ledger._on_alert = seen.append
    ledger.set_budget(SCOPE, epsilon=1.0, method=AccountingMethod.PURE, alert_at=0.5)
    with caplog.at_level(logging.WARNING, logger="veil.ledger"):
        first = ledger.reserve(SCOPE, ev.PureDpEvent(0.4))
        second = ledger.reserve(SCOPE, ev.PureDpEvent(0.2))  # crosses 0.5
        third = ledger.reserve(SCOPE, ev.PureDpEvent(0.1))  # already past: no new alert
    assert first.alerts == ()
    assert third.alerts == ()
    assert len(second.alerts) == 1
    assert seen == list(second.alerts)
    assert second.alerts[0].spent_epsilon == pytest.approx(0.6)
    assert "past the alert threshold of 50%" in caplog.text


def test_history_records_who_what_when(ledger: Ledger) -> None:
    ledger.set_budget(SCOPE, epsilon=1.0, delta=1e-6, purpose="yearly budget")
    with ledger.reserve(SCOPE, ev.GaussianEvent(5.0), purpose="mean income by state"):
        pass
    entries = ledger.history()
    assert [e.kind for e in entries] == ["budget", "reserve", "commit"]
    assert [e.seq for e in entries] == [1, 2, 3]
    reserve = entries[1]
    assert reserve.actor == "tester"
    assert reserve.purpose == "mean income by state"
    assert reserve.event == ev.GaussianEvent(5.0)
    assert reserve.created_at.endswith("+00:00")
    assert entries[2].ref_id == reserve.entry_id
    exported = [e.to_dict() for e in entries]
    assert exported[1]["event"] == {"type": "gaussian", "noise_multiplier": 5.0}
    assert exported[0]["details"]["epsilon"] == 1.0


def test_verify_passes_on_an_honest_ledger(ledger: Ledger) -> None:
    ledger.set_budget(SCOPE, epsilon=3.0, delta=1e-6)
    ledger.set_budget("other/person", epsilon=1.0)
    for i in range(5):
        with ledger.reserve(SCOPE if i % 2 else "other/person", ev.LaplaceEvent(20.0)):
            pass
    report = ledger.verify()
    assert report.ok, report.problems
    assert report.entries == 12
    assert report.head_hash == ledger.history()[-1].hash


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("UPDATE veil_ledger_entries SET purpose = 'harmless' WHERE seq = 2", "was altered"),
        (
            "UPDATE veil_ledger_entries SET payload = "
            '\'{"noise_multiplier":1000.0,"type":"laplace"}\' WHERE seq = 2',
            "altered",
        ),
        ("DELETE FROM veil_ledger_entries WHERE seq = 3", "missing"),
        ("DELETE FROM veil_ledger_entries WHERE seq = 5", "head does not match"),
        ("UPDATE veil_ledger_scopes SET epsilon = 100", "cached budget differs"),
        ("UPDATE veil_ledger_scopes SET spent_pure = 0.1", "cached spend differs"),
        ("UPDATE veil_ledger_scopes SET spent_events = 1", "cached spend differs"),
    ],
)
def test_verify_detects_tampering(ledger: Ledger, statement: str, expected: str) -> None:
    ledger.set_budget(SCOPE, epsilon=3.0)
    for _ in range(2):
        with ledger.reserve(SCOPE, ev.LaplaceEvent(5.0)):
            pass
    assert ledger.verify().ok
    with ledger._engine.begin() as conn:
        conn.exec_driver_sql(statement)
    report = ledger.verify()
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems


def test_lowering_a_budget_below_the_spend_refuses_everything_after(ledger: Ledger) -> None:
    ledger.set_budget(SCOPE, epsilon=1.0, method=AccountingMethod.PURE)
    ledger.reserve(SCOPE, ev.PureDpEvent(0.5)).commit()
    ledger.set_budget(SCOPE, epsilon=0.3, method=AccountingMethod.PURE)
    with pytest.raises(BudgetExceededError):
        ledger.reserve(SCOPE, ev.PureDpEvent(0.01))
    assert ledger.status(SCOPE).fraction_used == pytest.approx(0.5 / 0.3)


def test_relation_cannot_change_once_events_exist(ledger: Ledger) -> None:
    ledger.set_budget(SCOPE, epsilon=1.0)
    ledger.reserve(SCOPE, ev.PureDpEvent(0.1)).commit()
    with pytest.raises(ConfigurationError, match="neighbouring relation cannot change"):
        ledger.set_budget(SCOPE, epsilon=1.0, neighboring_relation=NeighboringRelation.REPLACE_ONE)


def test_zero_delta_budget_refuses_gaussian_noise(ledger: Ledger) -> None:
    ledger.set_budget(SCOPE, epsilon=10.0, delta=0.0)
    with pytest.raises(BudgetExceededError):
        ledger.reserve(SCOPE, ev.GaussianEvent(100.0))


def test_parties_have_separate_budgets(ledger: Ledger) -> None:
    ledger.set_budget("hospitals/patient@st-marys", epsilon=1.0, method=AccountingMethod.PURE)
    ledger.set_budget("hospitals/patient@guys", epsilon=1.0, method=AccountingMethod.PURE)
    ledger.reserve("hospitals/patient@st-marys", ev.PureDpEvent(1.0)).commit()
    with pytest.raises(BudgetExceededError):
        ledger.reserve("hospitals/patient@st-marys", ev.PureDpEvent(0.1))
    ledger.reserve("hospitals/patient@guys", ev.PureDpEvent(0.9)).commit()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": -1.0},
        {"epsilon": math.inf},
        {"epsilon": 1.0, "delta": 1.0},
        {"epsilon": 1.0, "alert_at": 0.0},
        {"epsilon": 1.0, "method": "pld"},
    ],
)
def test_bad_budgets_are_refused(ledger: Ledger, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ledger.set_budget(SCOPE, **kwargs)


def test_release_of_a_vector_through_the_ledger(ledger: Ledger) -> None:
    ledger.set_budget(SCOPE, epsilon=1.0)
    mech = LaplaceMechanism(epsilon=0.5, sensitivity=1, domain=Domain.INTEGERS, dimension=4)
    noisy = ledger.release(SCOPE, mech, np.array([10, 20, 30, 40]), rng=InsecureSeededRandom(3))
    assert noisy.shape == (4,)
    assert noisy.dtype == np.int64
    assert ledger.history()[-2].event == mech.event


def test_an_event_no_accountant_of_the_scope_understands_is_refused_as_such(
    ledger: Ledger,
) -> None:
    from veil.errors import UnsupportedEventError

    ledger.set_budget(SCOPE, epsilon=100.0, delta=1e-6, method=AccountingMethod.ZCDP)
    before = len(ledger.history())
    with pytest.raises(UnsupportedEventError, match="cannot compose"):
        ledger.reserve(SCOPE, ev.PoissonSampledEvent(0.01, ev.GaussianEvent(1.0)))
    with pytest.raises(UnsupportedEventError):
        ledger.reserve(SCOPE, ev.SampledWithoutReplacementEvent(100, 10, ev.GaussianEvent(1.0)))
    assert len(ledger.history()) == before


def test_a_failing_alert_callback_does_not_lose_the_reservation(ledger: Ledger) -> None:
    def broken(alert: Alert) -> None:
        raise RuntimeError("pager is down")

    ledger._on_alert = broken
    ledger.set_budget(SCOPE, epsilon=1.0, method=AccountingMethod.PURE, alert_at=0.5)
    reservation = ledger.reserve(SCOPE, ev.PureDpEvent(0.9))
    assert reservation.alerts
    reservation.commit()
    assert ledger.status(SCOPE).pending == 0


def test_a_keyed_chain_cannot_be_rewritten_without_the_key(ledger_url: str) -> None:
    from veil.errors import LedgerError
    from veil.ledger.ledger import _entry_hash

    with Ledger(ledger_url, key="correct horse battery staple") as keyed:
        keyed.set_budget(SCOPE, epsilon=1.0, method=AccountingMethod.PURE)
        keyed.reserve(SCOPE, ev.PureDpEvent(0.9)).commit()
        assert keyed.verify().ok
        # someone with write access deletes the spend and rebuilds the chain, without the key
        with keyed._engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM veil_ledger_entries WHERE seq > 1")
            row = conn.exec_driver_sql("SELECT * FROM veil_ledger_entries").one()
            fields = {k: v for k, v in row._mapping.items() if k != "hash"}
            forged = _entry_hash(None, **fields)
            conn.execute(
                sa.text("UPDATE veil_ledger_entries SET hash = :h WHERE seq = 1"), {"h": forged}
            )
            conn.execute(sa.text("UPDATE veil_ledger_head SET seq = 1, hash = :h"), {"h": forged})
            conn.exec_driver_sql(
                "UPDATE veil_ledger_scopes SET spent_events = 0, spent_pure = 0, spent_zcdp = 0"
            )
        report = keyed.verify()
        assert not report.ok
        assert any("altered" in p for p in report.problems)
    with Ledger(ledger_url) as unkeyed:  # reading is fine; writing and verifying need the key
        assert unkeyed.budget(SCOPE).epsilon == 1.0
        with pytest.raises(LedgerError, match="keyed"):
            unkeyed.reserve(SCOPE, ev.PureDpEvent(0.1))
        with pytest.raises(LedgerError, match="keyed"):
            unkeyed.verify()
    with Ledger(ledger_url, key="wrong") as wrong, pytest.raises(LedgerError, match="match"):
        wrong.reserve(SCOPE, ev.PureDpEvent(0.1))


def test_an_unkeyed_ledger_cannot_be_keyed_later(ledger_url: str) -> None:
    from veil.errors import LedgerError

    with Ledger(ledger_url) as plain:
        plain.set_budget(SCOPE, epsilon=1.0)
    with Ledger(ledger_url, key="late") as late, pytest.raises(LedgerError, match="no key"):
        late.set_budget(SCOPE, epsilon=2.0)


# -- abandoned reservations -------------------------------------------------------------------


def test_an_abandoned_reservation_stops_counting_and_stays_so_after_restart(
    ledger_url: str,
) -> None:
    with Ledger(ledger_url, actor="tester") as ledger:
        ledger.set_budget(SCOPE, epsilon=1.0, method=AccountingMethod.PURE)
        aborted = ledger.reserve(SCOPE, ev.PureDpEvent(0.9), purpose="round 1")
        with pytest.raises(BudgetExceededError):  # pending, it counts
            ledger.reserve(SCOPE, ev.PureDpEvent(0.2))
        aborted.abandon("aborted before anything was released")
        assert aborted.status == "abandoned"
        # had the abandoned spend still counted, 0.9 + 0.9 would not fit in 1.0
        ledger.reserve(SCOPE, ev.PureDpEvent(0.9), purpose="round 1 again").commit()
        status = ledger.status(SCOPE)
        assert (status.events, status.pending, status.abandoned) == (1, 0, 1)
        assert status.spent_epsilon == pytest.approx(0.9)
    with Ledger(ledger_url) as reopened:  # a new process composes without it too
        status = reopened.status(SCOPE)
        assert (status.events, status.abandoned) == (1, 1)
        assert status.spent_epsilon == pytest.approx(0.9)
        with pytest.raises(BudgetExceededError):
            reopened.reserve(SCOPE, ev.PureDpEvent(0.2))
        reopened.reserve(SCOPE, ev.PureDpEvent(0.1)).commit()
        history = reopened.history(SCOPE)
        assert [(e.kind, e.status) for e in history] == [
            ("budget", None),
            ("reserve", "abandoned"),
            ("abandon", None),
            ("reserve", "committed"),
            ("commit", None),
            ("reserve", "committed"),
            ("commit", None),
        ]
        assert history[2].ref_id == history[1].entry_id
        assert history[2].to_dict()["details"] == {"reason": "aborted before anything was released"}
        report = reopened.verify()
        assert report.ok, report.problems
        assert report.abandoned == 1


def test_abandoning_brings_back_an_accountant_the_event_had_ruled_out(ledger: Ledger) -> None:
    ledger.set_budget(SCOPE, epsilon=5.0, delta=1e-6)
    ledger.reserve(SCOPE, ev.LaplaceEvent(2.0)).commit()
    gaussian = ledger.reserve(SCOPE, ev.GaussianEvent(3.0))
    assert "pure-DP" not in ledger.status(SCOPE).by_accountant  # pure DP cannot compose it
    gaussian.abandon("never drawn")
    status = ledger.status(SCOPE)
    assert status.by_accountant["pure-DP"] == pytest.approx(0.5)
    assert status.spent_epsilon == pytest.approx(0.5, abs=1e-3)
    assert ledger.verify().ok  # the cached totals match the history rebuilt without it


def test_only_an_open_reservation_can_be_abandoned(ledger: Ledger) -> None:
    ledger.set_budget(SCOPE, epsilon=5.0, method=AccountingMethod.PURE)
    committed = ledger.reserve(SCOPE, ev.PureDpEvent(1.0))
    committed.commit()
    failed = ledger.reserve(SCOPE, ev.PureDpEvent(1.0))
    failed.fail("release broke")
    abandoned = ledger.reserve(SCOPE, ev.PureDpEvent(1.0))
    abandoned.abandon("nothing drawn")
    for closed in (committed, failed):
        with pytest.raises(ReservationError, match="already"):
            closed.abandon("too late")
    for close in (abandoned.commit, lambda: abandoned.fail("x"), lambda: abandoned.abandon("x")):
        with pytest.raises(ReservationError, match="already abandoned"):
            close()
    status = ledger.status(SCOPE)
    assert (status.events, status.abandoned) == (2, 1)  # committed and failed still count
    assert status.spent_epsilon == pytest.approx(2.0)
    assert ledger.verify().ok


def _same_reservation(other: Ledger, reservation: Reservation) -> Reservation:
    """``reservation`` as another process holds it (its own handle, nothing in memory)."""
    return Reservation(
        other,
        entry_id=reservation.id,
        scope=reservation.scope,
        event=reservation.event,
        purpose=reservation.purpose,
        seq=reservation.seq,
        spent_epsilon=reservation.spent_epsilon,
        budget_epsilon=reservation.budget_epsilon,
        alerts=(),
    )


def test_abandoning_is_atomic_between_processes(ledger_url: str) -> None:
    """What another connection sees: a pending reservation counts until the abandonment, not
    after it; and the database, not the caller's memory, decides whether it is still open."""
    with Ledger(ledger_url, actor="a") as a, Ledger(ledger_url, actor="b") as b:
        a.set_budget(SCOPE, epsilon=1.0, method=AccountingMethod.PURE)
        held = a.reserve(SCOPE, ev.PureDpEvent(0.9))
        with pytest.raises(BudgetExceededError):
            b.reserve(SCOPE, ev.PureDpEvent(0.2))
        held.abandon("aborted")
        b.reserve(SCOPE, ev.PureDpEvent(0.2)).commit()
        raced = a.reserve(SCOPE, ev.PureDpEvent(0.5))
        raced.commit()
        with pytest.raises(ReservationError, match="already closed \\(committed\\)"):
            _same_reservation(b, raced).abandon("a second process, too late")
        assert b.status(SCOPE).spent_epsilon == pytest.approx(0.7)
        stranger = _same_reservation(b, raced)
        stranger.id = "0" * 32
        with pytest.raises(ReservationError, match="no reservation"):
            stranger.abandon("not a reservation of this ledger")
        assert a.verify().ok


def test_verify_detects_a_spend_turned_into_an_abandonment(ledger: Ledger) -> None:
    ledger.set_budget(SCOPE, epsilon=3.0)
    with ledger.reserve(SCOPE, ev.LaplaceEvent(5.0)):
        pass
    with ledger._engine.begin() as conn:
        conn.exec_driver_sql("UPDATE veil_ledger_entries SET kind = 'abandon' WHERE seq = 3")
    report = ledger.verify()
    assert not report.ok
    assert any("was altered" in p for p in report.problems), report.problems
    assert any("cached spend differs" in p for p in report.problems), report.problems


def test_an_abandonment_that_names_no_reservation_uncounts_nothing(ledger: Ledger) -> None:
    """A row of kind 'abandon' without a reservation id (only tampering makes one) must not
    empty the set of counted events: SQL's ``NOT IN`` over a list holding NULL is never true,
    which made every event of the scope drop out of the PLD composition and of status."""
    ledger.set_budget(SCOPE, epsilon=3.0, delta=1e-6)
    for _ in range(2):
        with ledger.reserve(SCOPE, ev.LaplaceEvent(1.0)):
            pass
    with ledger._engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO veil_ledger_entries (seq, kind, scope, entry_id, ref_id, payload, "
                "actor, purpose, created_at, prev_hash, hash) VALUES (99, 'abandon', :scope, "
                "'forged', NULL, '{}', 'x', '', '2026-01-01', :h, :h)"
            ),
            {"scope": SCOPE, "h": "0" * 64},
        )
    assert ledger.status(SCOPE).events == 2
    assert ledger.status(SCOPE).spent_epsilon == pytest.approx(2.0, rel=1e-3)
    with pytest.raises(BudgetExceededError):  # over every cheap bound: PLD of all three
        ledger.reserve(SCOPE, ev.LaplaceEvent(0.5))
    assert not ledger.verify().ok
