"""Aggregators and server optimisers."""

from __future__ import annotations

import numpy as np
import pytest

from veil.errors import ConfigurationError, ProtocolError
from veil.federated import (
    Adagrad,
    Adam,
    CoordinateMedian,
    Krum,
    RoundContext,
    TrainConfig,
    TrainResult,
    TrimmedMean,
    WeightedMean,
    Yogi,
    fedprox,
)
from veil.privacy import InsecureSeededRandom


def _context(dim: int) -> RoundContext:
    return RoundContext(1, dim, 10, 10, 1.0, InsecureSeededRandom(0))


def _poisoned(dim: int = 8, honest: int = 9) -> list[TrainResult]:
    rng = np.random.default_rng(0)
    results = [
        TrainResult(1, f"c{i}", 1.0 + 0.05 * rng.normal(size=dim), 100) for i in range(honest)
    ]
    results.append(TrainResult(1, "evil", np.full(dim, -1e6), 100))
    return results


@pytest.mark.parametrize(
    "aggregator", [CoordinateMedian(), TrimmedMean(trim_fraction=0.1), Krum(byzantine=1)]
)
def test_robust_aggregators_resist_a_poisoned_client(aggregator) -> None:
    results = _poisoned()
    robust = aggregator.aggregate(results, _context(8))
    assert np.all(np.abs(robust - 1.0) < 0.2)
    mean = WeightedMean().aggregate(results, _context(8))
    assert np.all(mean < -1e4)  # the plain mean is captured by the attacker


def test_multi_krum_averages_the_best_updates() -> None:
    results = _poisoned()
    out = Krum(byzantine=1, multi=5).aggregate(results, _context(8))
    assert np.all(np.abs(out - 1.0) < 0.1)
    with pytest.raises(ProtocolError, match="needs at least"):
        Krum(byzantine=3).aggregate(results[:5], _context(8))


def test_trimmed_mean_with_no_trimming_is_the_plain_mean() -> None:
    results = _poisoned(honest=3)
    plain = np.mean([r.update for r in results], axis=0)
    np.testing.assert_allclose(
        TrimmedMean(trim_fraction=0.0).aggregate(results, _context(8)), plain
    )
    with pytest.raises(ConfigurationError):
        TrimmedMean(trim_fraction=0.5)


def _reference(kind: str, deltas: list[np.ndarray], lr=0.1, b1=0.9, b2=0.99, tau=1e-3):
    """Reddi et al. (2021) Algorithm 2, written out one coordinate array at a time."""
    x = np.zeros_like(deltas[0])
    m = np.zeros_like(x)
    v = np.full_like(x, tau**2)
    for d in deltas:
        m = b1 * m + (1 - b1) * d
        if kind == "adagrad":
            v = v + d**2
        elif kind == "adam":
            v = b2 * v + (1 - b2) * d**2
        else:
            v = v - (1 - b2) * d**2 * np.sign(v - d**2)
        x = x + lr * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize(("kind", "cls"), [("adagrad", Adagrad), ("adam", Adam), ("yogi", Yogi)])
def test_adaptive_server_optimisers_follow_reddi_et_al(kind, cls) -> None:
    rng = np.random.default_rng(1)
    deltas = [rng.normal(size=6) for _ in range(5)]
    opt = cls(learning_rate=0.1)
    x = np.zeros(6)
    for d in deltas:
        x = opt.step(x, d)
    np.testing.assert_allclose(x, _reference(kind, deltas), rtol=1e-12)
    assert set(opt.state()) == {"m", "v"}


def test_fedprox_tells_clients_its_mu() -> None:
    assert fedprox(mu=0.3).configure(TrainConfig()).proximal_mu == 0.3
    with pytest.raises(ConfigurationError):
        fedprox(mu=0)
