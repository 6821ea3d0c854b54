"""Fixtures of the deployment tests: a consortium PKI, the hospitals' data files, and the
processes a test starts (killed when it ends). Plain helpers are in ``deploy_support``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("grpc")
pytest.importorskip("torch")

from deploy_support import FOUR, HOSPITALS, Events, Proc

from veil.federated.data import FederatedData, breast_cancer
from veil.tls import issue, make_ca


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


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test started; killed (by their pid) if still running when it ends."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


@pytest.fixture
def events() -> Iterator[Events]:
    """The coordinator's structured log lines, collected while the test runs."""
    handler = Events()
    logger = logging.getLogger("veil.deploy")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)
