"""``veil fl simulate``: a run writes its metrics and plots; DP runs spend a ledger; bad input
is one readable line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from veil.cli.main import main
from veil.ledger import Ledger


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_writes_metrics_and_plots(capsys, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys, "fl", "simulate", "--scenario", "hospitals", "--rounds", "3", "--out", str(out)
    )
    assert code == 0, err
    assert "final test accuracy" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    (only,) = metrics
    assert len(only["rounds"]) == 3
    assert only["summary"]["clients"] == 3
    assert only["central"]["accuracy"] > 0.8
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["round"]) for r in rows] == [1, 2, 3]
    assert all(int(r["bytes_sent"]) > 0 for r in rows)
    assert (out / "accuracy.png").stat().st_size > 1000
    assert not (out / "epsilon.png").exists()


def test_a_record_level_dp_run_is_charged_to_each_hospital(capsys, tmp_path: Path) -> None:
    out = tmp_path / "dp"
    code, stdout, err = run(
        capsys,
        "fl",
        "simulate",
        "--scenario",
        "hospitals",
        "--rounds",
        "2",
        "--dp",
        "record",
        "--epsilon",
        "2",
        "--no-central",
        "--out",
        str(out),
    )
    assert code == 0, err
    summary = json.loads((out / "metrics.json").read_text())[0]["summary"]
    assert summary["rounds_run"] == 2 and summary["stopped"] is None
    assert 0 < summary["epsilon_spent"] <= 2.0
    assert (out / "epsilon.png").exists()
    with Ledger(str(out / "ledger.sqlite"), create=False) as ledger:
        scopes = {str(s) for s in ledger.scopes()}
        assert all(0 < ledger.status(s).spent_epsilon <= 2.0 for s in scopes)
    assert scopes == {
        "breast-cancer/record@st-marys",
        "breast-cancer/record@general",
        "breast-cancer/record@childrens",
    }


def test_a_client_level_dp_run_over_phones(capsys, tmp_path: Path) -> None:
    out = tmp_path / "phones"
    code, _, err = run(
        capsys,
        "fl",
        "simulate",
        "--scenario",
        "phones",
        "--rounds",
        "2",
        "--dp",
        "client",
        "--epsilon",
        "4",
        "--no-central",
        "--out",
        str(out),
    )
    assert code == 0, err
    (only,) = json.loads((out / "metrics.json").read_text())
    assert only["summary"]["rounds_run"] == 2 and only["summary"]["stopped"] is None
    assert 0 < only["summary"]["epsilon_spent"] <= 4.0
    assert all(r["sampled"] is None for r in only["rounds"])  # who took part is withheld
    with Ledger(str(out / "ledger.sqlite"), create=False) as ledger:
        assert ledger.status("digits/client").events == 2


def test_config_file_and_options(capsys, tmp_path: Path) -> None:
    config = tmp_path / "fed.toml"
    config.write_text('[simulate]\nscenario = "hospitals"\nrounds = 2\ncompare_central = false\n')
    code, _, err = run(
        capsys, "fl", "simulate", "--config", str(config), "--out", str(tmp_path / "o")
    )
    assert code == 0, err
    assert len(json.loads((tmp_path / "o" / "metrics.json").read_text())[0]["rounds"]) == 2


def test_distributed_dp_under_secagg_plus(capsys, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    code, stdout, err = run(
        capsys,
        "fl",
        "simulate",
        "--rounds",
        "2",
        "--dp",
        "distributed",
        "--epsilon",
        "4",
        "--no-central",
        "--out",
        str(out),
    )
    assert code == 0, err
    summary = json.loads((out / "metrics.json").read_text())[0]["summary"]
    assert summary["secure_aggregation"] == "secagg+"  # distributed DP needs it: the default
    assert 0 < summary["epsilon_spent"] <= 4
    with Ledger(str(out / "ledger.sqlite")) as ledger:
        assert ledger.status("breast-cancer/client").events == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--secure-aggregation", "sometimes"], "--secure-aggregation must be none, secagg"),
        (["--scenario", "mars"], "unknown scenario 'mars'"),
        (["--dp", "sometimes"], "--dp must be one of"),
        (["--dp", "client"], "needs a target --epsilon"),
        (["--rounds", "0"], "--rounds must be an integer >= 1"),
    ],
)
def test_bad_input_is_one_readable_line(capsys, tmp_path: Path, args, message) -> None:
    code, _, err = run(capsys, "fl", "simulate", "--out", str(tmp_path), *args)
    assert code != 0
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rounds = 2\nwings = 3\n", "unknown setting(s) wings"),
        ('epsilon = "2"\n', "epsilon must be a number, found str"),
        ('compare_central = "no"\n', "compare_central must be true or false"),
        ("rounds = true\n", "rounds must be an integer, found bool"),
        ("epsilon = 2.0\n", "--epsilon applies only to a private run"),
    ],
)
def test_bad_config_file_is_one_readable_line(capsys, tmp_path: Path, text, message) -> None:
    config = tmp_path / "fed.toml"
    config.write_text(text)
    code, _, err = run(capsys, "fl", "simulate", "--config", str(config), "--out", str(tmp_path))
    assert code == 1, err
    assert message in err and "Traceback" not in err


def test_a_ledger_with_earlier_spends_is_refused_not_silently_reused(capsys, tmp_path) -> None:
    out = tmp_path / "dp"
    args = ["fl", "simulate", "--rounds", "1", "--dp", "record", "--epsilon", "2", "--no-central"]
    code, _, err = run(capsys, *args, "--out", str(out))
    assert code == 0, err
    code, _, err = run(capsys, *args, "--out", str(out))
    assert code == 1
    assert "already has" in err and "a ledger of its own" in err
