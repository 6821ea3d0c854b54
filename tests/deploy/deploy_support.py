"""What the deployment tests share besides fixtures: the hospitals, the federation file, and
real ``veil`` processes whose structured logs the tests read."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
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


class Events(logging.Handler):
    """The coordinator's structured log lines, as dicts."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[dict[str, Any]] = []
        self._lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("{"):
            with self._lock_:
                self.seen.append(json.loads(text))

    def named(self, event: str) -> list[dict[str, Any]]:
        with self._lock_:
            return [e for e in self.seen if e["event"] == event]

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 60.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock_:
                seen = list(self.seen)
            if predicate(seen):
                return
            time.sleep(0.02)
        raise AssertionError(f"not seen in time; events: {self.seen[-20:]}")


def make_config(tmp_path: Path, **settings: object) -> Any:
    """A FederationConfig for a coordinator in the test's process (plaintext on loopback):
    the three hospitals, central DP, rounds that start at once when two are connected."""
    from veil.deploy import FederationConfig, ModelSpec

    fields: dict[str, object] = {
        "name": "hospitals",
        "clients": HOSPITALS,
        "rounds": 3,
        "model": ModelSpec(features=30),
        "state": tmp_path / "coordinator.sqlite",
        "stage_seconds": 20.0,
        "start_seconds": 0.1,
        "min_clients": 2,
        "dp": "client",
        "noise_multiplier": 1.0,
        "clip_norm": 1.0,
        "ledger": tmp_path / "ledger.sqlite",
        "scope": "hospitals/client",
        "epsilon": 100.0,
    }
    return FederationConfig(**{**fields, **settings})  # type: ignore[arg-type]


def poll(co: Any, name: str, *, wait: float, after: int = 0) -> Any:
    """A NextTask long poll from ``name`` (plaintext: the name rides in the metadata); the
    channel and the call, to be read or cancelled by the caller."""
    import grpc

    from veil.deploy.coordinator import SERVICE
    from veil.deploy.proto import federation_pb2 as pb

    ch = grpc.insecure_channel(f"127.0.0.1:{co.port}")
    call = ch.unary_stream(f"/{SERVICE}/NextTask")
    stream = call(
        pb.TaskRequest(after_round=after, wait_seconds=wait).SerializeToString(),
        timeout=wait + 30,
        metadata=(("veil-client", name),),
    )
    return ch, stream


def submit_update(
    co: Any, name: str, *, round: int, examples: int, metrics: dict[str, float]
) -> Any:
    """A plain update of zeros; the coordinator's reply or the status code it refused with."""
    import grpc
    import numpy as np

    from veil.deploy import codec
    from veil.deploy.coordinator import SERVICE
    from veil.deploy.proto import federation_pb2 as pb

    head = pb.Chunk(
        header=pb.ChunkHeader(
            round=round,
            dtype="float32",
            length=co.dimension,
            num_examples=examples,
            metrics=metrics,
        )
    )
    with grpc.insecure_channel(f"127.0.0.1:{co.port}") as ch:
        call = ch.stream_unary(f"/{SERVICE}/SubmitUpdate")
        try:
            return call(
                (c.SerializeToString() for c in codec.chunks(head, np.zeros(co.dimension, "f4"))),
                timeout=60,
                metadata=(("veil-client", name),),
            )
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
