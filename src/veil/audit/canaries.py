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
canary hook inside the trainer. :func:`mislabelled_canary_audit` does run the real trainers,
black-box: mislabelled canary records, scored by the final model's confidence in their wrong
labels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from veil.audit.dp import EpsilonAudit, one_run_audit
from veil.errors import ConfigurationError
from veil.federated.dp import DpAggregator, DpSgd, NoisySum
from veil.federated.messages import TrainConfig, TrainResult
from veil.federated.protocol import uniform
from veil.federated.strategies import RoundContext
from veil.federated.training import ClientData
from veil.privacy.accountants import TightestAccountant
from veil.privacy.random import RandomSource

__all__ = [
    "Aggregate",
    "dpfedavg_canary_audit",
    "dpsgd_canary_audit",
    "dpsgd_canary_scores",
    "mislabelled_canary_audit",
    "noisy_mean",
]

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


def mislabelled_canary_audit(
    make_model: Callable[[], nn.Module],
    data: ClientData,
    *,
    canaries: int,
    config: TrainConfig,
    delta: float,
    dpsgd: DpSgd | None = None,
    claimed_epsilon: float | None = None,
    rng: RandomSource | None = None,
    seed: int = 0,
    threads: int | None = 1,
) -> EpsilonAudit:
    """The black-box one-run audit of a real training run: ``canaries`` records of ``data`` get
    a wrong label and each is included with probability 1/2; the model trains once with veil's
    trainer (``train_dpsgd`` with ``dpsgd``, else ``train_clients``) on the other records plus
    the included canaries, and each canary's score is the trained model's confidence φ in its
    wrong label (:func:`veil.audit.mia.confidence_scores`).

    The claim is ``claimed_epsilon`` if given, else the tightest accountant's epsilon at
    ``delta`` for ``dpsgd.event`` over the training set actually used. A black-box audit sees
    only what the final model memorised, so it is far weaker than the white-box one (notes:
    a noise-scaling bug under strong clipping goes unseen); it does catch a run that is not
    private at all.
    """
    from veil.audit.mia import model_confidences
    from veil.federated.training import ParamLayout, train_clients, train_dpsgd

    n = len(data)
    if not isinstance(canaries, int) or not 10 <= canaries < n:
        raise ConfigurationError(f"canaries must be an integer in [10, {n}), got {canaries!r}")
    if dpsgd is not None and rng is None:
        raise ConfigurationError("a DP-SGD run needs rng= (its noise source)")
    gen = np.random.default_rng(seed)
    y = data.y.clone()
    classes = int(y.max()) + 1
    chosen = gen.permutation(n)[:canaries]
    shift = torch.from_numpy(gen.integers(1, max(classes, 2), canaries))
    y[chosen] = (y[chosen] + shift) % max(classes, 2)
    included = gen.random(canaries) < 0.5
    keep = np.ones(n, dtype=bool)
    keep[chosen[~included]] = False
    train = ClientData(data.x[torch.from_numpy(np.flatnonzero(keep))], y[keep])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = make_model()
    layout = ParamLayout(module)
    start = np.asarray(layout.vector(), dtype=np.float64)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        if dpsgd is None:
            generator = torch.Generator().manual_seed(seed)
            (outcome,) = train_clients(layout, start, [train], config, generator=generator)
        else:
            assert rng is not None
            outcome = train_dpsgd(layout, start, train, config, dpsgd, rng=rng)
    finally:
        torch.set_num_threads(before)
    probe = ClientData(data.x[torch.from_numpy(chosen)], y[chosen])
    scores = model_confidences(layout, start + outcome.update, probe)
    claim = claimed_epsilon
    if claim is None and dpsgd is not None:
        claim = (
            TightestAccountant()
            .compose(dpsgd.event(len(train), config.local_epochs))
            .epsilon(delta)
        )
    return one_run_audit(scores, included, claimed_epsilon=claim, delta=delta)


def dpfedavg_canary_audit(
    aggregator: DpAggregator,
    *,
    clients: int,
    sampling_probability: float,
    rounds: int,
    canaries: int,
    delta: float,
    rng: RandomSource,
    seed: int = 0,
) -> EpsilonAudit:
    """The one-run audit of client-level DP-FedAvg through a server-side aggregator's own
    ``aggregate`` (white-box canary clients).

    Of ``clients`` clients, ``canaries`` are canaries, each in the population with probability
    1/2; every round each client is Poisson-sampled at ``sampling_probability``, and a sampled
    canary sends the update ``C · e_i`` (its own coordinate, at the clipping norm; the other
    clients' updates do not touch the canary coordinates and are left out). The aggregator
    clips, noises and scales the sum as in a real round; a canary's score is the sum of the
    released rounds on its coordinate. The claim is the tightest accountant's epsilon for
    ``aggregator.round_event`` composed ``rounds`` times.
    """
    if not isinstance(canaries, int) or canaries < 10 or clients < canaries:
        raise ConfigurationError("need canaries >= 10 and clients >= canaries")
    if not 0 < sampling_probability <= 1 or rounds < 1:
        raise ConfigurationError("need a sampling probability in (0, 1] and rounds >= 1")
    included = np.random.default_rng(seed).random(canaries) < 0.5
    event = aggregator.round_event(sampling_probability=sampling_probability)
    claim = TightestAccountant().compose(event, rounds).epsilon(delta)
    moved = np.zeros(canaries)
    for r in range(rounds):
        sampled = np.flatnonzero(included & (uniform(rng, canaries) < sampling_probability))
        results = []
        for i in sampled:
            update = np.zeros(canaries)
            update[i] = aggregator.clip_norm
            results.append(TrainResult(r, f"canary-{i}", update, 1))
        context = RoundContext(
            round=r,
            dimension=canaries,
            population=clients,
            sampled=len(results),
            sampling_probability=sampling_probability,
            rng=rng,
        )
        moved += aggregator.aggregate(results, context)
    return one_run_audit(moved, included, claimed_epsilon=claim, delta=delta)
