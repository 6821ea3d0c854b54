"""The ``veil`` command line: output, exit codes, and errors as one readable line."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from veil._version import __version__
from veil.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--version") == (0, f"veil {__version__}\n", "")
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("demo", "ledger", "privacy"):
        assert command in out
    code, out, err = run(capsys)
    assert "Usage: veil" in out + err


def test_ledger_commands_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.sqlite")
    code, out, _ = run(
        capsys,
        "ledger",
        "budget",
        "set",
        "--scope",
        "census2000/person",
        "--epsilon",
        "1",
        "--delta",
        "1e-6",
        "--ledger",
        db,
    )
    assert code == 0
    assert "budget of census2000/person: epsilon 1" in out

    from veil import LaplaceMechanism, Ledger

    with Ledger(db, actor="analyst") as ledger:
        ledger.release(
            "census2000/person",
            LaplaceMechanism(epsilon=0.25, sensitivity=1),
            10.0,
            purpose="mean income",
        )

    code, out, _ = run(capsys, "ledger", "show", "--json", "--ledger", db)
    assert code == 0
    [status] = json.loads(out)
    assert status["scope"] == "census2000/person"
    assert status["spent_epsilon"] == pytest.approx(0.25, abs=1e-4)
    assert status["events"] == 1

    code, out, _ = run(capsys, "ledger", "show", "--ledger", db)
    assert code == 0
    assert "census2000/person" in out and "25%" in out

    code, out, _ = run(capsys, "ledger", "history", "--json", "--ledger", db)
    entries = json.loads(out)
    assert [e["kind"] for e in entries] == ["budget", "reserve", "commit"]
    assert entries[1]["actor"] == "analyst"
    assert entries[1]["purpose"] == "mean income"
    assert entries[1]["event"]["type"] == "discrete_laplace"

    code, out, _ = run(capsys, "ledger", "history", "--csv", "--ledger", db)
    assert out.splitlines()[0].startswith("seq,created_at,kind,scope")
    assert len(out.splitlines()) == 4

    code, out, _ = run(capsys, "ledger", "verify", "--ledger", db)
    assert code == 0 and "3 entries verify" in out
    head = entries[-1]["hash"]
    code, _, _ = run(capsys, "ledger", "verify", "--expect-head", head, "--ledger", db)
    assert code == 0


def test_ledger_url_from_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VEIL_LEDGER_URL", str(tmp_path / "env.sqlite"))
    assert run(capsys, "ledger", "budget", "set", "--scope", "a/b", "--epsilon", "2")[0] == 0
    code, out, _ = run(capsys, "ledger", "show", "--json")
    assert json.loads(out)[0]["budget_epsilon"] == 2.0
    assert (tmp_path / "env.sqlite").exists()


def test_errors_are_one_line_without_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = str(tmp_path / "l.sqlite")
    code, _, err = run(capsys, "ledger", "show", "--ledger", db)
    assert code == 1
    assert err.startswith("error: there is no ledger at")  # a typo must not look like a ledger
    assert not Path(db).exists()
    run(capsys, "ledger", "budget", "set", "--scope", "a/person", "--epsilon", "1", "--ledger", db)
    code, out, err = run(capsys, "ledger", "show", "--scope", "nope/person", "--ledger", db)
    assert code == 1
    assert err.startswith("error: no budget is set for scope nope/person")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err

    code, _, err = run(
        capsys, "ledger", "budget", "set", "--scope", "bad", "--epsilon", "1", "--ledger", db
    )
    assert code == 1 and "invalid scope 'bad'" in err

    code, _, err = run(
        capsys,
        "ledger",
        "budget",
        "set",
        "--scope",
        "a/b",
        "--epsilon",
        "1",
        "--method",
        "magic",
        "--ledger",
        db,
    )
    assert code == 1 and "--method must be one of" in err

    code, _, err = run(
        capsys, "--debug", "ledger", "show", "--scope", "nope/person", "--ledger", db
    )
    assert code == 1 and "Traceback" in err


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "ledger", "budget", "set", "--scope", "a/b", "--epsilon", "lots")
    assert code == 2
    assert "--epsilon" in err
    code, _, _ = run(capsys, "no-such-command")
    assert code == 2


def test_verify_fails_on_a_tampered_ledger(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "l.sqlite"
    run(capsys, "ledger", "budget", "set", "--scope", "a/b", "--epsilon", "1", "--ledger", str(db))
    run(capsys, "ledger", "budget", "set", "--scope", "a/b", "--epsilon", "2", "--ledger", str(db))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE veil_ledger_entries SET actor = 'someone else' WHERE seq = 1")
    code, out, err = run(capsys, "ledger", "verify", "--ledger", str(db))
    assert code == 1
    assert "entry 1 was altered" in out
    assert err.startswith("error: the ledger does not verify")


def test_privacy_epsilon_of_dpsgd(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "privacy",
        "epsilon",
        "--noise-multiplier",
        "1.1",
        "--sampling-probability",
        str(256 / 60000),
        "--steps",
        "14063",
        "--delta",
        "1e-5",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert data["epsilon"]["PLD"] == pytest.approx(2.3818, abs=1e-3)
    assert data["epsilon"]["RDP"] == pytest.approx(2.5967, abs=1e-3)
    assert data["tightest"] == data["epsilon"]["PLD"]
    assert isinstance(data["epsilon"]["pure-DP"], str)  # not applicable, with the reason


def test_privacy_epsilon_of_events_given_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    laplace = '{"type": "laplace", "noise_multiplier": 10.0}'
    code, out, _ = run(
        capsys,
        "privacy",
        "epsilon",
        "--delta",
        "1e-6",
        "--event",
        laplace,
        "--event",
        laplace,
        "--json",
    )
    assert code == 0
    assert json.loads(out)["epsilon"]["pure-DP"] == pytest.approx(0.2)
    code, _, err = run(capsys, "privacy", "epsilon", "--delta", "1e-6", "--event", "{nonsense")
    assert code == 1 and "not valid JSON" in err


@pytest.mark.parametrize(
    "args",
    [
        ["epsilon", "--delta", "1e-5", "--noise-multiplier", "1", "--sampling-probability", "7"],
        ["epsilon", "--delta", "1e-5", "--noise-multiplier", "1", "--steps", "0"],
        ["epsilon", "--delta", "1e-5", "--event", '{"type": "composed", "events": 5}'],
        ["calibrate", "--epsilon", "1", "--delta", "1e-5", "--steps", "0"],
        ["calibrate", "--epsilon", "1", "--delta", "1e-5", "--sampling-probability", "0"],
    ],
)
def test_privacy_commands_refuse_impossible_settings(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, _, err = run(capsys, "privacy", *args)
    assert code == 1
    assert err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1


def test_privacy_calibrate(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "privacy", "calibrate", "--epsilon", "1", "--delta", "1e-5")
    assert code == 0 and "noise multiplier 3.73" in out


def test_demo_writes_a_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "demo", "--out", str(tmp_path / "report"))
    assert code == 0
    folder = tmp_path / "report"
    for name in (
        "report.html",
        "report.md",
        "noise.png",
        "accounting.png",
        "ledger.sqlite",
        "ledger-history.json",
        "federated-accuracy.png",
        "federated-hospitals/metrics.json",
        "federated-shakespeare/metrics.csv",
    ):
        assert (folder / name).stat().st_size > 0, name
    html = (folder / "report.html").read_text()
    assert "Federated learning: three hospitals" in html
    assert "Encrypted credit scoring: German credit" in html
    runs = json.loads((folder / "federated-hospitals" / "metrics.json").read_text())
    assert [r["summary"]["dp"] for r in runs] == ["none", "record", "record", "none", "distributed"]
    assert [r["summary"]["secure_aggregation"] for r in runs][3:] == ["secagg+", "secagg+"]
    for r in runs:  # every run trained all its rounds (none was stopped by an old spend)
        assert r["summary"]["rounds_run"] == 30 and r["summary"]["stopped"] is None
    for r in runs[:4]:
        assert r["summary"]["final_test_accuracy"] > 0.7
    # Distributed DP hides a whole hospital among three: its accuracy is mostly noise (0.63 to
    # 0.89 over seeds 0-5), so the run is held to its budget instead, spent whole
    assert 7.9 <= runs[4]["summary"]["epsilon_spent"] <= 8.0
    assert "Distributed DP protects each hospital" in html
    assert "Nothing was released" in html  # the overspend was refused
    assert "does not link" in html or "was altered" in html  # tampering was caught
    assert f"report written to {folder}" in out


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "veil", "--version"],
        [str(Path(sys.executable).parent / "veil"), "--version"],
    ],
)
def test_installed_entry_points(command: list[str]) -> None:
    if not Path(command[0]).exists() and shutil.which(command[0]) is None:
        pytest.fail(f"{command[0]} is not installed")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0
    assert done.stdout.strip() == f"veil {__version__}"
