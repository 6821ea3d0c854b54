"""Encrypted scores agree with the clear model: logit mode exactly (up to CKKS noise) on the whole
test set, single and batched; probability mode within the polynomial's reported error on the
whole logit range; linear models too. The model file and the client-side encoding round-trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from veil.datasets import data_path
from veil.errors import ConfigurationError, DataError
from veil.he import (
    LinearModel,
    Mode,
    ModelKind,
    Packing,
    Scorer,
    ScoringClient,
    read_rows,
    sigmoid,
    train_model,
)


def _score_values(model: LinearModel, client: ScoringClient, x: np.ndarray) -> np.ndarray:
    scorer = Scorer(model)
    session = scorer.open_session(client.public_bundle(), client.plan.mode, client.plan.packing)
    results = [scorer.score(session, q) for q in client.encrypt(x)]
    return client.read(results, len(x))


def _score(model: LinearModel, client: ScoringClient, x: np.ndarray) -> np.ndarray:
    return client.scores(_score_values(model, client, x))


def test_logit_mode_agrees_with_the_clear_model_on_every_test_applicant(
    model: LinearModel, logit_client: ScoringClient, x_test: np.ndarray
) -> None:
    p_enc = _score(model, logit_client, x_test)
    p_clear = model.scores(x_test)
    assert len(p_enc) == len(x_test) == 200
    assert np.max(np.abs(p_enc - p_clear)) <= 1e-5
    assert np.array_equal(p_enc > 0.5, p_clear > 0.5)


def test_batch_mode_agrees_across_several_ciphertexts(
    model: LinearModel, batch_client: ScoringClient, x_test: np.ndarray
) -> None:
    slots = batch_client.plan.applicants_per_query
    rng = np.random.default_rng(1)
    x = x_test[rng.integers(0, len(x_test), slots + 300)]  # two queries, the second partial
    queries = batch_client.encrypt(x)
    assert len(queries) == 2
    assert all(len(q) == model.features for q in queries)
    p_enc = _score(model, batch_client, x)
    p_clear = model.scores(x)
    assert np.max(np.abs(p_enc - p_clear)) <= 1e-5
    assert np.array_equal(p_enc > 0.5, p_clear > 0.5)


def _inputs_with_logits(model: LinearModel, z: np.ndarray) -> np.ndarray:
    """Feature vectors whose clear logits are exactly ``z``."""
    w = np.asarray(model.weights)
    return np.outer(z - model.bias, w / (w @ w))


def test_probability_mode_holds_its_error_bound_on_the_whole_observed_range(
    model: LinearModel,
) -> None:
    assert model.sigmoid is not None
    client = ScoringClient.generate(
        model.public_spec(), mode=Mode.PROBABILITY, packing=Packing.BATCH
    )
    radius = model.sigmoid.radius
    z = np.linspace(-radius, radius, client.plan.applicants_per_query)
    x = _inputs_with_logits(model, z)
    assert np.allclose(model.logits(x), z)
    p_enc = _score(model, client, x)
    err = np.abs(p_enc - sigmoid(z))
    ckks_noise = 5e-4  # probability mode's parameters use a 2^30 scale
    assert err.max() <= model.sigmoid.max_error + ckks_noise
    # the polynomial, not noise, is what the server computed: its error is reached
    assert err.max() >= model.sigmoid.max_error - ckks_noise
    assert np.max(np.abs(p_enc - model.sigmoid(z))) <= ckks_noise


def test_probability_mode_single_applicant(model: LinearModel, x_test: np.ndarray) -> None:
    assert model.sigmoid is not None
    client = ScoringClient.generate(
        model.public_spec(), mode=Mode.PROBABILITY, packing=Packing.SINGLE
    )
    assert client.plan.relinearization
    x = x_test[:3]
    p_enc = _score(model, client, x)
    p_poly = model.sigmoid(model.logits(x))
    # a 2^30 scale: CKKS adds about 3e-5 to the polynomial's own error
    assert np.max(np.abs(p_enc - p_poly)) <= 2e-4
    assert np.max(np.abs(p_enc - model.scores(x))) <= model.sigmoid.max_error + 2e-4
    assert client.plan.params.poly_modulus_degree == 8192


def test_a_linear_model_scores_in_logit_mode_and_refuses_probability_mode() -> None:
    rows = read_rows(data_path("german_credit.csv"))
    model, test_rows = train_model(rows, target="duration_in_month", kind=ModelKind.LINEAR)
    assert model.sigmoid is None and "test_rmse" in model.metrics
    x = model.encoder.encode(test_rows[:20])
    client = ScoringClient.generate(model.public_spec(), packing=Packing.BATCH)
    y_enc = _score(model, client, x)
    assert np.max(np.abs(y_enc - model.scores(x))) <= 1e-4
    with pytest.raises(ConfigurationError, match="needs a logistic model"):
        ScoringClient.generate(model.public_spec(), mode=Mode.PROBABILITY)


def test_the_model_file_round_trips_and_its_public_part_has_no_weights(
    model: LinearModel, model_file: Path
) -> None:
    loaded = LinearModel.load(model_file)
    assert loaded == model
    spec = model.public_spec()
    assert "weights" not in spec and "bias" not in spec
    assert spec["features"] == model.features == 61
    text = repr(spec)
    assert all(repr(w) not in text for w in model.weights)


def test_client_encoding_matches_the_training_encoding(
    model: LinearModel, logit_client: ScoringClient, test_rows: list[dict[str, str]]
) -> None:
    assert np.array_equal(logit_client.encode(test_rows), model.encoder.encode(test_rows))


def test_bad_rows_and_files_are_refused_with_one_clear_message(
    model: LinearModel, test_rows: list[dict[str, str]], tmp_path: Path
) -> None:
    row = dict(test_rows[0])
    row["purpose"] = "yacht"
    with pytest.raises(DataError, match=r"purpose is 'yacht'.*expected one of"):
        model.encoder.encode([row])
    row = dict(test_rows[0])
    row["age_in_years"] = "old"
    with pytest.raises(DataError, match="age_in_years must be a number"):
        model.encoder.encode([row])
    row = dict(test_rows[0])
    del row["housing"]
    with pytest.raises(DataError, match="no column 'housing'"):
        model.encoder.encode([row])
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(ConfigurationError, match="not a veil model file"):
        LinearModel.load(bad)
    with pytest.raises(ConfigurationError, match="does not exist"):
        LinearModel.load(tmp_path / "missing.json")
    with pytest.raises(DataError, match="two classes"):
        train_model(read_rows(data_path("german_credit.csv")), target="purpose")


def test_a_scorecard_built_elsewhere_scores_encrypted(
    test_rows: list[dict[str, str]], tmp_path: Path
) -> None:
    from veil.he import scorecard_model

    card = scorecard_model(
        points={
            "housing": {"own": 30.0, "rent": 10.0, "for free": 20.0},
            "foreign_worker": {"yes": 0.0, "no": 15.0},
        },
        per_unit={"duration_in_month": -0.5, "age_in_years": 0.25},
        base=400.0,
    )
    card.save(tmp_path / "card.json")
    card = LinearModel.load(tmp_path / "card.json")
    rows = test_rows[:40]
    by_hand = np.array(
        [
            400.0
            + {"own": 30.0, "rent": 10.0, "for free": 20.0}[r["housing"]]
            + {"yes": 0.0, "no": 15.0}[r["foreign_worker"]]
            - 0.5 * float(r["duration_in_month"])
            + 0.25 * float(r["age_in_years"])
            for r in rows
        ]
    )
    client = ScoringClient.generate(card.public_spec(), packing=Packing.BATCH)
    scores = _score(card, client, client.encode(rows))
    assert np.max(np.abs(scores - by_hand)) <= 1e-4
    with pytest.raises(ConfigurationError, match="needs logit_range"):
        scorecard_model(points={"housing": {"own": 1.0}}, kind=ModelKind.LOGISTIC)
    odds = scorecard_model(
        points={"housing": {"own": 1.2, "rent": -0.8, "for free": 0.1}},
        base=-0.3,
        kind=ModelKind.LOGISTIC,
        logit_range=(-1.1, 0.9),
    )
    client = ScoringClient.generate(odds.public_spec())
    x = client.encode(rows[:3])
    assert np.max(np.abs(_score(odds, client, x) - sigmoid(odds.logits(x)))) <= 1e-5


@pytest.mark.parametrize(
    "per_unit",
    [
        {"duration_in_month": -0.5},  # one feature: one slot, no rotation
        {"duration_in_month": -0.5, "age_in_years": 0.25},  # one slot, both parts
        {"duration_in_month": -0.5, "age_in_years": 0.25, "credit_amount": 0.01},  # two
    ],
)
def test_single_applicant_layout_holds_for_few_features(
    test_rows: list[dict[str, str]], per_unit: dict[str, float]
) -> None:
    """Two features per slot: odd counts leave an imaginary part unused, one or two features
    need no rotation at all."""
    from veil.he import scorecard_model

    card = scorecard_model(points={}, per_unit=per_unit, base=100.0)
    client = ScoringClient.generate(card.public_spec())
    assert len(client.plan.rotations) == (1 if len(per_unit) > 2 else 0)
    x = client.encode(test_rows[:3])
    assert np.max(np.abs(_score(card, client, x) - card.logits(x))) <= 1e-4


@pytest.mark.parametrize(("mode", "step"), [(Mode.LOGIT, 1e-6), (Mode.PROBABILITY, 1e-4)])
def test_decrypted_results_are_rounded_to_drop_the_noise_bits(
    model: LinearModel, x_test: np.ndarray, mode: Mode, step: float
) -> None:
    """CKKS decryptions carry the scheme's noise in their low digits, which can help recover the
    secret key if they ever reach the server (IND-CPA-D): the client rounds them, to 1e-6 in
    logit mode (noise about 1e-8) and 1e-4 in probability mode (noise about 3e-5)."""
    client = ScoringClient.generate(model.public_spec(), mode=mode, packing=Packing.SINGLE)
    values = _score_values(model, client, x_test[:3])
    assert np.allclose(values / step, np.round(values / step), rtol=0, atol=1e-6)


def test_a_csv_saved_with_a_byte_order_mark_reads_like_any_other(
    model: LinearModel, test_rows: list[dict[str, str]], tmp_path: Path
) -> None:
    """Spreadsheets write UTF-8 with a BOM; the first column's name must not carry it."""
    import csv

    path = tmp_path / "bom.csv"
    with path.open("w", newline="", encoding="utf-8-sig") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(test_rows[0]))
        writer.writeheader()
        writer.writerows(test_rows[:2])
    rows = read_rows(path)
    assert list(rows[0]) == list(test_rows[0])
    assert np.array_equal(model.encoder.encode(rows), model.encoder.encode(test_rows[:2]))


def test_the_logit_carries_no_offset_from_the_keys(model: LinearModel, x_test: np.ndarray) -> None:
    """Key switching leaves an offset that depends only on the keys, largest in the slot whose
    root of unity is nearest 1: slot 0, where it measured 1e-7 to 5e-6 (a constant that
    rounding the logit to 1e-6 would not remove). The result slot, N/4, has its root near -1,
    where it measured below 4e-8: over three key sets the mean error stays at the noise level."""
    from veil.he import circuits

    scorer = Scorer(model)
    x = x_test[:20]
    for _ in range(3):
        client = ScoringClient.generate(model.public_spec())
        session = scorer.open_session(client.public_bundle(), Mode.LOGIT, Packing.SINGLE)
        r = circuits.result_slot(client.plan.params.slots)
        raw = [client.keys.decrypt(scorer.score(session, q))[r] for q in client.encrypt(x)]
        error = np.asarray(raw) - model.logits(x)
        assert abs(error.mean()) < 2e-7  # slot 0 measured 1e-7 to 5e-6 on 12 key sets
        assert error.std() < 2e-7  # the per-query noise, about 6e-8
