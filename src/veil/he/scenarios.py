"""The German credit scenario: train in the clear, serve over gRPC with mutual TLS, score the
held-out applicants encrypted, and measure latency, sizes and agreement with the clear model.
``veil demo`` shows it; it runs in about half a minute on two cores."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from veil.datasets import data_path
from veil.he.model import LinearModel, read_rows, train_model
from veil.he.scoring import Mode, Packing, ScoringClient
from veil.he.service import RemoteScorer, ScoringServer, ServerConfig
from veil.tls import write_pki

__all__ = ["CreditRun", "CreditScenario", "run_credit_scenario"]


@dataclasses.dataclass(frozen=True)
class CreditRun:
    """One way of scoring the test set encrypted, through the service."""

    mode: Mode
    packing: Packing
    poly_modulus_degree: int
    modulus_bits: int
    applicants: int
    key_bundle_bytes: int
    upload_bytes_per_query: int
    key_upload_seconds: float
    seconds: float
    """Encrypting, calling the service and decrypting every applicant (loopback, mutual TLS)."""
    max_abs_dp: float
    decisions_agree: float

    @property
    def ms_per_applicant(self) -> float:
        return self.seconds / self.applicants * 1000


@dataclasses.dataclass(frozen=True)
class CreditScenario:
    model: LinearModel
    test_accuracy: float
    runs: list[CreditRun]
    workers: int


def run_credit_scenario(*, workers: int = 2, single_rows: int | None = None) -> CreditScenario:
    """Train on German credit and score its 200 held-out applicants through the service in
    logit mode one by one, in logit mode batched and in probability mode batched."""
    rows = read_rows(data_path("german_credit.csv"))
    model, test_rows = train_model(rows, target="creditability", positive="bad")
    clear = model.scores(model.encoder.encode(test_rows))
    runs: list[CreditRun] = []
    with tempfile.TemporaryDirectory(prefix="veil-credit-") as tmp:
        model_path = Path(tmp) / "german-credit.json"
        model.save(model_path)
        pki = write_pki(Path(tmp) / "pki")
        # batch mode returns the whole model; the demo's client is the lender itself
        config = ServerConfig(
            model_path=str(model_path), workers=workers, tls=pki.server, allow_batch=True
        )
        with (
            ScoringServer(config) as server,
            RemoteScorer(f"localhost:{server.port}", tls=pki.clients["client"]) as remote,
        ):
            spec = remote.describe()
            plan = [
                (Mode.LOGIT, Packing.SINGLE, test_rows[:single_rows]),
                (Mode.LOGIT, Packing.BATCH, test_rows),
                (Mode.PROBABILITY, Packing.BATCH, test_rows),
            ]
            for mode, packing, subset in plan:
                client = ScoringClient.generate(spec, mode=mode, packing=packing)
                bundle = client.public_bundle()
                start = time.perf_counter()
                session = remote.upload_keys(bundle, mode, packing)
                upload = time.perf_counter() - start
                start = time.perf_counter()
                x = client.encode(subset)
                queries = client.encrypt(x)
                results = [remote.score(session, q) for q in queries]
                p = client.scores(client.read(results, len(subset)))
                seconds = time.perf_counter() - start
                remote.close_session(session)
                ref = clear[: len(subset)]
                params = client.plan.params
                runs.append(
                    CreditRun(
                        mode=mode,
                        packing=packing,
                        poly_modulus_degree=params.poly_modulus_degree,
                        modulus_bits=params.total_bits,
                        applicants=len(subset),
                        key_bundle_bytes=len(bundle),
                        upload_bytes_per_query=sum(len(c) for c in queries[0]),
                        key_upload_seconds=upload,
                        seconds=seconds,
                        max_abs_dp=float(np.max(np.abs(p - ref))),
                        decisions_agree=float(np.mean((p > 0.5) == (ref > 0.5))),
                    )
                )
    return CreditScenario(model, model.metrics["test_accuracy"], runs, workers)
