"""Shared fixtures: a logistic model of German credit, trained once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

try:
    import grpc  # noqa: F401
    import tenseal  # noqa: F401
except ImportError:  # `make test` (VEIL_REQUIRE_ALL=1) installs the he extra: fail there
    if os.environ.get("VEIL_REQUIRE_ALL") == "1":
        raise
    pytest.skip("the he extra is not installed", allow_module_level=True)

from veil.datasets import data_path
from veil.he import LinearModel, Mode, Packing, ScoringClient, read_rows, train_model


@pytest.fixture(scope="session")
def credit() -> tuple[LinearModel, list[dict[str, str]]]:
    """The model and its 200 held-out applicants."""
    rows = read_rows(data_path("german_credit.csv"))
    return train_model(rows, target="creditability", positive="bad")


@pytest.fixture(scope="session")
def model(credit: tuple[LinearModel, list[dict[str, str]]]) -> LinearModel:
    return credit[0]


@pytest.fixture(scope="session")
def test_rows(credit: tuple[LinearModel, list[dict[str, str]]]) -> list[dict[str, str]]:
    return credit[1]


@pytest.fixture(scope="session")
def x_test(model: LinearModel, test_rows: list[dict[str, str]]) -> np.ndarray:
    return model.encoder.encode(test_rows)


@pytest.fixture(scope="session")
def model_file(model: LinearModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("he") / "credit.json"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def logit_client(model: LinearModel) -> ScoringClient:
    return ScoringClient.generate(model.public_spec(), mode=Mode.LOGIT, packing=Packing.SINGLE)


@pytest.fixture(scope="session")
def batch_client(model: LinearModel) -> ScoringClient:
    return ScoringClient.generate(model.public_spec(), mode=Mode.LOGIT, packing=Packing.BATCH)
