"""What the deployment tests share besides fixtures: the hospitals, the federation file, and
real ``veil`` processes whose structured logs the tests read."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
FOUR = (*HOSPITALS, "hospital-d")


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
        "--state",  # in the test's folder (the working directory), not next to the shared PKI
        f"{name}.rounds.json",
        *extra,
    ]
