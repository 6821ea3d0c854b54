"""Dinur-Nissim reconstruction of 100 secret bits: exact answers give them back; through veil's
release engine, which composes every answer into one budget of epsilon 4, at most 60% come
back on average."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from veil.audit.reconstruction import (
    attack_release_engine,
    averaging_attack,
    differencing_attack,
    lp_decode,
    random_subsets,
    reconstruction_attack,
    subset_sum_sql,
)
from veil.errors import BudgetExceededError, DataError
from veil.privacy import Domain, InsecureSeededRandom, LaplaceMechanism

PEOPLE, QUERIES = 100, 400


@pytest.fixture(scope="module")
def secret() -> np.ndarray:
    return np.random.default_rng(42).integers(0, 2, PEOPLE)


def test_exact_answers_give_the_bits_back(secret: np.ndarray) -> None:
    result = reconstruction_attack(
        lambda ids: float(secret[list(ids)].sum()), people=PEOPLE, queries=QUERIES
    )
    assert result.accuracy(secret) >= 0.99


def test_bounded_noise_below_root_n_is_no_defence(secret: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    noise = np.sqrt(PEOPLE) / 4  # |e| <= sqrt(n)/4 = 2.5

    def ask(ids: Sequence[int]) -> float:
        return float(secret[list(ids)].sum() + rng.uniform(-noise, noise))

    assert reconstruction_attack(ask, people=PEOPLE, queries=QUERIES).accuracy(secret) >= 0.95


def test_laplace_noise_without_composition_is_no_defence(secret: np.ndarray) -> None:
    # The broken variant: epsilon 1 per answer with nothing composing the 400 answers (a total
    # of 400). The same bound the engine meets below fails here.
    rng = InsecureSeededRandom(3)
    mech = LaplaceMechanism(sensitivity=1, epsilon=1.0, domain=Domain.INTEGERS)

    def ask(ids: Sequence[int]) -> float:
        return float(mech.release(int(secret[list(ids)].sum()), rng=rng))

    assert reconstruction_attack(ask, people=PEOPLE, queries=QUERIES).accuracy(secret) > 0.6


def attack_through_the_engine(seed: int, tmp_path: Path) -> tuple[float, float]:
    """Dinur-Nissim on ``seed``'s secret bits through veil's release engine (its own Laplace
    noise, the ledger composing every answer within a budget of epsilon 4 at delta 1e-5), each
    question asked at the epsilon that spends the whole budget on 400: the fraction of bits
    recovered and the epsilon the ledger recorded."""
    pd = pytest.importorskip("pandas")
    from veil.analytics import Dataset, Releaser, TableSpec
    from veil.ledger import Ledger

    bits = np.random.default_rng(seed).integers(0, 2, PEOPLE)
    table = pd.DataFrame({"id": np.arange(PEOPLE), "secret": bits})
    people = Dataset(table, TableSpec("people", bounds={"secret": (0, 1)}))
    with Ledger(str(tmp_path / f"ledger-{seed}.sqlite")) as ledger:
        ledger.set_budget("people/row", epsilon=4.0, delta=1e-5)
        releaser = Releaser(ledger, rng=InsecureSeededRandom(seed))  # reproducible noise
        result, per_question = attack_release_engine(
            releaser,
            people,
            table="people",
            column="secret",
            id_column="id",
            people=PEOPLE,
            queries=QUERIES,
            epsilon=4.0,
            delta=1e-5,
            seed=seed,
        )
        assert 0.04 < per_question < 0.05  # not 4 / 400: the ledger composes tighter
        spent = ledger.status("people/row").spent_epsilon
        # and refuses, before anything is drawn, a question that would overspend
        with pytest.raises(BudgetExceededError):
            releaser.release(people, subset_sum_sql("people", "secret", "id", [0, 1]), epsilon=0.1)
    return result.accuracy(bits), spent


@pytest.mark.slow
def test_the_release_engine_within_epsilon_four_resists(tmp_path: Path) -> None:
    # Four runs (secret bits, questions and noise from seeds 0-3): the whole budget of 4 is
    # spent each time, and on average at most 60% of the bits come back (chance is 50%).
    # A single run is not held to 60%: 100 bits give a standard error of 5 points, and over
    # 20 seeds single runs ranged from 52% to 70% (docs/audit.md).
    runs = [attack_through_the_engine(seed, tmp_path) for seed in range(4)]
    for _, spent in runs:
        assert 3.9 <= spent <= 4.0
    assert np.mean([accuracy for accuracy, _ in runs]) <= 0.6, runs


def test_differencing_and_averaging_against_exact_answers_and_the_engine(
    secret: np.ndarray, tmp_path: Path
) -> None:
    pd = pytest.importorskip("pandas")
    from veil.analytics import Dataset, Releaser, TableSpec
    from veil.ledger import Ledger

    def exact(ids: Sequence[int]) -> float:
        return float(secret[list(ids)].sum())

    # against exact sums over large sets, the target's bit comes out exactly
    assert differencing_attack(exact, people=PEOPLE, target=7) == secret[7]
    table = pd.DataFrame({"id": np.arange(PEOPLE), "secret": secret})
    people = Dataset(table, TableSpec("people", bounds={"secret": (0, 1)}))
    with Ledger(str(tmp_path / "ledger.sqlite")) as ledger:
        ledger.set_budget("people/row", epsilon=1.0, delta=1e-5)
        releaser = Releaser(ledger, rng=InsecureSeededRandom(5))
        answers: list[float] = []

        def ask(ids: Sequence[int]) -> float:
            sql = subset_sum_sql("people", "secret", "id", ids)
            answers.append(float(releaser.release(people, sql, epsilon=0.1).records[0]["value"]))
            return answers[-1]

        differencing_attack(ask, people=PEOPLE, target=7)
        after_two = ledger.status("people/row").spent_epsilon
        assert after_two == pytest.approx(0.2, rel=0.05)  # both questions were charged
        # the same question 50 more times: the stored answer, nothing more spent, nothing to
        # average away
        mean = averaging_attack(ask, list(range(PEOPLE)), repeats=50)
        assert mean == answers[0]
        assert len(set(answers[2:])) == 1
        assert ledger.status("people/row").spent_epsilon == pytest.approx(after_two)


def test_lp_decoding_checks_its_inputs() -> None:
    subsets = random_subsets(5, 3, seed=0)
    with pytest.raises(DataError, match="answers"):
        lp_decode(subsets, [1.0, 2.0])
    with pytest.raises(DataError, match="finite"):
        lp_decode(subsets, [1.0, 2.0, np.nan])
    assert subset_sum_sql("t", "s", "id", []).endswith("WHERE id < 0")
