"""White-box gradient canaries for auditing DP-SGD in one run.

The strongest adversary of Nasr et al. (2021) inserts a *gradient* canary: a record whose
per-sample gradient is a chosen vector of norm ``C`` (the clipping norm), so that nothing about the
model or the data softens its trace. Here each of ``m`` canaries owns one private coordinate of
the parameter vector ("Dirac" canaries: canary ``i``'s gradient is ``C · e_i`` and no real
record's gradient touches those coordinates), and is included in the training set independently
with probability 1/2. After the run the attacker reads, for each canary, how far its coordinate
moved against the gradient (the sum of the noisy released steps on it); included canaries have
moved by about ``C · q · T / B`` more. :func:`veil.audit.one_run_audit` turns those scores into a
lower bound on epsilon to set next to the accountant's claim for the run.

:func:`dpsgd_canary_audit` runs DP-SGD's release path with veil's own pieces, step for step as
:func:`veil.federated.train_dpsgd` does: Poisson sampling at ``q = B/n`` from veil's
sampler, the clipped sum, :class:`veil.federated.NoisySum` (exact discrete Gaussian noise of
``z · C``), division by the public batch size ``B``; the claim comes from ``DpSgd.event`` through
veil's tightest accountant. Because the canary coordinates are disjoint from the model's, the
real records' gradients drop out of the scores and are not simulated. ``aggregate`` is the one
step that turns a clipped sum into the released update; a test passes a broken one (noise added
to the averaged instead of the summed gradient) to show that the audit catches it.

This audits the noise, sampling and accounting of DP-SGD, not the rest of a training loop (a
clipping step skipped in a model's backward pass, say); auditing ``train_dpsgd`` itself needs a
canary hook inside the trainer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from veil.audit.dp import EpsilonAudit, one_run_audit
from veil.errors import ConfigurationError
from veil.federated.dp import DpSgd, NoisySum
from veil.federated.protocol import uniform
from veil.privacy.accountants import TightestAccountant
from veil.privacy.random import RandomSource

__all__ = ["Aggregate", "dpsgd_canary_audit", "dpsgd_canary_scores", "noisy_mean"]

Vector = npt.NDArray[np.float64]
Aggregate = Callable[[Vector, NoisySum, int, RandomSource], Vector]


def noisy_mean(total: Vector, noise: NoisySum, batch_size: int, rng: RandomSource) -> Vector:
    """DP-SGD's released step: noise on the clipped *sum*, then division by ``B``."""
    return noise.release(total, rng) / batch_size


def dpsgd_canary_scores(
    dpsgd: DpSgd,
    *,
    records: int,
    epochs: int,
    canaries: int,
    rng: RandomSource,
    seed: int = 0,
    aggregate: Aggregate = noisy_mean,
) -> tuple[Vector, npt.NDArray[np.bool_]]:
    """One DP-SGD run over a training set of ``records`` records (the included canaries among
    them) for ``epochs`` epochs; returns each canary's score and whether it was included."""
    if not isinstance(canaries, int) or canaries < 10:
        raise ConfigurationError(f"canaries must be an integer >= 10, got {canaries!r}")
    if not isinstance(records, int) or records < canaries:
        raise ConfigurationError(
            f"records (the training set, canaries included) must be at least {canaries}"
        )
    included = np.random.default_rng(seed).random(canaries) < 0.5
    q = dpsgd.sampling_probability(records)
    steps = dpsgd.steps(records, epochs)
    noise = NoisySum(
        clip_norm=dpsgd.clip_norm, noise_multiplier=dpsgd.noise_multiplier, dimension=canaries
    )
    moved = np.zeros(canaries)
    for _ in range(steps):
        sampled = included & (uniform(rng, canaries) < q)
        total = np.where(sampled, dpsgd.clip_norm, 0.0)  # each sampled canary adds C · e_i
        moved += aggregate(total, noise, dpsgd.batch_size, rng)
    return moved, included


def dpsgd_canary_audit(
    dpsgd: DpSgd,
    *,
    records: int,
    epochs: int,
    canaries: int,
    delta: float,
    rng: RandomSource,
    seed: int = 0,
    aggregate: Aggregate = noisy_mean,
    significance: float = 0.05,
) -> EpsilonAudit:
    """The one-run audit of a DP-SGD run with white-box Dirac canaries (module docstring); the
    claim is the accountant's epsilon at ``delta`` for ``dpsgd.event(records, epochs)``."""
    claim = TightestAccountant().compose(dpsgd.event(records, epochs)).epsilon(delta)
    scores, included = dpsgd_canary_scores(
        dpsgd,
        records=records,
        epochs=epochs,
        canaries=canaries,
        rng=rng,
        seed=seed,
        aggregate=aggregate,
    )
    return one_run_audit(
        scores, included, claimed_epsilon=claim, delta=delta, significance=significance
    )
