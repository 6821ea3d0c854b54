"""Choosing the neighbour graph and the threshold of a secure aggregation round.

Two things can go wrong in a round, and both are made unlikely by the choice of the graph's
degree ``k`` and the Shamir threshold ``t`` for ``n`` clients of which each drops out
independently with probability at most ``dropout``:

* *privacy*: a server that learns ``t`` shares of a client's secret learns the secret. Honest
  clients never reveal both kinds of share for one peer, and ``t`` is a strict majority of
  every neighbourhood (``t > (k + 1) / 2``, the client included), so no two disjoint groups
  of neighbours can each reach it; and the survivors must stay one connected piece of the
  graph, or the server could sum a piece on its own (the clients check it and abort);
* *liveness*: the round aborts when a client's neighbourhood (itself and its ``k``
  neighbours) keeps fewer than ``t`` survivors, or when the survivors fall apart.

For the complete graph (plain SecAgg, Bonawitz et al. 2017) ``k = n - 1`` and ``t`` is the
majority ``⌊n/2⌋ + 1``. For SecAgg+ (Bell et al., CCS 2020) :func:`plan_round` takes the
smallest even ``k`` for which, by a union bound over the ``n`` clients, the probability that
some neighbourhood keeps fewer than ``t`` survivors is at most ``failure``, and so is the
probability that ``k / 2`` clients in a row of the graph's cycle all drop (the only way a
Harary graph falls apart). ``k`` grows like ``log n``, so a client's work no longer grows
with ``n``. When no ``k < n - 1`` is good enough, the plan is the complete graph.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

from scipy.stats import binom

from veil.errors import ConfigurationError

__all__ = ["RoundPlan", "abort_probability", "plan_round", "survivors_quantile"]

Graph = Literal["secagg", "secagg+"]


@dataclasses.dataclass(frozen=True)
class RoundPlan:
    """The graph and threshold of one round of ``clients`` clients."""

    graph: Graph
    clients: int
    degree: int
    """Neighbours of each client (``clients - 1`` for the complete graph)."""
    threshold: int
    abort_probability: float
    """An upper bound on the chance that dropouts at rate ``dropout`` abort the round."""
    min_survivors: int = 0
    """The fewest survivors a round goes on with (at least ``threshold``): the ``failure``
    quantile of the survivors' number, for noise that clients calibrate to it."""

    @property
    def complete(self) -> bool:
        return self.degree == self.clients - 1


def _binomial_below(trials: int, p_success: float, below: int) -> float:
    """P(Binomial(trials, p_success) < below)."""
    if below <= 0:
        return 0.0
    return float(min(1.0, binom.cdf(below - 1, trials, p_success)))


def abort_probability(clients: int, degree: int, threshold: int, dropout: float) -> float:
    """Union bound on the chance that a round aborts when each client drops independently with
    probability ``dropout``: some neighbourhood keeps fewer than ``threshold`` survivors, or
    (for a sparse Harary graph) ``degree / 2`` consecutive clients of its cycle all drop."""
    if degree >= clients - 1:
        return _binomial_below(clients, 1.0 - dropout, threshold)
    neighbourhood = clients * _binomial_below(degree + 1, 1.0 - dropout, threshold)
    split = clients * dropout ** (degree // 2)
    return min(1.0, neighbourhood + split)


def _least_threshold(size: int, active: bool) -> int:
    """A strict majority of ``size`` (semi-honest), or more than two thirds (active); never
    below 3, since the sum of two inputs tells each of them the other."""
    return max(3, 2 * size // 3 + 1 if active else size // 2 + 1)


def survivors_quantile(clients: int, dropout: float, failure: float) -> int:
    """The largest ``m`` with ``P(Binomial(clients, 1 - dropout) < m) <= failure``."""
    return int(binom.ppf(failure, clients, 1.0 - dropout))


@functools.lru_cache(maxsize=256)
def plan_round(
    clients: int,
    *,
    graph: Graph = "secagg+",
    dropout: float = 0.1,
    failure: float = 2.0**-20,
    active: bool = False,
) -> RoundPlan:
    """The degree and threshold for ``clients`` clients (see the module docstring);
    ``active=True`` raises the threshold above two thirds of each neighbourhood, as the
    active-adversary mode needs (Bonawitz et al. 2017, §6).

    Raises:
        ConfigurationError: for fewer than 3 clients (a sum of two reveals each input to the
            other), an unknown graph, or a dropout rate or failure probability outside (0, 1).
    """
    if not isinstance(clients, int) or clients < 3:
        raise ConfigurationError(
            f"secure aggregation needs at least 3 clients in a round, got {clients!r}: the sum "
            "of two inputs tells each client the other's"
        )
    if graph not in ("secagg", "secagg+"):
        raise ConfigurationError(f"graph must be 'secagg' or 'secagg+', got {graph!r}")
    if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ConfigurationError(f"dropout must be in [0, 1), got {dropout!r}")
    if not isinstance(failure, int | float) or not 0 < failure < 1:
        raise ConfigurationError(f"failure must be in (0, 1), got {failure!r}")

    def _floor(threshold: int) -> int:
        return max(threshold, survivors_quantile(clients, dropout, failure))

    if graph == "secagg+":
        for degree in range(4, clients - 1, 2):
            threshold = _least_threshold(degree + 1, active)
            bound = abort_probability(clients, degree, threshold, dropout)
            if bound <= failure:
                return RoundPlan("secagg+", clients, degree, threshold, bound, _floor(threshold))
    threshold = min(clients, _least_threshold(clients, active))
    bound = abort_probability(clients, clients - 1, threshold, dropout)
    return RoundPlan(graph, clients, clients - 1, threshold, bound, _floor(threshold))
