"""White-box gradient canaries for auditing DP-SGD in one run.

The strongest adversary of Nasr et al. (2021) inserts a *gradient* canary: a record whose
per-sample gradient is a chosen vector of norm ``C`` (the clipping norm), so that nothing about the
model or the data softens its trace. Here each of ``m`` canaries owns one private coordinate of
the parameter vector ("Dirac" canaries: canary ``i``'s gradient is ``C · e_i`` and no real
record's gradient touches those coordinates), and is included in the training set independently
with probability 1/2. The attacker sees every released noisy sum and scores each canary by the
sum of those on its coordinate; included canaries add about ``C · q · T`` to it.
:func:`veil.audit.one_run_audit` turns the scores into a lower bound on epsilon to set next to
the accountant's claim for the run.

:func:`dpsgd_canary_audit` runs veil's own trainer, :func:`veil.federated.train_dpsgd`, on a real
model and real records, through the trainer's audit hook: the model gets ``m`` extra parameters
that its output does not depend on (the canary coordinates); at each step the hook adds the
gradients of the included canaries, each Poisson-sampled at the trainer's own ``q = B/n``, to the
clipped sum of the sampled records before the trainer's noise (:class:`veil.federated.NoisySum`,
exact discrete Gaussian noise of ``z · C``), and reads the released noisy sum. The sampling of the
records, their clipping, the noise and the division by ``B`` are the trainer's; the claim is the
tightest accountant's epsilon for ``DpSgd.event`` over the ``n`` records. A test breaks the
trainer's noise (calibrated to the averaged instead of the summed gradient) and the audit
refutes the claim. :func:`mislabelled_canary_audit` runs the real trainers black-box:
mislabelled canary records, scored by the final model's confidence in their wrong labels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from veil.audit.dp import EpsilonAudit, one_run_audit
from veil.errors import ConfigurationError
from veil.federated.dp import DpAggregator, DpSgd
from veil.federated.messages import TrainConfig, TrainResult
from veil.federated.protocol import uniform
from veil.federated.strategies import RoundContext
from veil.federated.training import ClientData, ParamLayout, train_dpsgd
from veil.privacy.accountants import TightestAccountant
from veil.privacy.random import RandomSource

__all__ = [
    "dpfedavg_canary_audit",
    "dpsgd_canary_audit",
    "dpsgd_canary_scores",
    "mislabelled_canary_audit",
]

Vector = npt.NDArray[np.float64]


class _WithCanaryCoordinates(nn.Module):
    """``model`` plus ``canaries`` parameters that its output does not depend on: every real
    record's gradient on them is exactly 0, so they belong to the canaries alone."""

    def __init__(self, model: nn.Module, canaries: int) -> None:
        super().__init__()
        self.model = model
        self.canary = nn.Parameter(torch.zeros(canaries))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out + 0.0 * self.canary.sum()


def dpsgd_canary_scores(
    dpsgd: DpSgd,
    data: ClientData,
    make_model: Callable[[], nn.Module],
    *,
    epochs: int,
    canaries: int,
    rng: RandomSource,
    seed: int = 0,
    learning_rate: float = 0.1,
) -> tuple[Vector, npt.NDArray[np.bool_]]:
    """One run of :func:`veil.federated.train_dpsgd` on ``data`` for ``epochs`` epochs with
    ``canaries`` white-box canaries (module docstring); returns each canary's score and whether
    it was included. ``make_model()`` (called under ``torch.manual_seed(seed)``) builds the
    model; ``seed`` also draws the inclusions, and ``rng`` is the trainer's noise and sampling
    source (and the canaries' sampling)."""
    if not isinstance(canaries, int) or canaries < 10:
        raise ConfigurationError(f"canaries must be an integer >= 10, got {canaries!r}")
    if len(data) < 1:
        raise ConfigurationError("the audit trains on at least one real record")
    included = np.random.default_rng(seed).random(canaries) < 0.5
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = _WithCanaryCoordinates(make_model(), canaries)
    layout = ParamLayout(module)
    where = layout.names.index("canary")
    offset = sum(layout.sizes[:where])
    coords = slice(offset, offset + canaries)
    start = np.asarray(layout.vector(), dtype=np.float64)
    scores = np.zeros(canaries)

    def add_canaries(step: int, q: float) -> Vector:
        sampled = included & (uniform(rng, canaries) < q)
        extra = np.zeros(layout.size)
        extra[coords] = np.where(sampled, dpsgd.clip_norm, 0.0)  # C · e_i, within the clip
        return extra

    def observe(step: int, noisy_sum: Vector) -> None:
        scores[:] += noisy_sum[coords]

    config = TrainConfig(local_epochs=epochs, learning_rate=learning_rate)
    train_dpsgd(
        layout,
        start,
        data,
        config,
        dpsgd,
        rng=rng,
        add_before_noise=add_canaries,
        observe_noisy_sum=observe,
    )
    return scores, included


def dpsgd_canary_audit(
    dpsgd: DpSgd,
    data: ClientData,
    make_model: Callable[[], nn.Module],
    *,
    epochs: int,
    canaries: int,
    delta: float,
    rng: RandomSource,
    seed: int = 0,
    learning_rate: float = 0.1,
    significance: float = 0.05,
) -> EpsilonAudit:
    """The one-run audit of :func:`veil.federated.train_dpsgd` with white-box Dirac canaries
    (module docstring); the claim is the tightest accountant's epsilon at ``delta`` for
    ``dpsgd.event(len(data), epochs)``."""
    claim = TightestAccountant().compose(dpsgd.event(len(data), epochs)).epsilon(delta)
    scores, included = dpsgd_canary_scores(
        dpsgd,
        data,
        make_model,
        epochs=epochs,
        canaries=canaries,
        rng=rng,
        seed=seed,
        learning_rate=learning_rate,
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
    from veil.federated.training import train_clients

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
