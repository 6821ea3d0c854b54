"""Fixtures for the analytics tests: the bundled census excerpt and small synthetic tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from veil.analytics import Dataset, TableSpec
from veil.datasets import data_path
from veil.ledger import Ledger


@pytest.fixture
def census() -> Dataset:
    return Dataset(
        data_path("census2000.csv"),
        TableSpec("census2000", bounds={"lweekinc": (0.0, 10.0), "educ": (0, 20)}),
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(str(tmp_path / "ledger.sqlite"), actor="analyst") as led:
        yield led


def _people_table(n_people: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Each person has 1-4 rows spread over 1-3 of 20 groups; income lognormal."""
    rng = np.random.default_rng(seed)  # test data only
    rows_per = rng.integers(1, 5, size=n_people)
    person = np.repeat(np.arange(n_people), rows_per)
    home = rng.integers(0, 20, size=n_people)
    spread = rng.integers(0, 3, size=person.size)
    group = (home[person] + spread * (rng.random(person.size) < 0.4)) % 20
    income = rng.lognormal(10, 1, size=person.size)
    return {"person": person, "grp": group.astype(np.int64), "income": income}


@pytest.fixture
def people_table() -> Callable[..., dict[str, np.ndarray]]:
    """A function making synthetic people tables (see ``_people_table``)."""
    return _people_table
