"""Property tests: whatever bytes arrive as a key bundle or a ciphertext, the server answers with
a result or a :class:`DataError`, never another exception (the gRPC layer maps DataError to
INVALID_ARGUMENT; anything else would be INTERNAL, or a crash)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.errors import DataError
from veil.he import LinearModel, Mode, Packing, Scorer, ScoringClient, ScoringSession
from veil.he.backend import pack_bundle, unpack_bundle

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def setup(
    model: LinearModel, logit_client: ScoringClient, x_test: np.ndarray
) -> tuple[Scorer, ScoringSession, bytes]:
    scorer = Scorer(model)
    session = scorer.open_session(logit_client.public_bundle(), Mode.LOGIT, Packing.SINGLE)
    (good,) = logit_client.encrypt(x_test[:1])[0]
    return scorer, session, good


@FUZZ
@given(data=st.data())
def test_mutated_ciphertexts_give_a_result_or_a_data_error(
    setup: tuple[Scorer, ScoringSession, bytes], data: st.DataObject
) -> None:
    scorer, session, good = setup
    position = data.draw(st.integers(0, len(good) - 1))
    kind = data.draw(st.sampled_from(["flip", "cut", "append"]))
    if kind == "flip":
        bad = good[:position] + bytes([good[position] ^ data.draw(st.integers(1, 255))])
        bad += good[position + 1 :]
    elif kind == "cut":
        bad = good[:position]
    else:
        bad = good + data.draw(st.binary(min_size=1, max_size=64))
    try:
        out = scorer.score(session, [bad])
    except DataError:
        return
    assert isinstance(out, bytes) and out  # a flipped coefficient is still a ciphertext


@FUZZ
@given(blob=st.binary(max_size=4096))
def test_random_bundles_are_data_errors(blob: bytes) -> None:
    with pytest.raises(DataError):
        unpack_bundle(blob)


@FUZZ
@given(
    sections=st.dictionaries(st.text(min_size=1, max_size=12), st.binary(max_size=256), max_size=4),
    extra=st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), max_size=2),
)
def test_bundles_round_trip(sections: dict[str, bytes], extra: dict[str, int]) -> None:
    header, back = unpack_bundle(pack_bundle(extra, sections))
    assert back == sections
    assert {k: header[k] for k in extra} == extra
