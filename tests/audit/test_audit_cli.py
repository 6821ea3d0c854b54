"""``veil audit dp|mia``: the verdict, the exit code under --check, JSON and the HTML report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from veil.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_dp_audit_of_a_correct_laplace_mechanism(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "report"
    code, out, _ = run(
        capsys, "audit", "dp", "--epsilon", "1", "--seed", "1", "--check", "--report", str(folder)
    )
    assert code == 0
    assert "consistent with the claim" in out
    html = (folder / "report.html").read_text()
    assert "empirical epsilon (lower bound)" in html
    assert "claimed epsilon" in html
    assert (folder / "roc.png").exists()
    assert (folder / "epsilon.png").exists()


def test_dp_audit_catches_neighbours_further_apart_than_the_sensitivity(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(
        capsys, "audit", "dp", "--epsilon", "1", "--shift", "2", "--seed", "1", "--check", "--json"
    )
    assert code == 1
    result = json.loads(out)
    assert result["exceeds_claim"] is True
    assert result["epsilon_lower"] > 1.0
    assert result["claimed_epsilon"] == 1.0


def test_one_run_audit_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    common = ("audit", "dp", "--method", "one-run", "--epsilon", "1", "--canaries", "2000")
    code, out, _ = run(capsys, *common, "--seed", "3", "--json")
    assert code == 0
    ok = json.loads(out)
    assert ok["method"] == "one-run"
    assert 0 < ok["epsilon_lower"] <= 1.0
    code, out, _ = run(capsys, *common, "--shift", "4", "--seed", "3", "--json", "--check")
    assert code == 1
    assert json.loads(out)["exceeds_claim"] is True


def test_one_run_fdp_audit_of_the_gaussian_mechanism(capsys: pytest.CaptureFixture[str]) -> None:
    common = ("audit", "dp", "--mechanism", "gaussian", "--method", "one-run-fdp")
    common += ("--epsilon", "2", "--canaries", "2000", "--seed", "3", "--json")
    code, out, _ = run(capsys, *common)
    assert code == 0
    ok = json.loads(out)
    assert ok["method"] == "one-run f-DP"
    assert 0 < ok["epsilon_lower"] <= ok["claimed_epsilon"]
    code, out, _ = run(capsys, *common, "--shift", "4", "--check")
    assert code == 1
    code, _, err = run(capsys, "audit", "dp", "--method", "one-run-fdp", "--epsilon", "1")
    assert code == 1
    assert "needs --delta > 0" in err


def test_mia_from_the_command_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "mia"
    code, out, _ = run(
        capsys,
        "audit",
        "mia",
        "--population",
        "200",
        "--models",
        "4",
        "--epochs",
        "200",
        "--report",
        str(folder),
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    attacks = {r["attack"]: r for r in result["attacks"]}
    assert set(attacks) == {"loss", "lira-offline", "lira-online", "rmia"}
    assert all(0.0 <= r["auc"] <= 1.0 for r in attacks.values())
    assert attacks["lira-online"]["auc"] > 0.6
    assert result["dp_limit_violations"] is None
    html = (folder / "report.html").read_text()
    assert "lira-online" in html
    assert (folder / "roc.png").exists()


def test_audit_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "audit", "dp", "--epsilon", "1", "--mechanism", "cauchy")
    assert code == 1
    assert err.count("\n") == 1
    assert "--mechanism must be one of: laplace, gaussian" in err
    code, _, err = run(capsys, "audit", "mia", "--population", "3")
    assert code == 1
    assert "--population must be between 8" in err


def test_the_fdp_one_run_audit_is_refused_for_a_laplace_mechanism(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The f-DP test assumes the Gaussian trade-off curve: run on a correct Laplace mechanism
    it reported epsilon 1.2 against a claim of 1 (a false refutation)."""
    code, _, err = run(
        capsys,
        "audit",
        "dp",
        "--mechanism",
        "laplace",
        "--epsilon",
        "1",
        "--delta",
        "1e-5",
        "--method",
        "one-run-fdp",
        "--canaries",
        "1000",
    )
    assert code == 1
    assert "assumes the Gaussian mechanism's trade-off curve" in err


def test_inversion_from_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "inversion"
    args = ("audit", "inversion", "--images", "1", "--steps", "200", "--json")
    code, out, _ = run(capsys, *args, "--report", str(folder))
    assert code == 0
    (row,) = json.loads(out)["images"]
    assert row["label_recovered"] is True
    assert row["analytic"] >= 60
    assert (folder / "reconstructions.png").exists()
    assert "inverting gradients" in (folder / "report.html").read_text()
    code, out, _ = run(capsys, *args, "--clip", "1", "--noise", "1")
    assert code == 0
    (row,) = json.loads(out)["images"]
    assert max(row["analytic"], row["DLG"], row["inverting gradients"]) <= 12
    code, _, err = run(capsys, "audit", "inversion", "--noise", "1")
    assert code == 1
    assert "--noise needs --clip" in err


def test_reconstruction_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "audit", "reconstruction", "--answers", "exact", "--json")
    assert code == 0
    assert json.loads(out)["accuracy"] >= 0.99
    code, out, _ = run(
        capsys, "audit", "reconstruction", "--people", "20", "--queries", "40", "--json"
    )
    assert code == 0
    result = json.loads(out)
    assert result["answers"] == "engine"
    assert 0 < result["epsilon_spent"] <= 4.0


def test_the_demos_audit_section(tmp_path: Path) -> None:
    from veil.cli._demo_audit import audit_section
    from veil.reports import Report
    from veil.reports.plots import have_matplotlib

    report = Report("audit section")
    audit_section(report, tmp_path, have_matplotlib())
    html, _ = report.write(tmp_path)
    text = html.read_text()
    assert "Privacy audits: the claims, attacked" in text
    assert "refuted" in text  # the sensitivity bug
    assert "consistent" in text  # the correct mechanism
    assert "DP-SGD, ε = 1" in text
    assert "no attack&#x27;s TPR is significantly above the limit" in text
    if have_matplotlib():
        assert (tmp_path / "audit-roc.png").exists()
