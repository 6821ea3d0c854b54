"""Property tests: random sequences of budgets, reservations, commits, failures and
abandonments."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.errors import BudgetExceededError, UnsupportedEventError
from veil.ledger import Ledger
from veil.privacy import events as ev
from veil.privacy.accountants import AccountingMethod, make_accountant

EVENTS = [
    ev.LaplaceEvent(4.0),
    ev.PureDpEvent(0.3),
    ev.GaussianEvent(3.0),
    ev.SelfComposedEvent(ev.PoissonSampledEvent(0.05, ev.GaussianEvent(1.0)), 20),
    ev.DiscreteGaussianEvent(sigma=5.0, sensitivity=1),
    ev.ExponentialMechanismEvent(0.5),
]
SCOPES = ["a/person", "b/person@party-1"]
METHODS = [AccountingMethod.TIGHTEST, AccountingMethod.PURE, AccountingMethod.RDP]

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("budget"),
            st.sampled_from(SCOPES),
            st.floats(0.2, 4.0),
            st.sampled_from(METHODS),
        ),
        st.tuples(
            st.just("spend"),
            st.sampled_from(SCOPES),
            st.sampled_from(range(len(EVENTS))),
            st.sampled_from(["commit", "fail", "abandon", "pending"]),
        ),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(operations)
def test_random_histories_keep_every_promise(ops: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp, Ledger(str(Path(tmp) / "l.sqlite")) as ledger:
        budgets: dict[str, tuple[float, AccountingMethod]] = {}
        accepted: dict[str, list[ev.Event]] = {s: [] for s in SCOPES}
        expected_status: list[str] = []
        for op in ops:
            if op[0] == "budget":
                _, scope, epsilon, method = op
                ledger.set_budget(scope, epsilon=epsilon, delta=1e-6, method=method)
                budgets[scope] = (epsilon, method)
                continue
            _, scope, index, outcome = op
            event = EVENTS[index]
            if scope not in budgets:
                continue
            epsilon, method = budgets[scope]
            try:
                reservation = ledger.reserve(scope, event)
            except (BudgetExceededError, UnsupportedEventError):
                continue  # refused, and nothing written
            # the promise: what is counted, this event included, fits the budget as it was
            accepted[scope].append(event)
            acct = make_accountant(method)
            for e in accepted[scope]:
                acct.compose(e)
            assert acct.epsilon(1e-6) <= epsilon * (1 + 1e-6) + 2e-4  # PLD discretisation
            if outcome == "commit":
                reservation.commit()
                expected_status.append("committed")
            elif outcome == "fail":
                reservation.fail("test")
                expected_status.append("failed")
            elif outcome == "abandon":
                reservation.abandon("test")
                accepted[scope].pop()  # it no longer counts: later spends may use its room
                expected_status.append("abandoned")
            else:
                expected_status.append("pending")
        history = ledger.history()
        assert [e.status for e in history if e.kind == "reserve"] == expected_status
        for scope in budgets:
            status = ledger.status(scope)
            assert status.events == len(accepted[scope])
            assert status.pending == sum(
                1
                for e, s in zip(
                    [h for h in history if h.kind == "reserve"], expected_status, strict=True
                )
                if e.scope == scope and s == "pending"
            )
        assert ledger.verify().ok
