"""The model stays private: a client holding the secret key decrypts *every* slot of the result
and finds nothing but its score. The same attack on TenSEAL's rotation dot product reads every
weight of the model from one query, so the test would catch the mask going missing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from veil.he import LinearModel, Mode, Packing, Scorer, ScoringClient, circuits


def _all_slots(model: LinearModel, client: ScoringClient, ciphertexts: list[bytes]) -> np.ndarray:
    scorer = Scorer(model)
    session = scorer.open_session(client.public_bundle(), client.plan.mode, client.plan.packing)
    return client.keys.decrypt(scorer.score(session, ciphertexts))


def _recover_weights(slots: np.ndarray, x: np.ndarray, features: int) -> np.ndarray:
    """The partial-sum attack: if slot j holds sum_{i >= j} w_i x_i (a rotate-and-sum leaves
    such windows), then (slot j - slot j+1) / x_j = w_j."""
    diffs = slots[:features] - slots[1 : features + 1]
    return np.asarray(diffs / x[:features])


def test_tenseal_dot_product_leaks_every_weight_in_one_query(model: LinearModel) -> None:
    import tenseal as ts

    features = model.features
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    ctx.global_scale = 2**40
    ctx.generate_galois_keys()
    x = np.random.default_rng(0).uniform(1.0, 2.0, features)  # nonzero, so division works
    server_view = ts.ckks_vector_from(ctx, ts.ckks_vector(ctx, x.tolist()).serialize())
    result = server_view.dot(list(model.weights))
    # the client decrypts the raw ciphertext, all slots, with its secret key
    import tenseal.sealapi as s

    plain = s.Plaintext()
    s.Decryptor(ctx.seal_context().data, ctx.secret_key().data).decrypt(
        result.ciphertext()[0], plain
    )
    slots = np.array(s.CKKSEncoder(ctx.seal_context().data).decode_double(plain))
    recovered = _recover_weights(slots, x, features)
    assert np.allclose(recovered, model.weights, atol=1e-3)  # the whole model, from one query


@pytest.mark.parametrize("mode", [Mode.LOGIT, Mode.PROBABILITY])
def test_veil_returns_the_score_and_noise(
    model: LinearModel, x_test: np.ndarray, mode: Mode
) -> None:
    client = ScoringClient.generate(model.public_spec(), mode=mode, packing=Packing.SINGLE)
    x = x_test[0]
    slots = _all_slots(model, client, client.encrypt(x[None, :])[0])
    expected = model.logits(x[None, :])[0]
    if mode is Mode.PROBABILITY:
        assert model.sigmoid is not None
        expected = model.sigmoid(np.array([expected]))[0]
    # probability mode runs at a 2^30 scale (CKKS error about 3e-5, noise in the other slots
    # about 2e-5); logit mode at 2^40 (1e-7 and 1e-8)
    precision, residue = (1e-4, 1e-6) if mode is Mode.LOGIT else (2e-4, 1e-4)
    assert slots[0] == pytest.approx(expected, abs=precision)
    # the other slots are flooded with fresh uniform noise, far larger than any weight
    assert np.max(np.abs(slots[1:])) > 1.0
    recovered = _recover_weights(slots, np.where(x == 0, 1.0, x), model.features)
    assert np.corrcoef(recovered, model.weights)[0, 1] < 0.5


def test_a_client_that_packs_its_own_way_still_learns_only_one_number(
    model: LinearModel, logit_client: ScoringClient
) -> None:
    """Values in every slot, not the F the protocol asks for: only slot 0 comes back, and it is
    the logit of the first P = 64 slots (no other combination of the weights)."""
    slots_n = logit_client.plan.params.slots
    x = np.random.default_rng(2).normal(size=slots_n)
    slots = _all_slots(model, logit_client, [logit_client.keys.encrypt(x)])
    assert slots[0] == pytest.approx(
        float(np.asarray(model.weights) @ x[: model.features] + model.bias), abs=1e-4
    )
    assert np.max(np.abs(slots[1:])) > 1.0  # noise, not zeros


def _complex_query(client: ScoringClient, values: np.ndarray) -> bytes:
    """What a client with raw SEAL can send: complex slot values (veil's encoder sends reals)."""
    from veil.he.backend import _files

    keys: Any = client.keys
    ctx = keys._ctx
    pt = ctx.s.Plaintext()
    ctx.encoder.encode([complex(v) for v in values], ctx.context.first_parms_id(), ctx.scale, pt)
    return _files().save(keys._encryptor.encrypt_symmetric(pt))


def _complex_slots(client: ScoringClient, result: bytes) -> np.ndarray:
    from veil.he.backend import _files

    keys: Any = client.keys
    ctx = keys._ctx
    ct = _files().load(ctx.s.Ciphertext(), ctx.context, result)
    pt = ctx.s.Plaintext()
    keys._decryptor.decrypt(ct, pt)
    return np.asarray(ctx.encoder.decode_complex(pt))


def test_large_inputs_do_not_reveal_the_weights_through_the_mask_residue(
    model: LinearModel, logit_client: ScoringClient
) -> None:
    """The reviewer's attack: with |x| ~ 2e4 the one-hot mask's encoding error leaves a residue
    (partial sums times that error) in slots 1.. that is linear in the weights. The client runs
    the same circuit itself on basis weights (public code, its own evaluation keys) and solves
    for the weights by least squares over the other slots, real and imaginary parts."""
    scorer = Scorer(model)
    session = scorer.open_session(logit_client.public_bundle(), Mode.LOGIT, Packing.SINGLE)
    ev = session.evaluator
    features = model.features
    rng = np.random.default_rng(0)
    x = np.zeros(logit_client.plan.params.slots)
    x[:features] = 2e4 * rng.choice([-1, 1], features) * rng.uniform(0.5, 1, features)
    query = logit_client.keys.encrypt(x)
    target = _complex_slots(logit_client, scorer.score(session, [query]))

    def simulate(weights: np.ndarray) -> np.ndarray:  # the client's own, noise-free copy
        out = circuits.single_linear(ev, ev.load(query), list(weights), 0.0, flood=False)
        return _complex_slots(logit_client, ev.dump(out))

    eye = np.eye(features)
    base = 2 * simulate(eye[0]) - simulate(2 * eye[0])
    columns = [simulate(eye[k]) - base for k in range(features)]
    design = np.stack([np.concatenate([c[1:].real, c[1:].imag]) for c in columns], axis=1)
    y = np.concatenate([(target - base)[1:].real, (target - base)[1:].imag])
    estimate, *_ = np.linalg.lstsq(design, y, rcond=None)
    assert abs(np.corrcoef(estimate, model.weights)[0, 1]) < 0.3


def test_the_imaginary_part_carries_no_second_score(
    model: LinearModel, logit_client: ScoringClient, x_test: np.ndarray
) -> None:
    """x = a + i b: slot 0 must hold w . a + bias and nothing of w . b."""
    scorer = Scorer(model)
    session = scorer.open_session(logit_client.public_bundle(), Mode.LOGIT, Packing.SINGLE)
    a, b = x_test[0], x_test[1]
    values = np.zeros(logit_client.plan.params.slots, dtype=complex)
    values[: model.features] = a + 1j * b
    slot0 = _complex_slots(
        logit_client, scorer.score(session, [_complex_query(logit_client, values)])
    )[0]
    assert slot0.real == pytest.approx(model.logits(a[None, :])[0], abs=1e-4)
    second = float(np.asarray(model.weights) @ b)
    assert abs(slot0.imag - second) > 1.0  # not the second score: noise


def test_batch_slots_hold_one_applicant_each(
    model: LinearModel, batch_client: ScoringClient, x_test: np.ndarray
) -> None:
    """Feature-major packing needs no rotation: slot i is applicant i's logit and nothing else
    (the empty slots hold the bias, which the score of an all-zero applicant reveals anyway)."""
    query = batch_client.encrypt(x_test)[0]
    slots = _all_slots(model, batch_client, query)
    n = len(x_test)
    assert np.max(np.abs(slots[:n] - model.logits(x_test))) < 1e-5
    assert np.max(np.abs(slots[n:] - model.bias)) < 1e-5


@pytest.mark.parametrize("mode", [Mode.LOGIT, Mode.PROBABILITY])
def test_flooding_at_its_extremes_leaves_the_result_intact(
    model: LinearModel, logit_client: ScoringClient, x_test: np.ndarray, mode: Mode
) -> None:
    """Known-answer: every noise value at -B or at +B (the worst case for the modulus: all of
    it lands in two coefficients) still leaves slot 0 exact, and the other slots at B."""
    client = (
        logit_client
        if mode is Mode.LOGIT
        else ScoringClient.generate(model.public_spec(), mode=mode, packing=Packing.SINGLE)
    )
    session = Scorer(model).open_session(client.public_bundle(), mode, Packing.SINGLE)
    ev = session.evaluator
    ct = ev.load(client.encrypt(x_test[:1])[0][0])
    poly = model.sigmoid
    assert poly is not None
    if mode is Mode.LOGIT:
        plain = circuits.single_linear(ev, ct, model.weights, model.bias, flood=False)
    else:
        plain = circuits.single_probability(
            ev,
            ct,
            model.weights,
            model.bias,
            radius=poly.radius,
            coefficients=poly.coefficients,
            flood=False,
        )
    bound = circuits.flood_bound(ev, plain)
    assert bound == (2.0**18 if mode is Mode.LOGIT else 4.0)
    reference = _complex_slots(client, ev.dump(plain))
    for byte, sign in [(0x00, -1.0), (0xFF, 1.0)]:
        flooded = circuits.flood(ev, plain, random_bytes=lambda n, b=byte: bytes([b]) * n)
        slots = _complex_slots(client, ev.dump(flooded))
        assert slots[0].real == pytest.approx(reference[0].real, abs=1e-4)
        assert np.allclose(slots[1:].real, sign * bound, rtol=1e-6, atol=1e-3)
