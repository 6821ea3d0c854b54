"""``veil he``: train, certs, a real ``veil he serve`` process on loopback, keygen and score;
bad input is one readable line and exit code 1."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from veil.cli.main import main
from veil.datasets import data_path
from veil.he import LinearModel


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cli")
    model, test = folder / "model.json", folder / "test.csv"
    code = main(
        [
            "he",
            "train",
            "--data",
            data_path("german_credit.csv"),
            "--target",
            "creditability",
            "--positive",
            "bad",
            "--out",
            str(model),
            "--test-out",
            str(test),
        ]
    )
    assert code == 0
    return model, test


@pytest.fixture(scope="module")
def served(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``veil he serve`` in its own process, with mutual TLS on loopback; yields HOST:PORT."""
    model, _ = trained
    pki = tmp_path_factory.mktemp("pki")
    assert main(["he", "certs", "--out", str(pki)]) == 0
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "veil",
            "he",
            "serve",
            "--model",
            str(model),
            "--port",
            "0",
            "--workers",
            "1",
            "--tls-dir",
            str(pki / "server"),
            "--allow-batch",  # the tests' client is trusted with the model
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "serving" in line, proc.stderr.read() if proc.stderr else line
    port = line.split(" on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1]
    yield f"localhost:{port}|{pki / 'client'}|{proc.pid}"  # the client's folder only
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_train_reports_the_model_and_its_sigmoid(trained: tuple[Path, Path]) -> None:
    model_path, test_path = trained
    model = LinearModel.load(model_path)
    assert model.features == 61
    assert model.sigmoid is not None and model.sigmoid.degree == 7
    with test_path.open() as fh:
        assert len(list(csv.DictReader(fh))) == 200


def test_keygen_and_score_against_a_served_model(
    served: str, trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, pki, _ = served.split("|")
    model_path, test_path = trained
    model = LinearModel.load(model_path)
    with test_path.open() as fh:
        rows = list(csv.DictReader(fh))[:25]
    small = tmp_path / "applicants.csv"
    with small.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    clear = model.scores(model.encoder.encode(rows))
    for extra in ([], ["--batch"]):
        keys = tmp_path / ("keys" + "".join(extra))
        code, out, err = run(
            capsys,
            "he",
            "keygen",
            "--server",
            target,
            "--tls-dir",
            pki,
            "--out",
            str(keys),
            *extra,
        )
        assert code == 0, err
        assert "128-bit secure" in out
        assert (keys / "secret.key").stat().st_mode & 0o077 == 0
        scores = tmp_path / "scores.csv"
        code, out, err = run(
            capsys,
            "he",
            "score",
            "--server",
            target,
            "--tls-dir",
            pki,
            "--keys",
            str(keys),
            "--input",
            str(small),
            "--out",
            str(scores),
        )
        assert code == 0, err
        assert "scored 25 applicants encrypted" in out
        with scores.open() as fh:
            got = np.array([float(r["probability"]) for r in csv.DictReader(fh)])
        assert np.max(np.abs(got - clear)) <= 1e-5


def test_keygen_from_a_model_file_writes_the_public_spec(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_path, _ = trained
    code, out, err = run(
        capsys, "he", "keygen", "--model", str(model_path), "--out", str(tmp_path / "k")
    )
    assert code == 0, err
    spec = json.loads((tmp_path / "k" / "spec.json").read_text())
    assert "weights" not in spec
    assert "N=8192, modulus [60, 40, 40, 60]" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["he", "train", "--data", "missing.csv", "--target", "y", "--out", "m.json"],
            "does not exist",
        ),
        (
            [
                "he",
                "train",
                "--data",
                data_path("german_credit.csv"),
                "--target",
                "nope",
                "--out",
                "m.json",
            ],
            "target column 'nope' is not in the data",
        ),
        (
            [
                "he",
                "train",
                "--data",
                data_path("german_credit.csv"),
                "--target",
                "creditability",
                "--degree",
                "4",
                "--out",
                "m.json",
            ],
            "must be odd",
        ),
        (["he", "keygen", "--out", "k"], "either --server HOST:PORT or --model FILE"),
        (["he", "keygen", "--model", "missing.json", "--out", "k"], "does not exist"),
        (
            [
                "he",
                "score",
                "--server",
                "10.1.2.3:5000",
                "--insecure",
                "--keys",
                "k",
                "--input",
                "a.csv",
            ],
            "loopback only",
        ),
        (
            [
                "he",
                "score",
                "--server",
                "localhost",
                "--insecure",
                "--keys",
                "k",
                "--input",
                "a.csv",
            ],
            "HOST:PORT",
        ),
        (
            [
                "he",
                "score",
                "--server",
                "localhost:1",
                "--insecure",
                "--keys",
                "nokeys",
                "--input",
                "a.csv",
            ],
            "not a key folder",
        ),
        (
            ["he", "serve", "--model", "m.json", "--host", "192.0.2.1", "--insecure"],
            "loopback only",
        ),
        (["he", "serve", "--model", "m.json"], "--tls-dir"),
    ],
)
def test_bad_input_is_one_line(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *args)
    assert code == 1
    assert message in err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_score_rejects_rows_the_model_cannot_encode(
    served: str, trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, pki, _ = served.split("|")
    model_path, _ = trained
    assert main(["he", "keygen", "--model", str(model_path), "--out", str(tmp_path / "k")]) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    code, _, err = run(
        capsys,
        "he",
        "score",
        "--server",
        target,
        "--tls-dir",
        pki,
        "--keys",
        str(tmp_path / "k"),
        "--input",
        str(bad),
    )
    assert code == 1
    assert "row 1 has no column" in err and "Traceback" not in err


def _workers_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(c) for c in children if b"veil.he.service" in Path(f"/proc/{c}/cmdline").read_bytes()
    ]


def test_a_killed_worker_is_replaced(
    served: str, trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The serving process restarts a worker that dies mid-run (kill -9), and scoring resumes."""
    import time

    target, pki, pid = served.split("|")
    (worker,) = _workers_of(int(pid))
    os.kill(worker, signal.SIGKILL)
    model_path, test_path = trained
    keys = tmp_path / "keys"
    assert main(["he", "keygen", "--model", str(model_path), "--out", str(keys)]) == 0
    deadline = time.monotonic() + 90
    while True:
        code, out, err = run(
            capsys,
            "he",
            "score",
            "--server",
            target,
            "--tls-dir",
            pki,
            "--keys",
            str(keys),
            "--input",
            str(test_path),
        )
        if code == 0 or time.monotonic() > deadline:
            break
        assert "cannot reach the scoring server" in err  # restarting, not crashing
        time.sleep(1)
    assert code == 0, err
    assert "scored 200 applicants" in out
    (replacement,) = _workers_of(int(pid))
    assert replacement != worker
