"""Shared pieces of the deployment tests: a consortium PKI, three hospitals' data files, a
federation file, and real ``veil`` processes whose structured logs the tests read."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("grpc")
pytest.importorskip("torch")

from veil.federated.data import FederatedData, breast_cancer
from veil.tls import issue, make_ca

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
FOUR = (*HOSPITALS, "hospital-d")


def write_pair(folder: Path, name: str, cert: bytes, key: bytes) -> None:
    (folder / f"{name}.pem").write_bytes(cert)
    (folder / f"{name}.key").write_bytes(key)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem/.key, coordinator.pem (server, 127.0.0.1), hospital-a..c and an 'intruder'
    client of the same CA, and 'hospital-a' of another CA in the folder ``other/``."""
    folder = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = make_ca("test consortium")
    write_pair(folder, "ca", ca_cert, ca_key)
    write_pair(folder, "coordinator", *issue(ca_cert, ca_key, "coordinator", hosts=["127.0.0.1"]))
    for name in (*FOUR, "intruder"):
        write_pair(folder, name, *issue(ca_cert, ca_key, name, client=True))
    other = folder / "other"
    other.mkdir()
    other_cert, other_key = make_ca("another consortium")
    write_pair(other, "ca", other_cert, other_key)
    write_pair(other, "hospital-a", *issue(other_cert, other_key, "hospital-a", client=True))
    return folder


@pytest.fixture(scope="session")
def federation_data() -> FederatedData:
    return breast_cancer(clients=3, seed=0, names=list(HOSPITALS))


def _write_data(data: FederatedData, folder: Path) -> Path:
    for i, name in enumerate(data.client_ids):
        part = data.client(i)
        np.savez(folder / f"{name}.npz", x=part.x.numpy(), y=part.y.numpy())
    return folder


@pytest.fixture(scope="session")
def data_files(federation_data: FederatedData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hospital-x.npz: each hospital's own examples (x float32, y int64)."""
    return _write_data(federation_data, tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def four_data_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same for four hospitals (secure aggregation's threshold is at least 3, so a round
    survives a dropout only with four or more)."""
    data = breast_cancer(clients=4, seed=0, names=list(FOUR))
    return _write_data(data, tmp_path_factory.mktemp("data4"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path, pki: Path, *, port: int, **settings: Any) -> Path:
    """A federation file: 3 hospitals, logistic regression on breast cancer, secure
    aggregation (secagg, surviving one dropout of three); ``settings`` override
    ``table.key`` entries, e.g. ``{"dp.mode": "client"}``."""
    tables: dict[str, dict[str, Any]] = {
        "federation": {
            "name": "hospitals",
            "clients": list(HOSPITALS),
            "rounds": 3,
            "listen": f"127.0.0.1:{port}",
            "state": "coordinator.sqlite",
            "stage_seconds": 4.0,
            "start_seconds": 60.0,
            "min_clients": 3,
        },
        "model": {"kind": "logistic", "features": 30, "classes": 2},
        "training": {"local_epochs": 1, "learning_rate": 0.1},
        "secure_aggregation": {"graph": "secagg", "dropout": 0.34},
        "tls": {"dir": str(pki), "name": "coordinator"},
    }
    for dotted, value in settings.items():
        table, key = dotted.split(".")
        tables.setdefault(table, {})[key] = value
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
        lines.append("")
    path = folder / "fed.toml"
    path.write_text("\n".join(lines))
    return path


class Proc:
    """A ``veil`` command in its own process; stdout and stderr go to files."""

    def __init__(self, folder: Path, label: str, *args: str) -> None:
        self.out = folder / f"{label}.out"
        self.err = folder / f"{label}.err"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "veil", *args], stdout=out, stderr=err, cwd=folder, env=env
            )

    def events(self) -> list[dict[str, Any]]:
        """The structured log lines written so far."""
        out = []
        for line in self.err.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line being written
        return out

    def wait_event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):
                    return event
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no such event; log:\n{self.err.read_text()[-3000:]}")

    def wait(self, timeout: float = 90.0) -> int:
        return self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def text(self) -> str:
        return self.out.read_text() + self.err.read_text()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test started; killed (by their pid) if still running when it ends."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def join_args(port: int, pki: Path, data_files: Path, name: str, *extra: str) -> list[str]:
    return [
        "fl",
        "join",
        "--server",
        f"127.0.0.1:{port}",
        "--cert",
        str(pki / f"{name}.pem"),
        "--data",
        str(data_files / f"{name}.npz"),
        *extra,
    ]
