"""One-run audit of DP-SGD's release path with white-box Dirac gradient canaries."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from veil.audit.canaries import (
    dpfedavg_canary_audit,
    dpsgd_canary_audit,
    dpsgd_canary_scores,
    noisy_mean,
)
from veil.errors import ConfigurationError
from veil.federated import DpAggregator, DpSgd, NoisySum, RoundContext, TrainResult
from veil.privacy import InsecureSeededRandom, RandomSource

DELTA = 1e-5
RECORDS, BATCH, EPOCHS, CANARIES = 1000, 200, 20, 1000  # q = 0.2, 100 steps

# Noise multipliers whose claims (computed below by veil's accountant) are about 1 and 8.
Z_EPS1, Z_EPS8 = 7.62, 1.444


def noise_scaled_for_the_mean(
    total: np.ndarray, noise: NoisySum, batch_size: int, rng: RandomSource
) -> np.ndarray:
    """The bug: noise calibrated to the sensitivity of the averaged gradient (C / B) added to
    the summed gradient, so B times too little noise."""
    wrong = NoisySum(
        clip_norm=noise.clip_norm / batch_size,
        noise_multiplier=noise.noise_multiplier,
        dimension=noise.dimension,
    )
    return wrong.release(total, rng) / batch_size


@pytest.mark.parametrize(("z", "low", "high"), [(Z_EPS1, 0.9, 1.1), (Z_EPS8, 7.0, 9.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_dpsgd_with_white_box_canaries_never_above_the_claim(
    z: float, low: float, high: float, seed: int
) -> None:
    dpsgd = DpSgd(noise_multiplier=z, clip_norm=1.0, batch_size=BATCH)
    audit = dpsgd_canary_audit(
        dpsgd,
        records=RECORDS,
        epochs=EPOCHS,
        canaries=CANARIES,
        delta=DELTA,
        rng=InsecureSeededRandom(seed),
        seed=seed,
    )
    assert audit.claimed_epsilon is not None
    assert low <= audit.claimed_epsilon <= high
    assert audit.epsilon_lower <= audit.claimed_epsilon
    if z == Z_EPS8:
        assert audit.epsilon_lower > 1.0  # the canaries do see the weaker noise


def test_noise_scaled_for_the_averaged_gradient_is_caught() -> None:
    dpsgd = DpSgd(noise_multiplier=Z_EPS1, clip_norm=1.0, batch_size=BATCH)
    audit = dpsgd_canary_audit(
        dpsgd,
        records=RECORDS,
        epochs=EPOCHS,
        canaries=CANARIES,
        delta=DELTA,
        rng=InsecureSeededRandom(9),
        seed=9,
        aggregate=noise_scaled_for_the_mean,
    )
    assert audit.claimed_epsilon is not None
    assert audit.claimed_epsilon <= 1.1
    assert audit.exceeds_claim


def test_included_canaries_move_by_the_expected_amount_without_noise() -> None:
    dpsgd = DpSgd(noise_multiplier=1.0, clip_norm=1.0, batch_size=BATCH)

    def no_noise(total: np.ndarray, noise: NoisySum, b: int, rng: RandomSource) -> np.ndarray:
        return total / b

    scores, included = dpsgd_canary_scores(
        dpsgd,
        records=RECORDS,
        epochs=EPOCHS,
        canaries=CANARIES,
        rng=InsecureSeededRandom(0),
        aggregate=no_noise,
    )
    assert np.all(scores[~included] == 0)
    # each included canary is sampled Binomial(100, 0.2) times, each time moving C / B
    assert np.mean(scores[included]) == pytest.approx(100 * 0.2 / BATCH, rel=0.05)
    assert (
        noisy_mean(
            np.ones(CANARIES),
            NoisySum(clip_norm=1.0, noise_multiplier=0.0, dimension=CANARIES),
            4,
            InsecureSeededRandom(0),
        )[0]
        == 0.25
    )


def test_canary_arguments_are_checked() -> None:
    dpsgd = DpSgd(noise_multiplier=1.0)
    with pytest.raises(ConfigurationError, match="canaries"):
        dpsgd_canary_scores(dpsgd, records=100, epochs=1, canaries=5, rng=InsecureSeededRandom(0))
    with pytest.raises(ConfigurationError, match="records"):
        dpsgd_canary_scores(dpsgd, records=50, epochs=1, canaries=100, rng=InsecureSeededRandom(0))


def test_black_box_mislabelled_canaries_through_the_real_trainers() -> None:
    from veil.audit.canaries import mislabelled_canary_audit
    from veil.federated import ClientData, TrainConfig, data, models
    from veil.privacy import dpsgd_noise_multiplier

    digits = data.digits(clients=1, alpha=None, seed=0)
    records = ClientData(digits.x, digits.y)

    def mlp() -> models.Mlp:
        return models.Mlp(64, 10, (128,))

    # the broken variant: a non-private run presented with a claim of epsilon 1
    plain = mislabelled_canary_audit(
        mlp,
        records,
        canaries=500,
        config=TrainConfig(local_epochs=300, learning_rate=1.0),
        delta=DELTA,
        claimed_epsilon=1.0,
    )
    assert plain.epsilon_lower >= 2.5
    assert plain.exceeds_claim
    # DP-SGD at epsilon 1 (expected batch a fifth of the records, 20 epochs)
    n = len(records) - 250
    shape = DpSgd(noise_multiplier=1.0, batch_size=n // 5)
    z = dpsgd_noise_multiplier(
        epsilon=1.0,
        delta=DELTA,
        sampling_probability=shape.sampling_probability(n),
        steps=shape.steps(n, 20),
    )
    private = mislabelled_canary_audit(
        mlp,
        records,
        canaries=500,
        config=TrainConfig(local_epochs=20, learning_rate=0.5),
        delta=DELTA,
        dpsgd=DpSgd(noise_multiplier=z, batch_size=n // 5),
        rng=InsecureSeededRandom(0),
    )
    assert private.claimed_epsilon is not None
    assert 0.9 <= private.claimed_epsilon <= 1.1
    assert private.epsilon_lower <= private.claimed_epsilon


class NoiseForTheMean(DpAggregator):
    """The bug, server side: noise calibrated to the averaged update's sensitivity."""

    def aggregate(self, results: Sequence[TrainResult], context: RoundContext) -> np.ndarray:
        expected = context.sampling_probability * context.population
        total = np.zeros(context.dimension)
        if results:
            total = np.stack([np.asarray(r.update) for r in results]).sum(axis=0)
        noise = NoisySum(
            clip_norm=self.clip_norm / expected,
            noise_multiplier=self.noise_multiplier,
            dimension=context.dimension,
        )
        return noise.release(total, context.rng) / expected


@pytest.mark.parametrize(("z", "low", "high"), [(Z_EPS1, 0.9, 1.1), (Z_EPS8, 7.0, 9.0)])
def test_dpfedavg_through_the_real_aggregator_never_above_the_claim(
    z: float, low: float, high: float
) -> None:
    audit = dpfedavg_canary_audit(
        DpAggregator(noise_multiplier=z, clip_norm=1.0),
        clients=1000,
        sampling_probability=0.2,
        rounds=100,
        canaries=CANARIES,
        delta=DELTA,
        rng=InsecureSeededRandom(0),
    )
    assert audit.claimed_epsilon is not None
    assert low <= audit.claimed_epsilon <= high
    assert audit.epsilon_lower <= audit.claimed_epsilon


def test_dpfedavg_noise_scaled_for_the_mean_is_caught() -> None:
    audit = dpfedavg_canary_audit(
        NoiseForTheMean(noise_multiplier=Z_EPS1, clip_norm=1.0),
        clients=1000,
        sampling_probability=0.2,
        rounds=100,
        canaries=CANARIES,
        delta=DELTA,
        rng=InsecureSeededRandom(9),
        seed=9,
    )
    assert audit.exceeds_claim
