"""One-run audits of veil's DP-SGD trainer (white-box Dirac gradient canaries through
``train_dpsgd``'s audit hook) and of client-level DP-FedAvg's aggregator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import veil.federated.dp as federated_dp
import veil.federated.training as training
from veil.audit.canaries import (
    dpfedavg_canary_audit,
    dpsgd_canary_audit,
    dpsgd_canary_scores,
)
from veil.errors import ConfigurationError
from veil.federated import ClientData, DpAggregator, DpSgd, NoisySum, TrainConfig, train_dpsgd
from veil.federated.training import ParamLayout
from veil.privacy import InsecureSeededRandom

DELTA = 1e-5
RECORDS, BATCH, EPOCHS, CANARIES = 1000, 200, 20, 1000  # q = 0.2, 100 steps

# Noise multipliers whose claims (computed below by veil's accountant) are about 1 and 8.
Z_EPS1, Z_EPS8 = 7.62, 1.444


def records(n: int = RECORDS, seed: int = 0) -> ClientData:
    """A small real classification task (two Gaussian classes in 8 dimensions)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 8, generator=gen) + y[:, None].float()
    return ClientData(x, y)


def linear() -> nn.Module:
    return nn.Linear(8, 2)


def noise_for_the_mean(batch: float) -> type[NoisySum]:
    """The bug, injected into veil's own code: noise calibrated to the sensitivity of the
    averaged gradient (C / B) and added to the summed gradient, so B times too little."""

    class MeanCalibrated(NoisySum):
        def __init__(self, *, clip_norm: float, noise_multiplier: float, dimension: int) -> None:
            super().__init__(
                clip_norm=clip_norm / batch, noise_multiplier=noise_multiplier, dimension=dimension
            )

    return MeanCalibrated


@pytest.mark.parametrize(("z", "low", "high"), [(Z_EPS1, 0.9, 1.1), (Z_EPS8, 7.0, 9.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_train_dpsgd_with_white_box_canaries_never_above_the_claim(
    z: float, low: float, high: float, seed: int
) -> None:
    dpsgd = DpSgd(noise_multiplier=z, clip_norm=1.0, batch_size=BATCH)
    audit = dpsgd_canary_audit(
        dpsgd,
        records(),
        linear,
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


def test_train_dpsgd_noising_the_averaged_gradient_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the same audit as above, of the real trainer with its noise broken
    monkeypatch.setattr(training, "NoisySum", noise_for_the_mean(BATCH))
    dpsgd = DpSgd(noise_multiplier=Z_EPS1, clip_norm=1.0, batch_size=BATCH)
    audit = dpsgd_canary_audit(
        dpsgd,
        records(),
        linear,
        epochs=EPOCHS,
        canaries=CANARIES,
        delta=DELTA,
        rng=InsecureSeededRandom(9),
        seed=9,
    )
    assert audit.claimed_epsilon is not None
    assert audit.claimed_epsilon <= 1.1
    assert audit.exceeds_claim


class Exact(NoisySum):
    """The non-private control: the trainer's sum rounded to its grid, no noise."""

    def __init__(self, *, clip_norm: float, noise_multiplier: float, dimension: int) -> None:
        super().__init__(clip_norm=clip_norm, noise_multiplier=0.0, dimension=dimension)


def test_included_canaries_add_the_expected_amount_without_noise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(training, "NoisySum", Exact)
    dpsgd = DpSgd(noise_multiplier=1.0, clip_norm=1.0, batch_size=BATCH)
    scores, included = dpsgd_canary_scores(
        dpsgd, records(), linear, epochs=EPOCHS, canaries=CANARIES, rng=InsecureSeededRandom(0)
    )
    # the real records never touch the canary coordinates
    assert np.all(np.abs(scores[~included]) < 1e-6)
    # each included canary is sampled Binomial(100, 0.2) times, each time adding C
    assert np.mean(scores[included]) == pytest.approx(100 * 0.2, rel=0.05)


def test_the_hook_costs_nothing_when_unused_and_sees_the_released_sum() -> None:
    data = records(200)
    torch.manual_seed(0)
    layout = ParamLayout(linear())
    start = layout.vector()
    config = TrainConfig(local_epochs=2, learning_rate=0.5)
    dpsgd = DpSgd(noise_multiplier=1.0, clip_norm=1.0, batch_size=50)
    # a hook keeps the noise in turn (it may read the source), so compare with that mode
    plain = train_dpsgd(
        layout, start, data, config, dpsgd, rng=InsecureSeededRandom(3), draw_noise_ahead=False
    )
    seen: list[np.ndarray] = []

    def zero(step: int, q: float) -> np.ndarray:
        assert q == pytest.approx(50 / 200)
        return np.zeros(layout.size)

    hooked = train_dpsgd(
        layout,
        start,
        data,
        config,
        dpsgd,
        rng=InsecureSeededRandom(3),
        add_before_noise=zero,
        observe_noisy_sum=lambda step, s: seen.append(np.array(s)),
    )
    # adding zeros and watching changes nothing, and the steps are the released sums / B
    np.testing.assert_array_equal(plain.update, hooked.update)
    assert len(seen) == dpsgd.steps(200, 2)
    np.testing.assert_allclose(
        -config.learning_rate * np.sum(seen, axis=0) / 50, hooked.update, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ConfigurationError, match="add_before_noise"):
        train_dpsgd(
            layout,
            start,
            data,
            config,
            dpsgd,
            rng=InsecureSeededRandom(3),
            add_before_noise=lambda step, q: np.zeros(3),
        )


def test_canary_arguments_are_checked() -> None:
    dpsgd = DpSgd(noise_multiplier=1.0)
    with pytest.raises(ConfigurationError, match="canaries"):
        dpsgd_canary_scores(
            dpsgd, records(100), linear, epochs=1, canaries=5, rng=InsecureSeededRandom(0)
        )


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


def test_dpfedavg_noise_scaled_for_the_mean_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # the real aggregator with its noise calibrated to the mean of the expected 200 clients
    monkeypatch.setattr(federated_dp, "NoisySum", noise_for_the_mean(0.2 * 1000))
    audit = dpfedavg_canary_audit(
        DpAggregator(noise_multiplier=Z_EPS1, clip_norm=1.0),
        clients=1000,
        sampling_probability=0.2,
        rounds=100,
        canaries=CANARIES,
        delta=DELTA,
        rng=InsecureSeededRandom(9),
        seed=9,
    )
    assert audit.exceeds_claim
