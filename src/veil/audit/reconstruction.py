"""Reconstruction attacks on released statistics (Dinur and Nissim 2003).

A table holds a secret bit ``d_i`` for each of ``n`` people. An analyst may ask for the sum of
the bits over any subset of people (``SELECT SUM(secret) ... WHERE id IN (...)``). If every
answer is within ``E = o(√n)`` of the truth, a few times ``n`` random subsets determine almost
every bit: the attacker solves the linear program

    minimise Σ_q |a_q − Σ_{i∈q} x_i|   over 0 <= x_i <= 1

(LP decoding, which also tolerates a fraction of arbitrarily wrong answers; Dwork, McSherry and
Talwar 2007) and rounds ``x`` to bits. This is the attack behind the US Census Bureau's 2010
reconstruction experiment, and the reason a statistics engine must compose every answer into one
budget: with ``4n`` answers composed into a total of epsilon 4 (each at about ``0.047`` for
``n = 100``, Laplace noise of scale 21 on a sum of at most 100) the attacker recovers 55-59% of
the bits on average over eight seeds, 47-64% in single runs (chance is 50%), whereas noise of
``ε = 1`` per answer with no composition (a total of ``4n``) gives the bits back.
:func:`epsilon_per_question` finds the epsilon per question that spends a whole budget, as a
careful attacker would.

:func:`reconstruction_attack` asks its questions through any callable, so the same attack runs
against exact answers, against a mechanism, and against veil's release engine through its public
API (:func:`subset_sum_sql` writes the SQL).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from scipy import optimize, sparse

from veil.errors import ConfigurationError, DataError
from veil.privacy.accountants import TightestAccountant
from veil.privacy.events import Event

if TYPE_CHECKING:
    from veil.analytics import Dataset, Releaser

__all__ = [
    "Reconstruction",
    "attack_release_engine",
    "attack_secret_bits",
    "epsilon_per_question",
    "lp_decode",
    "random_subsets",
    "reconstruction_attack",
    "subset_sum_sql",
]

BoolMatrix = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]


def random_subsets(people: int, queries: int, *, seed: int) -> BoolMatrix:
    """``queries`` subsets of ``range(people)``, each person in each with probability 1/2."""
    if people < 1 or queries < 1:
        raise ConfigurationError("need at least one person and one query")
    return np.random.default_rng(seed).random((queries, people)) < 0.5


def lp_decode(subsets: BoolMatrix, answers: npt.ArrayLike) -> FloatArray:
    """The ``x`` in ``[0, 1]^n`` that minimises the L1 distance between the subset sums and the
    ``answers`` (a linear program: variables ``x`` and one slack per answer)."""
    a = np.asarray(subsets, dtype=np.float64)
    b = np.asarray(answers, dtype=np.float64).reshape(-1)
    m, n = a.shape
    if b.size != m:
        raise DataError(f"{m} subsets but {b.size} answers")
    if not np.all(np.isfinite(b)):
        raise DataError("answers must be finite")
    # minimise Σ t  subject to  A x − t <= b  and  −A x − t <= −b
    cost = np.concatenate([np.zeros(n), np.ones(m)])
    eye = sparse.identity(m, format="csr")
    coeff = sparse.csr_matrix(a)
    upper = sparse.vstack([sparse.hstack([coeff, -eye]), sparse.hstack([-coeff, -eye])])
    bounds = [(0.0, 1.0)] * n + [(0.0, None)] * m
    result = optimize.linprog(
        cost, A_ub=upper, b_ub=np.concatenate([b, -b]), bounds=bounds, method="highs"
    )
    if not result.success:  # pragma: no cover - the program is always feasible and bounded
        raise DataError(f"the linear program failed: {result.message}")
    return np.asarray(result.x[:n], dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class Reconstruction:
    """The bits an attacker reconstructed, from the subsets it asked and the answers it got."""

    subsets: BoolMatrix
    answers: FloatArray
    bits: npt.NDArray[np.int64]

    def accuracy(self, truth: npt.ArrayLike) -> float:
        """The fraction of bits the attacker got right."""
        t = np.asarray(truth).reshape(-1)
        if t.size != self.bits.size:
            raise DataError(f"{t.size} true bits for {self.bits.size} reconstructed")
        return float(np.mean(self.bits == t))


def reconstruction_attack(
    ask: Callable[[Sequence[int]], float], *, people: int, queries: int, seed: int = 0
) -> Reconstruction:
    """Ask ``queries`` random subset sums through ``ask`` (which gets the ids in the subset and
    returns the released sum) and LP-decode the bits of ``people`` people."""
    subsets = random_subsets(people, queries, seed=seed)
    answers = np.array([float(ask(np.flatnonzero(row).tolist())) for row in subsets])
    x = lp_decode(subsets, answers)
    return Reconstruction(subsets, answers, (x > 0.5).astype(np.int64))


def epsilon_per_question(
    event_at: Callable[[float], Event],
    *,
    questions: int,
    epsilon: float,
    delta: float,
    tolerance: float = 1e-3,
) -> float:
    """The largest epsilon ``e`` per question (to ``tolerance``, relative) such that
    ``questions`` releases of ``event_at(e)`` compose to at most ``epsilon`` at ``delta`` in
    veil's tightest accountant (the one a ledger reports): how an analyst spends a whole budget on
    many questions. ``event_at`` is typically ``lambda e: releaser.explain(data, sql,
    epsilon=e).event``."""
    if not isinstance(questions, int) or questions < 1 or not epsilon > 0 or not 0 < delta < 1:
        raise ConfigurationError("need questions >= 1, epsilon > 0 and delta in (0, 1)")

    def total(e: float) -> float:
        return TightestAccountant().compose(event_at(e), questions).epsilon(delta)

    lo, hi = 0.0, epsilon  # one question at the whole budget costs at least the budget
    while hi - lo > tolerance * hi:
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if total(mid) <= epsilon else (lo, mid)
    if lo == 0.0:
        raise ConfigurationError(f"no epsilon per question fits {questions} into {epsilon}")
    return lo


def attack_release_engine(
    releaser: Releaser,
    data: Dataset,
    *,
    table: str,
    column: str,
    id_column: str,
    people: int,
    queries: int,
    epsilon: float,
    delta: float,
    seed: int = 0,
) -> tuple[Reconstruction, float]:
    """Dinur-Nissim through veil's release engine, as a careful analyst would run it: each of
    ``queries`` subset sums of ``column`` over the ids ``0 .. people-1`` of ``table`` is asked at
    the epsilon per question that spends a budget of ``epsilon`` at ``delta`` whole
    (:func:`epsilon_per_question`), and released by ``releaser``, whose ledger composes and
    charges every answer. Returns the reconstruction and the epsilon per question."""
    any_sum = subset_sum_sql(table, column, id_column, [0])
    per_question = epsilon_per_question(
        lambda e: releaser.explain(data, any_sum, epsilon=e).event,
        questions=queries,
        epsilon=epsilon,
        delta=delta,
    )

    def ask(ids: Sequence[int]) -> float:
        sql = subset_sum_sql(table, column, id_column, ids)
        return float(releaser.release(data, sql, epsilon=per_question).records[0]["value"])

    return reconstruction_attack(ask, people=people, queries=queries, seed=seed), per_question


def attack_secret_bits(
    bits: npt.ArrayLike, *, queries: int, epsilon: float, delta: float = 1e-5, seed: int = 0
) -> tuple[Reconstruction, float, float]:
    """:func:`attack_release_engine` against a table of ``bits`` (one person each, in an
    in-memory DuckDB table ``people(id, secret)``) released by a fresh :class:`Releaser` whose
    own ledger holds a budget of ``epsilon`` at ``delta``, with the engine's noise seeded by
    ``seed`` (reproducible, so not for a real release). Returns the reconstruction, the epsilon
    per question and the epsilon the ledger recorded."""
    import tempfile

    import duckdb

    from veil.analytics import Dataset, Releaser, TableSpec
    from veil.ledger import Ledger
    from veil.privacy.random import InsecureSeededRandom

    secret = np.asarray(bits).reshape(-1)
    con = duckdb.connect()
    try:
        con.execute("CREATE TABLE people (id INTEGER, secret INTEGER)")
        con.executemany(
            "INSERT INTO people VALUES (?, ?)", [(i, int(b)) for i, b in enumerate(secret)]
        )
        data = Dataset((con, "people"), TableSpec("people", bounds={"secret": (0, 1)}))
        with tempfile.TemporaryDirectory() as tmp, Ledger(f"{tmp}/ledger.sqlite") as ledger:
            ledger.set_budget("people/row", epsilon=epsilon, delta=delta)
            result, per_question = attack_release_engine(
                Releaser(ledger, rng=InsecureSeededRandom(seed)),
                data,
                table="people",
                column="secret",
                id_column="id",
                people=secret.size,
                queries=queries,
                epsilon=epsilon,
                delta=delta,
                seed=seed,
            )
            spent = ledger.status("people/row").spent_epsilon
    finally:
        con.close()
    return result, per_question, spent


def subset_sum_sql(table: str, column: str, id_column: str, ids: Sequence[int]) -> str:
    """``SELECT SUM(column) FROM table WHERE id_column IN (ids)`` (ids must be integers)."""
    if not all(isinstance(i, int | np.integer) for i in ids):
        raise ConfigurationError("ids must be integers")
    if not ids:
        return f"SELECT SUM({column}) FROM {table} WHERE {id_column} < 0"  # noqa: S608
    listed = ", ".join(str(int(i)) for i in ids)
    # the ids are integers; the names are the caller's own identifiers
    return f"SELECT SUM({column}) FROM {table} WHERE {id_column} IN ({listed})"  # noqa: S608


def differencing_attack(
    ask: Callable[[Sequence[int]], float], *, people: int, target: int
) -> float:
    """The tracker attack (Denning and Schlörer): the sum over everyone minus the sum over
    everyone but ``target`` is the target's value, however large both query sets are."""
    if not 0 <= target < people:
        raise ConfigurationError(f"target must be in [0, {people}), got {target}")
    everyone = list(range(people))
    return float(ask(everyone)) - float(ask([i for i in everyone if i != target]))


def averaging_attack(
    ask: Callable[[Sequence[int]], float], ids: Sequence[int], *, repeats: int
) -> float:
    """Ask the same question ``repeats`` times and average: fresh noise each time would shrink
    the error by ``√repeats``; an engine that returns the stored answer (and a ledger that
    charges every new question) leaves nothing to average."""
    if repeats < 1:
        raise ConfigurationError(f"repeats must be >= 1, got {repeats}")
    return float(np.mean([float(ask(ids)) for _ in range(repeats)]))
