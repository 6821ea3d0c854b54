"""`veil release` and `veil release study` from the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from veil.cli.main import main
from veil.datasets import data_path


@pytest.fixture
def census_csv(tmp_path: Path) -> Path:
    path = tmp_path / "census.csv"
    shutil.copyfile(data_path("census2000.csv"), path)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_release_prints_values_with_intervals_and_charges_the_ledger(
    capsys: pytest.CaptureFixture[str], census_csv: Path, tmp_path: Path
) -> None:
    db = str(tmp_path / "l.sqlite")
    assert (
        run(
            capsys,
            "ledger",
            "budget",
            "set",
            "--scope",
            "census/row",
            "--epsilon",
            "3",
            "--delta",
            "1e-5",
            "--ledger",
            db,
        )[0]
        == 0
    )
    args = [
        "release",
        "--data",
        str(census_csv),
        "--sql",
        "SELECT state, AVG(lweekinc) FROM census GROUP BY state",
        "--epsilon",
        "1",
        "--delta",
        "1e-6",
        "--bounds",
        "lweekinc=0:10",
        "--ledger",
        db,
    ]
    code, out, err = run(capsys, *args, "--format", "json")
    assert code == 0, err
    records = json.loads(out)
    assert {"state", "value", "ci_low", "ci_high"} == set(records[0])
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in records)
    code, out, _ = run(capsys, *args, "--format", "csv")
    assert out.splitlines()[0] == "state,value,ci_low,ci_high"
    code, out, _ = run(capsys, *args)  # the table view; answered from the cache
    assert "answered from the cache, nothing spent" in out
    code, out, _ = run(capsys, "ledger", "show", "--json", "--ledger", db)
    [status] = json.loads(out)
    assert status["events"] == 1
    assert status["spent_epsilon"] == pytest.approx(1.0, abs=1e-3)


def test_explain_spends_nothing(
    capsys: pytest.CaptureFixture[str], census_csv: Path, tmp_path: Path
) -> None:
    db = str(tmp_path / "l.sqlite")
    code, out, _ = run(
        capsys,
        "release",
        "--data",
        str(census_csv),
        "--sql",
        "SELECT educ, COUNT(*) FROM census GROUP BY educ",
        "--epsilon",
        "0.5",
        "--keys",
        "educ=9,12,16",
        "--explain",
        "--format",
        "json",
        "--ledger",
        db,
    )
    assert code == 0
    data = json.loads(out)
    assert data["vectors"][0]["mechanism"].startswith("Laplace(ε=0.5")
    assert data["selection"] is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sql", "SELECT AVG(lweekinc) FROM census"], "no bounds are declared"),
        (
            ["--sql", "SELECT AVG(lweekinc) FROM census", "--bounds", "lweekinc=10"],
            "--bounds takes COL=LOW:HIGH",
        ),
        (["--sql", "SELECT MAX(lweekinc) FROM census"], "MAX() is not supported"),
        (["--sql", "SELECT AVG(salary) FROM census"], "unknown column 'salary'"),
        (["--sql", "SELECT state, COUNT(*) FROM census GROUP BY state"], "needs delta > 0"),
    ],
)
def test_release_errors_are_one_line(
    capsys: pytest.CaptureFixture[str],
    census_csv: Path,
    tmp_path: Path,
    extra: list[str],
    message: str,
) -> None:
    code, _, err = run(
        capsys,
        "release",
        "--data",
        str(census_csv),
        "--epsilon",
        "1",
        "--ledger",
        str(tmp_path / "l.sqlite"),
        *extra,
    )
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_study_writes_the_privacy_utility_curve(
    capsys: pytest.CaptureFixture[str], census_csv: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "study"
    code, out, err = run(
        capsys,
        "release",
        "study",
        "--data",
        str(census_csv),
        "--sql",
        "SELECT state, AVG(lweekinc) FROM census GROUP BY state",
        "--bounds",
        "lweekinc=0:10",
        "--delta",
        "1e-6",
        "--epsilons",
        "0.5,2,8",
        "--repeats",
        "5",
        "--out",
        str(out_dir),
    )
    assert code == 0, err
    for name in ("study.csv", "report.html", "utility_error.png", "utility_within.png"):
        assert (out_dir / name).stat().st_size > 0
    lines = (out_dir / "study.csv").read_text().splitlines()
    assert len(lines) == 4
    errors = [float(line.split(",")[3]) for line in lines[1:]]
    assert errors[0] > errors[-1]  # more epsilon, less error
    assert "not for release" in out or "nothing was spent" in out
    assert "charged to no budget" in (out_dir / "report.html").read_text()
