"""Membership inference on digits: the attacks find an overfit model's members, and under
DP-SGD at epsilon 1 they stay near chance and under the DP limit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from veil.audit import Roc, accountant_tpr_limit, dp_tpr_limit
from veil.audit.mia import (
    Attack,
    MembershipAudit,
    ShadowModels,
    confidence_scores,
    lira_offline,
    lira_online,
    membership_audit,
    rmia,
    train_shadow_models,
)
from veil.errors import ConfigurationError, DataError
from veil.federated import ClientData, DpSgd, TrainConfig, data, models
from veil.privacy import Accountant, InsecureSeededRandom, PldAccountant, dpsgd_noise_multiplier

DELTA = 1e-5


@pytest.fixture(scope="module")
def digits() -> data.FederatedData:
    return data.digits(clients=1, alpha=None, seed=0)


def mlp() -> torch.nn.Module:
    return models.Mlp(64, 10, (128,))


@pytest.fixture(scope="module")
def overfit(digits: data.FederatedData) -> MembershipAudit:
    """8 non-private MLPs (64-128-10), each trained to fit 200 of 400 digits (full-batch GD,
    500 epochs), every one the target in turn."""
    population = ClientData(digits.x[:400], digits.y[:400])
    shadows = train_shadow_models(
        mlp,
        population,
        models=8,
        config=TrainConfig(local_epochs=500, learning_rate=1.0),
        holdout=digits.test,
        seed=0,
        threads=1,
    )
    return membership_audit(shadows)


@pytest.fixture(scope="module")
def private(digits: data.FederatedData) -> tuple[MembershipAudit, float, Accountant]:
    """8 MLPs trained with DP-SGD at epsilon 1 (delta 1e-5) on halves of 1,347 digits."""
    population = ClientData(digits.x, digits.y)
    members = len(population) // 2
    batch = members // 5
    shape = DpSgd(noise_multiplier=1.0, batch_size=batch)
    epochs = 20
    z = dpsgd_noise_multiplier(
        epsilon=1.0,
        delta=DELTA,
        sampling_probability=shape.sampling_probability(members),
        steps=shape.steps(members, epochs),
    )
    dpsgd = DpSgd(noise_multiplier=z, clip_norm=1.0, batch_size=batch)
    shadows = train_shadow_models(
        mlp,
        population,
        models=8,
        config=TrainConfig(local_epochs=epochs, learning_rate=0.5),
        holdout=digits.test,
        dpsgd=dpsgd,
        rng=InsecureSeededRandom(0),
        seed=0,
        threads=1,
    )
    accountant = PldAccountant().compose(dpsgd.event(members, epochs))
    return membership_audit(shadows), z, accountant


def test_overfit_mlp_is_attackable(overfit: MembershipAudit) -> None:
    loss = overfit.rocs[Attack.LOSS]
    online = overfit.rocs[Attack.LIRA_ONLINE]
    offline = overfit.rocs[Attack.LIRA_OFFLINE]
    assert overfit.mean_accuracy > 0.85  # a useful model, not a broken one
    assert loss.auc >= 0.6
    assert online.auc >= 0.75
    assert offline.auc > loss.auc
    assert overfit.rocs[Attack.RMIA].auc >= 0.7  # RMIA, with the held-out digits as z
    assert online.tpr_at(0.01).tpr >= 3 * loss.tpr_at(0.01).tpr
    # pooled over 8 targets: 1,600 non-members, so 1% FPR is 16 false positives
    assert overfit.rocs[Attack.LOSS].negatives == 1600


def test_the_overfit_model_breaks_an_epsilon_one_claim(overfit: MembershipAudit) -> None:
    # the same check that a DP-SGD model must pass fails for the non-private one
    violations = overfit.dp_bound_violations(epsilon=1.0, delta=DELTA)
    assert {v[0] for v in violations} >= {Attack.LIRA_ONLINE, Attack.LIRA_OFFLINE}


def test_dpsgd_at_epsilon_one_stays_near_chance(
    private: tuple[MembershipAudit, float, Accountant],
) -> None:
    audit, z, _ = private
    assert z > 5  # the noise the accountant asked for
    assert audit.mean_accuracy > 0.6
    for attack, roc in audit.rocs.items():
        assert roc.auc <= 0.56, attack
        point = roc.tpr_at(0.01)
        assert point.tpr_lower < math.exp(1.0) * 0.01 + DELTA, attack
    assert audit.dp_bound_violations(epsilon=1.0, delta=DELTA) == []


def test_no_attack_beats_the_accountants_trade_off_curve(
    private: tuple[MembershipAudit, float, Accountant], overfit: MembershipAudit
) -> None:
    audit, _, accountant = private
    assert accountant.epsilon(DELTA) == pytest.approx(1.0, abs=0.01)

    curve = accountant_tpr_limit(accountant)

    def limit(fpr: float) -> float:
        return float(curve(fpr))

    # the curve is tighter than the (epsilon, delta) lines it comes from
    assert limit(0.01) < float(dp_tpr_limit(0.01, epsilon=1.0, delta=DELTA))
    assert audit.limit_violations(limit) == []
    # the non-private models, held to the same curve, break it
    assert {v[0] for v in overfit.limit_violations(limit)} >= {Attack.LIRA_ONLINE}


def test_confidence_does_not_saturate() -> None:
    # float32 logits whose loss rounds to exactly 0: the logit-scaled confidence still ranks them
    logits = torch.tensor([[40.0, 0.0, 0.0], [60.0, 0.0, 0.0], [80.0, 0.0, 0.0]])
    labels = np.array([0, 0, 0])
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels), reduction="none")
    assert torch.all(loss == 0)
    phi = confidence_scores(logits, labels)
    assert phi[0] < phi[1] < phi[2]
    assert phi[0] == pytest.approx(40.0 - math.log(2.0))
    assert Roc.from_scores(phi[2:], phi[:2]).auc == 1.0


def test_confidence_of_a_binary_model() -> None:
    phi = confidence_scores(torch.tensor([[2.0], [2.0]]), np.array([1, 0]))
    assert phi.tolist() == [2.0, -2.0]
    with pytest.raises(DataError, match="labels"):
        confidence_scores(torch.zeros(2, 3), np.array([0, 3]))


def test_lira_scores_follow_the_gaussians() -> None:
    rng = np.random.default_rng(0)
    models_, records = 16, 50
    keep = np.zeros((models_, records), dtype=bool)
    keep[::2] = rng.random((models_ // 2, records)) < 0.5
    keep[1::2] = ~keep[::2]
    shadow = np.where(keep, 2.0, 0.0) + rng.normal(size=keep.shape)
    member_like = np.full(records, 2.0)
    outsider_like = np.zeros(records)
    assert np.all(lira_online(member_like, shadow, keep) > lira_online(outsider_like, shadow, keep))
    assert np.all(
        lira_offline(member_like, shadow, keep) > lira_offline(outsider_like, shadow, keep)
    )
    with pytest.raises(DataError, match="no shadow model"):
        lira_online(member_like, shadow, np.ones_like(keep))


def test_rmia_scores_are_fractions_of_the_population_beaten() -> None:
    rng = np.random.default_rng(3)
    shadow = rng.normal(size=(6, 40))
    shadow_z = rng.normal(size=(6, 200))
    target_z = rng.normal(size=200)
    target = np.linspace(-5, 5, 40)  # rising confidence under the target model
    scores = rmia(target, shadow + 0.0 * target, target_z, shadow_z)
    assert np.all((scores >= 0) & (scores < 1 + 1 / 200))  # a fraction, plus a tie-break
    # with the same references for every candidate the order follows the target's confidence
    flat = rmia(target, np.zeros((6, 40)), target_z, shadow_z)
    assert np.all(np.diff(flat) > 0)
    with pytest.raises(DataError, match="population samples"):
        rmia(target, shadow, np.zeros(0), np.zeros((6, 0)))


def test_shadow_model_arguments_are_checked(digits: data.FederatedData) -> None:
    population = ClientData(digits.x[:40], digits.y[:40])
    with pytest.raises(ConfigurationError, match="even integer"):
        train_shadow_models(mlp, population, models=3, config=TrainConfig())
    with pytest.raises(ConfigurationError, match="rng="):
        train_shadow_models(
            mlp, population, models=4, config=TrainConfig(), dpsgd=DpSgd(noise_multiplier=1.0)
        )
    bad = ShadowModels(np.zeros((4, 3)), np.ones((4, 3), dtype=bool), np.zeros(4))
    with pytest.raises(DataError):
        membership_audit(bad)
