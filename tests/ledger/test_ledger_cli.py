"""``veil ledger`` shows an abandoned reservation as such: in the history, the table of
budgets and the report of ``verify``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from veil.cli.main import main
from veil.ledger import Ledger
from veil.privacy import events as ev
from veil.privacy.accountants import AccountingMethod

SCOPE = "census2000/person"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    out, _ = capsys.readouterr()
    return code, out


def test_abandoned_reservations_in_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = str(tmp_path / "ledger.sqlite")
    with Ledger(db, actor="coordinator") as ledger:
        ledger.set_budget(SCOPE, epsilon=1.0, method=AccountingMethod.PURE)
        ledger.reserve(SCOPE, ev.PureDpEvent(0.5), purpose="round 1").abandon("aborted early")
        ledger.reserve(SCOPE, ev.PureDpEvent(0.25), purpose="round 1 again").commit()

    code, out = run(capsys, "ledger", "history", "--json", "--ledger", db)
    assert code == 0
    entries = json.loads(out)
    assert [(e["kind"], e.get("status")) for e in entries] == [
        ("budget", None),
        ("reserve", "abandoned"),
        ("abandon", None),
        ("reserve", "committed"),
        ("commit", None),
    ]
    assert entries[2]["details"] == {"reason": "aborted early"}
    code, out = run(capsys, "ledger", "history", "--ledger", db)
    assert code == 0 and "abandoned" in out

    code, out = run(capsys, "ledger", "show", "--json", "--ledger", db)
    [status] = json.loads(out)
    assert (status["events"], status["abandoned"]) == (1, 1)
    assert status["spent_epsilon"] == pytest.approx(0.25)
    code, out = run(capsys, "ledger", "show", "--ledger", db)
    assert code == 0 and "abandoned" in out and "25%" in out

    code, out = run(capsys, "ledger", "verify", "--ledger", db)
    assert code == 0
    assert "5 entries verify" in out
    assert "1 reservation(s) abandoned" in out
