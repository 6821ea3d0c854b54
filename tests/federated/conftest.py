"""Fixtures for the federated tests: small synthetic federations and a ledger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from veil.federated import ClientData, FederatedData
from veil.ledger import Ledger


def synthetic(
    sizes: list[int], *, features: int = 5, seed: int = 0, dtype: torch.dtype = torch.float64
) -> FederatedData:
    """A linearly separable-ish binary task split into clients of the given sizes."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    w = rng.normal(size=features)
    x = rng.normal(size=(n, features))
    y = (x @ w + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    cuts = np.cumsum(sizes)[:-1]
    parts = tuple(np.split(np.arange(n, dtype=np.int64), cuts))
    xt = rng.normal(size=(200, features))
    yt = (xt @ w > 0).astype(np.int64)
    return FederatedData(
        "synthetic",
        torch.tensor(x, dtype=dtype),
        torch.tensor(y),
        parts,
        tuple(f"c{i}" for i in range(len(sizes))),
        ClientData(torch.tensor(xt, dtype=dtype), torch.tensor(yt)),
        2,
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(str(tmp_path / "ledger.sqlite"), actor="trainer") as led:
        yield led
