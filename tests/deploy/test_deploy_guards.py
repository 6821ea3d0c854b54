"""The coordinator's guards, in one process over plaintext loopback: a round waits for
``min_clients``, keys and shares that would sink a round drop their sender instead, long polls
cannot starve the other calls, and client-reported counts are bounded."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from deploy_support import HOSPITALS

from veil.deploy import Coordinator, FederationConfig, ModelSpec
from veil.deploy.coordinator import SERVICE
from veil.deploy.proto import federation_pb2 as pb
from veil.ledger import Ledger


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


@pytest.fixture
def events() -> Iterator[Events]:
    handler = Events()
    logger = logging.getLogger("veil.deploy")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def make_config(tmp_path: Path, **settings: object) -> FederationConfig:
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


def reserves(tmp_path: Path) -> list[Any]:
    ledger = Ledger(str(tmp_path / "ledger.sqlite"))
    try:
        return [e for e in ledger.history("hospitals/client") if e.kind == "reserve"]
    finally:
        ledger.close()


def poll(co: Coordinator, name: str, *, wait: float, after: int = 0) -> Any:
    """A NextTask long poll from ``name`` (plaintext: the name rides in the metadata); the
    call object, to be read or cancelled by the caller."""
    ch = grpc.insecure_channel(f"127.0.0.1:{co.port}")
    call = ch.unary_stream(f"/{SERVICE}/NextTask")
    stream = call(
        pb.TaskRequest(after_round=after, wait_seconds=wait).SerializeToString(),
        timeout=wait + 30,
        metadata=(("veil-client", name),),
    )
    return ch, stream


def test_no_round_starts_and_nothing_is_charged_below_min_clients(
    tmp_path: Path, events: Events
) -> None:
    """min_clients = 2 and only one agent connects: the coordinator keeps waiting (and says
    so) long after start_seconds; no round starts and the ledger holds no reservation."""
    co = Coordinator(make_config(tmp_path), insecure=True, port=0)
    co.start()
    ch, stream = poll(co, "hospital-a", wait=30.0)
    try:
        events.wait_for(
            lambda seen: sum(
                e["event"] == "waiting_for_clients" and e["connected"] == ["hospital-a"]
                for e in seen
            )
            >= 3
        )
        assert co.status()["round"] == 0
        assert not events.named("round_started")
        assert reserves(tmp_path) == []
    finally:
        stream.cancel()
        ch.close()
        co.stop(grace=0.1)
    assert co.error is None
