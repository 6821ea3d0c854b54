"""The backend: servers get public material only; keys and ciphertexts that are malformed,
truncated, oversized, foreign or carrying a secret key are refused with a clear error."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from veil.errors import DataError
from veil.he import LinearModel, Mode, Packing, Scorer, ScoringClient, TenSealBackend
from veil.he.backend import pack_bundle, unpack_bundle


def test_the_public_bundle_holds_evaluation_keys_only(logit_client: ScoringClient) -> None:
    header, sections = unpack_bundle(logit_client.public_bundle())
    assert header["kind"] == "public"
    assert set(sections) == {"galois_keys"}  # logit mode needs no relinearisation keys
    _, secret_sections = unpack_bundle(logit_client.keys.save_secret())
    secret = secret_sections["secret_key"]
    assert secret not in logit_client.public_bundle()
    assert repr(logit_client.keys).startswith("ClientKeys(backend='tenseal', params=")


def test_the_evaluator_cannot_decrypt_and_hides_nothing_secret(
    model: LinearModel, logit_client: ScoringClient
) -> None:
    session = Scorer(model).open_session(logit_client.public_bundle(), Mode.LOGIT, Packing.SINGLE)
    assert not any("decrypt" in name for name in dir(session.evaluator))


def test_a_bundle_with_a_secret_key_is_refused(
    model: LinearModel, logit_client: ScoringClient
) -> None:
    header, sections = unpack_bundle(logit_client.public_bundle())
    _, secret = unpack_bundle(logit_client.keys.save_secret())
    header = {k: v for k, v in header.items() if k != "sections"}
    smuggled = pack_bundle(header, {**sections, "secret_key": secret["secret_key"]})
    with pytest.raises(DataError, match="never a secret key"):
        Scorer(model).open_session(smuggled, Mode.LOGIT, Packing.SINGLE)
    with pytest.raises(DataError, match="not a public"):
        Scorer(model).open_session(logit_client.keys.save_secret(), Mode.LOGIT, Packing.SINGLE)


def test_bundles_for_the_wrong_circuit_or_damaged_are_refused(
    model: LinearModel, logit_client: ScoringClient, batch_client: ScoringClient
) -> None:
    scorer = Scorer(model)
    bundle = logit_client.public_bundle()
    with pytest.raises(DataError, match="for parameters"):
        scorer.open_session(batch_client.public_bundle(), Mode.LOGIT, Packing.SINGLE)
    with pytest.raises(DataError, match="no relinearisation keys"):
        scorer.open_session(
            pack_bundle(
                {
                    **{k: v for k, v in unpack_bundle(bundle)[0].items() if k != "sections"},
                    "params": ScoringClient.generate(
                        model.public_spec(), mode=Mode.PROBABILITY, packing=Packing.BATCH
                    ).plan.params.to_dict(),
                },
                {},
            ),
            Mode.PROBABILITY,
            Packing.BATCH,
        )
    with pytest.raises(DataError, match="truncated"):
        scorer.open_session(bundle[: len(bundle) // 2], Mode.LOGIT, Packing.SINGLE)
    with pytest.raises(DataError, match="bad magic"):
        scorer.open_session(b"\x00" * 1000, Mode.LOGIT, Packing.SINGLE)
    header, sections = unpack_bundle(bundle)
    header = {k: v for k, v in header.items() if k != "sections"}
    garbled = dict(sections, galois_keys=b"\x01" * len(sections["galois_keys"]))
    with pytest.raises(DataError, match="malformed"):
        scorer.open_session(pack_bundle(header, garbled), Mode.LOGIT, Packing.SINGLE)
    with pytest.raises(DataError, match="no Galois key"):
        scorer.open_session(pack_bundle(header, {}), Mode.LOGIT, Packing.SINGLE)


def test_bad_ciphertexts_are_refused(
    model: LinearModel, logit_client: ScoringClient, x_test: np.ndarray
) -> None:
    scorer = Scorer(model)
    session = scorer.open_session(logit_client.public_bundle(), Mode.LOGIT, Packing.SINGLE)
    (good,) = logit_client.encrypt(x_test[:1])[0]
    limit = session.evaluator.max_ciphertext_bytes  # type: ignore[attr-defined]
    foreign = ScoringClient.generate(
        model.public_spec(), mode=Mode.PROBABILITY, packing=Packing.SINGLE
    ).encrypt(x_test[:1])[0][0]
    cases = {
        "garbage": b"not a ciphertext" * 100,
        "truncated": good[: len(good) // 2],
        "damaged header": bytes([good[0] ^ 0xFF]) + good[1:],
        "empty": b"",
        "oversized": good + b"\x00" * limit,
        "other parameters": foreign,
    }
    for name, data in cases.items():
        with pytest.raises(DataError):
            scorer.score(session, [data])
        assert name  # each case raised
    with pytest.raises(DataError, match="has 1 ciphertext"):
        scorer.score(session, [good, good])
    # the session still works
    out = logit_client.read([scorer.score(session, [good])], 1)
    assert out[0] == pytest.approx(model.logits(x_test[:1])[0], abs=1e-5)


def test_secret_keys_round_trip_and_decrypt(
    logit_client: ScoringClient, x_test: np.ndarray
) -> None:
    again = TenSealBackend().load_client(logit_client.keys.save_secret())
    ct = logit_client.keys.encrypt(x_test[0])
    assert np.allclose(again.decrypt(ct)[: x_test.shape[1]], x_test[0], atol=1e-6)
    with pytest.raises(DataError):
        TenSealBackend().load_client(logit_client.public_bundle())
    with pytest.raises(DataError, match="NaN"):
        logit_client.keys.encrypt([float("nan")])


def _all_zero_ciphertext(client: ScoringClient) -> bytes:
    """A well-formed SEAL ciphertext whose polynomials are all zero (a "transparent"
    ciphertext: it decrypts without the key), as a client can write it by hand."""
    import struct

    keys: Any = client.keys
    ctx = keys._ctx
    n = client.plan.params.poly_modulus_degree
    k = len(client.plan.params.coeff_modulus_bits) - 1

    def header(body: bytes) -> bytes:  # SEAL's serialization header, no compression
        return struct.pack("<HBBBBH", 0xA15E, 16, 4, 3, 0, 0) + struct.pack("<Q", 16 + len(body))

    coefficients = np.zeros(2 * n * k, dtype=np.uint64)
    inner = struct.pack("<Q", len(coefficients)) + coefficients.tobytes()
    parms_id = ctx.context.first_parms_id()
    body = (
        struct.pack("<4Q", *parms_id)
        + b"\x01"  # NTT form
        + struct.pack("<QQQdQ", 2, n, k, ctx.scale, 1)
        + header(inner)
        + inner
    )
    return header(body) + body


def test_a_transparent_ciphertext_is_a_data_error(
    model: LinearModel, logit_client: ScoringClient
) -> None:
    session = Scorer(model).open_session(logit_client.public_bundle(), Mode.LOGIT, Packing.SINGLE)
    with pytest.raises(DataError, match="transparent"):
        Scorer(model).score(session, [_all_zero_ciphertext(logit_client)])


def test_a_ciphertext_not_in_ntt_form_is_named_as_such(
    model: LinearModel, logit_client: ScoringClient
) -> None:
    data = bytearray(_all_zero_ciphertext(logit_client))
    data[16 + 32] = 0  # the NTT-form flag, after the header and the parms_id
    session = Scorer(model).open_session(logit_client.public_bundle(), Mode.LOGIT, Packing.SINGLE)
    with pytest.raises(DataError, match="NTT"):
        Scorer(model).score(session, [bytes(data)])


@pytest.mark.parametrize("memfd", [True, False])
def test_bytes_pass_through_scratch_space_that_keeps_nothing(
    logit_client: ScoringClient, x_test: np.ndarray, monkeypatch: pytest.MonkeyPatch, memfd: bool
) -> None:
    """SEAL's bindings read and write paths only: an in-memory file per thread where Linux has
    memfd_create, a private directory elsewhere. Either way the bytes round-trip and nothing
    (a secret key least of all) stays behind."""
    import os

    from veil.he.backend import _Scratch

    if not memfd:
        monkeypatch.delattr(os, "memfd_create", raising=False)
    elif not hasattr(os, "memfd_create"):
        pytest.skip("no memfd_create on this system")
    scratch = _Scratch()
    keys: Any = logit_client.keys
    secret = scratch.save(keys._secret)
    ciphertext = logit_client.keys.encrypt(x_test[0])
    ct = scratch.load(keys._ctx.s.Ciphertext(), keys._ctx.context, ciphertext)
    # (saved again it is no longer seeded: compare what it decrypts to)
    again = logit_client.keys.decrypt(scratch.save(ct))
    assert np.allclose(again[: x_test.shape[1]], x_test[0], atol=1e-6)
    assert len(secret) > 1000
    if memfd:
        assert os.fstat(scratch._buffer().fd).st_size == 0
    else:
        assert os.listdir(scratch._dir) == []


@pytest.mark.parametrize(
    "rotations",
    [(1, 2, 4, 8, 16, 32), (1, 2, 4, 8, 16)],
    ids=["one feature per slot", "pairs from slot 0"],
)
def test_keys_of_an_earlier_layout_are_refused_with_what_to_do(
    model: LinearModel, logit_client: ScoringClient, rotations: tuple[int, ...]
) -> None:
    """Keys made by an earlier veil (features from slot 0 up, rotations to the left) would
    score a differently packed query wrongly: refused, and the message says to make new keys
    (not merely that a Galois key is missing)."""
    from veil.he.backend import default_backend

    keys = default_backend().keygen(
        logit_client.plan.params, rotations=rotations, relinearization=False, conjugation=True
    )
    with pytest.raises(DataError, match="run keygen again"):
        Scorer(model).open_session(keys.public_bundle(), Mode.LOGIT, Packing.SINGLE)
