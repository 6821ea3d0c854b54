"""The German credit scenario of ``veil demo``: every way of scoring agrees with the clear model."""

from __future__ import annotations

from veil.he import Mode, Packing
from veil.he.scenarios import run_credit_scenario


def test_the_credit_scenario_scores_like_the_clear_model() -> None:
    result = run_credit_scenario(workers=1, single_rows=10)
    assert result.model.sigmoid is not None
    kinds = [(r.mode, r.packing, r.applicants) for r in result.runs]
    assert kinds == [
        (Mode.LOGIT, Packing.SINGLE, 10),
        (Mode.LOGIT, Packing.BATCH, 200),
        (Mode.PROBABILITY, Packing.BATCH, 200),
    ]
    for r in result.runs:
        assert r.decisions_agree == 1.0
        bound = 1e-5 if r.mode is Mode.LOGIT else result.model.sigmoid.max_error + 5e-4
        assert r.max_abs_dp <= bound
        assert r.upload_bytes_per_query > 0 and r.seconds > 0
    single = result.runs[0]
    assert single.key_bundle_bytes < 20 << 20
    assert single.upload_bytes_per_query < 250 << 10
