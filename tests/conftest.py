"""Shared fixtures. The PostgreSQL server the ledger tests need is started here, once per test
session, from the machine's Debian ``postgresql`` package (``make test`` installs it if needed)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from veil.ledger.testing import TemporaryPostgres, postgres_bindir


@pytest.fixture(scope="session")
def postgres() -> Iterator[TemporaryPostgres]:
    required = os.environ.get("VEIL_REQUIRE_ALL") == "1"
    if postgres_bindir() is None:
        message = "PostgreSQL is not installed (run scripts/ensure-system-deps.sh)"
        if required:
            pytest.fail(message)
        pytest.skip(message)
    server = TemporaryPostgres()
    try:
        server.start()
    except subprocess.CalledProcessError as exc:
        detail = server.log() or exc.stderr.decode(errors="replace")
        server.stop()
        pytest.fail(f"could not start PostgreSQL: {detail[-2000:]}")
    for _ in range(100):
        try:
            server.create_database()
            break
        except Exception:  # the server may still be starting
            time.sleep(0.1)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty ledger database of each kind."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite")
    server: TemporaryPostgres = request.getfixturevalue("postgres")
    return server.create_database()
