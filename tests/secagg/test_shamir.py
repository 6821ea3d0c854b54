"""Shamir secret sharing: every t-subset reconstructs, fewer shares reveal nothing."""

from __future__ import annotations

import itertools
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.errors import ConfigurationError, RemoteProtocolError
from veil.privacy import InsecureSeededRandom
from veil.secagg import shamir


def _probably_prime(n: int) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    rng = random.Random(1)
    for a in [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] + [
        rng.randrange(2, n - 1) for _ in range(40)
    ]:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_the_field_is_the_least_prime_above_2_256() -> None:
    assert _probably_prime(shamir.PRIME)  # false positive below 4^-52
    assert not any(_probably_prime(2**256 + c) for c in range(1, 297, 2))


def test_every_t_subset_reconstructs_the_secret() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, threshold=3, holders=range(1, 7))
    for subset in itertools.combinations(shares, 3):
        assert shamir.combine({x: shares[x] for x in subset}, threshold=3) == secret
    assert shamir.combine(shares, threshold=3) == secret  # more than enough is fine


def test_fewer_than_t_shares_are_refused_and_say_nothing() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, threshold=4, holders=range(1, 7))
    for subset in itertools.combinations(shares, 3):
        with pytest.raises(RemoteProtocolError, match="cannot reconstruct"):
            shamir.combine({x: shares[x] for x in subset}, threshold=4)
    # any 3 shares are consistent with every secret: for a chosen other secret there is a
    # share for a 4th holder that, with the 3, reconstructs it
    other = os.urandom(32)
    xs = (1, 2, 3)
    lam = shamir.lagrange_at_zero((*xs, 7))
    partial = sum(c * shares[x] for c, x in zip(lam, xs, strict=False)) % shamir.PRIME
    fourth = (int.from_bytes(other, "big") - partial) * pow(lam[3], -1, shamir.PRIME) % shamir.PRIME
    assert shamir.combine({**{x: shares[x] for x in xs}, 7: fourth}, threshold=4) == other


def test_shares_of_t_minus_1_holders_are_uniform_whatever_the_secret() -> None:
    """With threshold 2, one share is f(x) = s + a x with a uniform: its top byte is uniform
    for the all-zero and the all-one secret alike (chi-square over 16 bins, 4,000 draws,
    false alarm below 1e-4 for each)."""
    from scipy import stats

    rng = InsecureSeededRandom(5)
    for secret in (bytes(32), b"\xff" * 32):
        counts = [0] * 16
        for _ in range(4000):
            y = shamir.split(secret, threshold=2, holders=[1, 2], rng=rng)[1]
            counts[(y * 16) // shamir.PRIME] += 1
        assert stats.chisquare(counts).pvalue > 1e-4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"secret": b"short", "threshold": 2, "holders": [1, 2]}, "exactly 32 bytes"),
        ({"secret": bytes(32), "threshold": 3, "holders": [1, 2]}, "threshold must be"),
        ({"secret": bytes(32), "threshold": 1, "holders": [0, 1]}, "holder indices"),
        ({"secret": bytes(32), "threshold": 1, "holders": [1, 1]}, "distinct"),
    ],
)
def test_bad_arguments(kwargs, message) -> None:
    secret = kwargs.pop("secret")
    with pytest.raises(ConfigurationError, match=message):
        shamir.split(secret, **kwargs)


@settings(max_examples=30, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(1, 8),
    data=st.data(),
)
def test_any_threshold_and_any_holders(secret, n, data) -> None:
    t = data.draw(st.integers(1, n))
    holders = data.draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, threshold=t, holders=holders)
    chosen = data.draw(st.permutations(holders))[:t]
    assert shamir.combine({x: shares[x] for x in chosen}, threshold=t) == secret
