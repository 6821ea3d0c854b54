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
    """12 non-private MLPs (64-128-10), each trained to fit 200 of 400 digits (full-batch GD,
    500 epochs), every one the target in turn with 10 shadow models (its partner left out)."""
    population = ClientData(digits.x[:400], digits.y[:400])
    shadows = train_shadow_models(
        mlp,
        population,
        models=12,
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
    # pooled over 12 targets: 2,400 non-members, so 1% FPR is 24 false positives
    assert overfit.rocs[Attack.LOSS].negatives == 2400


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
        point = audit.tpr_interval(attack, 0.01)
        assert point.lower < math.exp(1.0) * 0.01 + DELTA, attack
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


def shadows_around_untrained_targets(seed: int) -> tuple[ShadowModels, int]:
    """Synthetic confidences: 4 target models that learned nothing (φ does not depend on what
    they trained on), each with a complementary partner that did learn (+3 on its members),
    and two more learned pairs; 2,000 records and 2,000 held-out population samples."""
    gen = np.random.default_rng(seed)
    targets, pairs, n = 4, 2, 2000
    m = 2 * targets + 2 * pairs
    keep = np.zeros((m, n), dtype=bool)
    for t in [*range(targets), *range(2 * targets, m, 2)]:
        keep[t, gen.permutation(n)[: n // 2]] = True
    keep[targets : 2 * targets] = ~keep[:targets]
    keep[2 * targets + 1 :: 2] = ~keep[2 * targets :: 2]
    learned = (np.arange(m) >= targets)[:, None]
    difficulty = gen.normal(size=n)
    confidences = difficulty + np.where(learned & keep, 3.0, 0.0) + gen.normal(0, 0.2, (m, n))
    population = gen.normal(size=n) + gen.normal(0, 0.2, (m, n))
    return ShadowModels(confidences, keep, np.full(m, np.nan), population), targets


@pytest.mark.parametrize("seed", [0, 1])
def test_no_attack_finds_members_of_a_model_that_learned_nothing(seed: int) -> None:
    shadows, targets = shadows_around_untrained_targets(seed)
    audit = membership_audit(shadows, targets=targets)
    # the target's complementary partner is not among its shadows: every record has as many IN
    # as OUT shadows, so the references carry no trace of the target's membership
    assert audit.shadow_models == shadows.models - 2
    assert audit.units == (0, 1, 2, 3)
    for attack in Attack:
        auc = audit.auc_interval(attack)
        assert abs(auc.estimate - 0.5) < 0.03, attack
        assert auc.lower <= 0.5 <= auc.upper, attack
    # with the partner among the references RMIA reads membership off the imbalance (one IN
    # shadow fewer for a member) from a target that learned nothing
    pos, neg = [], []
    for t in range(targets):
        others = np.arange(shadows.models) != t
        assert shadows.reference is not None
        s = rmia(
            shadows.confidences[t],
            shadows.confidences[others],
            shadows.reference[t],
            shadows.reference[others],
        )
        pos.append(s[shadows.keep[t]])
        neg.append(s[~shadows.keep[t]])
    assert Roc.from_scores(np.concatenate(pos), np.concatenate(neg)).auc > 0.53


def test_intervals_resample_independent_units_not_pooled_scores() -> None:
    shadows, targets = shadows_around_untrained_targets(2)
    audit = membership_audit(shadows, targets=targets)
    pooled = audit.rocs[Attack.LOSS]
    # Clopper-Pearson on the pooled scores treats 4,000 scores as independent; the bootstrap
    # over units and records is wider, and it covers the estimate
    cp = pooled.tpr_at(0.01)
    boot = audit.tpr_interval(Attack.LOSS, 0.01)
    assert boot.lower <= boot.estimate <= boot.upper
    assert boot.estimate == cp.tpr
    assert boot.upper - boot.lower > 0
    # a limit every attack is far above is violated by each, one far above is by none
    assert {v[0] for v in audit.limit_violations(lambda fpr: 0.0)} == set(Attack)
    assert audit.limit_violations(lambda fpr: min(1.0, 10 * fpr + 0.05)) == []
