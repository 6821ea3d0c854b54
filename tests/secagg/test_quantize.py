"""Quantisation into Z_2^32: unbiased, and the ring sum of n clients never overflows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.errors import ConfigurationError, DataError
from veil.privacy import InsecureSeededRandom
from veil.secagg import Quantizer


def test_stochastic_rounding_is_unbiased() -> None:
    """200,000 encodings of one value: the mean rounded integer is the scaled value. The
    rounding of y = k + f is Bernoulli(f), variance f(1-f) <= 1/4: a window of 6 standard
    errors (false alarm about 2e-9)."""
    q = Quantizer(clip=1.0, clients=10)
    value = 0.123456789
    rng = InsecureSeededRandom(1)
    words = q.encode(np.full(200_000, value), rng=rng)
    ints = words.view(np.int32).astype(np.float64)
    y = value * q.scale
    assert set(np.unique(ints)) == {np.floor(y), np.floor(y) + 1}
    assert abs(ints.mean() - y) < 6 * 0.5 / np.sqrt(200_000)


def test_a_biased_rounding_would_be_caught() -> None:
    """The same check against plain floor rounding (bias f): it must fail."""
    q = Quantizer(clip=1.0, clients=10)
    y = 0.123456789 * q.scale
    assert abs(np.floor(y) - y) > 6 * 0.5 / np.sqrt(200_000)


@settings(max_examples=60, deadline=None)
@given(
    clients=st.integers(1, 2000),
    clip=st.floats(1e-3, 1e3),
    spread=st.floats(0.0, 1e6),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_sum_of_clients_never_overflows(clients, clip, spread, seed) -> None:
    """Whatever the inputs (even far beyond the clip), the decoded ring sum of `clients`
    encodings equals the exact integer sum, and lies within clients x (clip + resolution)."""
    q = Quantizer(clip=clip, clients=clients)
    rng = np.random.default_rng(seed)
    source = InsecureSeededRandom(seed)
    dim = 8
    total = np.zeros(dim, dtype=np.uint32)
    exact = np.zeros(dim, dtype=np.int64)
    for _ in range(min(clients, 50)):
        x = rng.uniform(-spread, spread, size=dim)
        words = q.encode(x, rng=source)
        total += words  # uint32: wraps modulo 2^32
        exact += words.view(np.int32).astype(np.int64)
    # the worst case is every client at the extreme: check that bound too
    assert clients * (clip * q.scale + 1) < 2**31
    np.testing.assert_allclose(q.decode(total), exact / q.scale, rtol=0, atol=0)
    assert np.all(np.abs(q.decode(total)) <= min(clients, 50) * (clip + q.resolution))


def test_the_worst_case_sum_decodes_exactly() -> None:
    q = Quantizer(clip=2.0, clients=1000)
    total = np.zeros(3, dtype=np.uint32)
    for _ in range(1000):
        total += q.encode(np.array([1e9, -1e9, 2.0]), rng=InsecureSeededRandom(0))
    decoded = q.decode(total)
    np.testing.assert_allclose(decoded, [2000.0, -2000.0, 2000.0], atol=1000 * q.resolution)


def test_decoded_sums_are_close_to_the_float_sums() -> None:
    q = Quantizer(clip=1.0, clients=100)
    rng = np.random.default_rng(2)
    xs = rng.uniform(-1, 1, size=(100, 1000))
    total = np.zeros(1000, dtype=np.uint32)
    for i, x in enumerate(xs):
        total += q.encode(x, rng=InsecureSeededRandom(i))
    error = q.decode(total) - xs.sum(axis=0)
    assert np.abs(error).max() <= 100 * q.resolution  # each rounding moves by under a step
    assert abs(error.mean()) < 5 * q.resolution  # and they cancel on average


def test_refusals() -> None:
    with pytest.raises(ConfigurationError, match="clip"):
        Quantizer(clip=0.0, clients=3)
    with pytest.raises(ConfigurationError, match="clients"):
        Quantizer(clip=1.0, clients=0)
    with pytest.raises(ConfigurationError, match="fewer clients"):
        Quantizer(clip=1.0, clients=2**31)
    with pytest.raises(DataError, match="finite"):
        Quantizer(clip=1.0, clients=3).encode([1.0, np.nan])
