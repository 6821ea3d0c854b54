"""Encrypted scoring without transport: what the client does, what the server does.

:class:`ScoringPlan` is derived from the model's *public* spec and the chosen mode, so client
and server agree on it without talking: the circuit, its depth, the CKKS parameters, the
rotations and whether relinearisation keys are needed. :class:`ScoringClient` holds the keys,
encodes and encrypts rows and turns results into scores; :class:`Scorer` holds the model and
evaluates ciphertexts with an evaluator built from a client's public bundle. The gRPC service
(:mod:`veil.he.service`) only moves their bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError, DataError
from veil.he import circuits
from veil.he.backend import ClientKeys, Evaluator, HEBackend, default_backend
from veil.he.model import FeatureEncoder, LinearModel
from veil.he.params import (
    CkksParameters,
    next_power_of_two,
    parameters_for_depth,
    parameters_for_sums,
)
from veil.he.sigmoid import SigmoidPolynomial, sigmoid

__all__ = ["Mode", "Packing", "Scorer", "ScoringClient", "ScoringPlan", "ScoringSession"]


class Mode(enum.Enum):
    """What the server returns."""

    LOGIT = "logit"
    """The encrypted logit (or score of a linear model); the client applies the link. Exact up
    to CKKS noise."""
    PROBABILITY = "probability"
    """The encrypted sigmoid polynomial of the logit: the server's result is the probability,
    within the polynomial's reported error on the model's logit range."""


class Packing(enum.Enum):
    SINGLE = "single"
    """One applicant per query: one ciphertext."""
    BATCH = "batch"
    """Many applicants per query: one ciphertext per feature, one applicant per slot."""


@dataclasses.dataclass(frozen=True)
class ScoringPlan:
    """The circuit and CKKS parameters for a model's public spec, mode and packing."""

    mode: Mode
    packing: Packing
    features: int
    params: CkksParameters
    rotations: tuple[int, ...]
    relinearization: bool
    sigmoid: SigmoidPolynomial | None
    conjugation: bool = False
    """A Galois key for complex conjugation (the single-applicant circuits keep only the real
    part of the result slot)."""

    @classmethod
    def for_spec(cls, spec: Mapping[str, Any], mode: Mode, packing: Packing) -> ScoringPlan:
        features = int(spec["features"])
        poly = None
        if mode is Mode.PROBABILITY:
            if spec.get("kind") != "logistic" or spec.get("sigmoid") is None:
                raise ConfigurationError(
                    "probability mode needs a logistic model (this one has no sigmoid); "
                    "use logit mode"
                )
            poly = SigmoidPolynomial.from_dict(spec["sigmoid"])
        depth = circuits.circuit_depth(
            probability=poly is not None,
            batch=packing is Packing.BATCH,
            degree=0 if poly is None else poly.degree,
        )
        single = packing is Packing.SINGLE
        # the summed window (P slots) below the result slot, which is N/4
        min_slots = 2 * next_power_of_two(circuits.single_slots(features)) if single else 1
        bound = spec.get("score_bound")
        if poly is None and not single and isinstance(bound, int | float):
            # no rescale at all: one 60-bit residue per ciphertext (parameters_for_sums); a slot
            # holds two applicants, so its value is within sqrt(2) times the bound
            params = parameters_for_sums(bound=math.sqrt(2) * float(bound))
        elif poly is None:
            params = parameters_for_depth(depth, min_slots=min_slots)
        else:
            # The polynomial's result is a probability: a 30-bit scale (CKKS error about 3e-5,
            # against the polynomial's own 1e-2) lets a degree-7 circuit fit N = 8192. q_0 is
            # what is left at the end, where the terms c_k u^k are summed: for |u| <= 1 every
            # partial sum is within sum |c_k|, plus 10% for noise (the flooding noise of the
            # other slots is sized from q_0 too, circuits.flood_bound). For |u| > 1 (a logit
            # outside [-R, R]) the powers grow like |u|^k: the polynomial diverges from the
            # sigmoid and, further out, the sum wraps around q_0. Either way the result is
            # wrong without any error being raised (docs/he.md, Modes).
            bound = 1.1 * sum(abs(c) for c in poly.coefficients)
            params = parameters_for_depth(
                depth,
                min_slots=min_slots,
                scale_bits=30,
                headroom_bits=max(1, math.ceil(math.log2(bound))),
            )
        return cls(
            mode=mode,
            packing=packing,
            features=features,
            params=params,
            rotations=circuits.single_rotations(features) if single else (),
            relinearization=poly is not None,
            sigmoid=poly,
            conjugation=single,
        )

    @property
    def ciphertexts_per_query(self) -> int:
        return 1 if self.packing is Packing.SINGLE else self.features

    @property
    def applicants_per_slot(self) -> int:
        """Batch logit mode scores an applicant in each part of a slot, real and imaginary;
        the polynomial of probability mode would mix the two."""
        batch = self.packing is Packing.BATCH
        return 2 if batch and self.mode is Mode.LOGIT else 1

    @property
    def applicants_per_query(self) -> int:
        if self.packing is Packing.SINGLE:
            return 1
        return self.params.slots * self.applicants_per_slot


class ScoringClient:
    """The applicant's side: keys, encoding, encryption, and reading results."""

    def __init__(self, spec: Mapping[str, Any], plan: ScoringPlan, keys: ClientKeys) -> None:
        if (
            keys.params != plan.params
            or tuple(keys.rotations) != plan.rotations
            or keys.conjugation != plan.conjugation
        ):
            raise ConfigurationError(
                "these keys were made for other parameters; run keygen for this mode and model"
            )
        self.spec = dict(spec)
        self.plan = plan
        self.keys = keys
        self.encoder = FeatureEncoder.from_dict(spec["encoder"])

    @classmethod
    def generate(
        cls,
        spec: Mapping[str, Any],
        *,
        mode: Mode = Mode.LOGIT,
        packing: Packing = Packing.SINGLE,
        backend: HEBackend | None = None,
    ) -> ScoringClient:
        """New keys for ``spec`` in ``mode`` and ``packing``."""
        plan = ScoringPlan.for_spec(spec, mode, packing)
        keys = (backend or default_backend()).keygen(
            plan.params,
            rotations=plan.rotations,
            relinearization=plan.relinearization,
            conjugation=plan.conjugation,
        )
        return cls(spec, plan, keys)

    def public_bundle(self) -> bytes:
        return self.keys.public_bundle()

    def encode(self, rows: Iterable[Mapping[str, str]]) -> npt.NDArray[np.float64]:
        return self.encoder.encode(rows)

    def encrypt(self, x: npt.NDArray[np.float64]) -> list[list[bytes]]:
        """Queries for the encoded rows ``x``: a list of requests, each a list of ciphertexts."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.plan.features:
            raise DataError(
                f"expected encoded rows of {self.plan.features} features; got shape {x.shape}"
            )
        slots = self.plan.params.slots
        if self.plan.packing is Packing.SINGLE:
            return [[self.keys.encrypt(circuits.single_layout(row, slots))] for row in x]
        per = self.plan.applicants_per_query
        queries = []
        for i in range(0, len(x), per):
            chunk: npt.NDArray[Any] = x[i : i + per]
            if self.plan.applicants_per_slot == 2:  # the first N/2 real, the rest imaginary
                both = np.zeros((slots, self.plan.features), dtype=np.complex128)
                both.real[: min(slots, len(chunk))] = chunk[:slots]
                both.imag[: max(0, len(chunk) - slots)] = chunk[slots:]
                chunk = both
            queries.append([self.keys.encrypt(chunk[:, j]) for j in range(self.plan.features)])
        return queries

    @property
    def decimals(self) -> int:
        """The decimals :meth:`read` keeps: 6 in logit mode (at a 2^40 scale the noise varies by
        about 6e-8 between queries; the key-dependent offset of key switching, up to 5e-6 in
        the encoder's slot 0, stays below 4e-8 in the result slot N/4: see docs/he.md), 4 in
        probability mode (about 3e-5 at 2^30)."""
        return 6 if self.plan.mode is Mode.LOGIT else 4

    def read(self, results: Sequence[bytes], count: int) -> npt.NDArray[np.float64]:
        """Decrypt the results of :meth:`encrypt`'s queries for ``count`` rows: the logits (logit
        mode) or the server's probabilities (probability mode), rounded to :attr:`decimals`.

        A raw CKKS decryption carries the scheme's noise in its low digits, and decryptions
        that reach the party holding the ciphertexts help it recover the secret key (Li and
        Micciancio's IND-CPA-D attack). Rounding drops most of those digits; still, never send
        decrypted results (or anything computed from them) back to the server."""
        values: list[float] = []
        per = self.plan.applicants_per_query
        single = self.plan.packing is Packing.SINGLE
        first = circuits.result_slot(self.plan.params.slots) if single else 0
        for i, result in enumerate(results):
            if self.plan.applicants_per_slot == 2:
                both = self.keys.decrypt_complex(result)
                slots = np.concatenate([both.real, both.imag])
            else:
                slots = self.keys.decrypt(result)
            take = min(per, count - i * per)
            values.extend(slots[first : first + take].tolist())
        if len(values) != count:
            raise DataError(f"{len(results)} results hold {len(values)} scores, not {count}")
        return np.round(np.asarray(values), self.decimals)

    def scores(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Scores from :meth:`read`: the sigmoid of logits for a logistic model in logit mode,
        the values themselves otherwise."""
        if self.plan.mode is Mode.LOGIT and self.spec.get("kind") == "logistic":
            return sigmoid(values)
        return values


@dataclasses.dataclass
class ScoringSession:
    """A client's evaluation keys on the server, ready to score."""

    plan: ScoringPlan
    evaluator: Evaluator


class Scorer:
    """The lender's side: the model and the circuits. Holds no secret key."""

    def __init__(self, model: LinearModel, backend: HEBackend | None = None) -> None:
        self.model = model
        self.spec = model.public_spec()
        self.backend = backend or default_backend()

    def open_session(self, bundle: bytes, mode: Mode, packing: Packing) -> ScoringSession:
        plan = ScoringPlan.for_spec(self.spec, mode, packing)
        ev = self.backend.evaluator(
            plan.params,
            bundle,
            rotations=plan.rotations,
            relinearization=plan.relinearization,
            conjugation=plan.conjugation,
        )
        return ScoringSession(plan, ev)

    def score(self, session: ScoringSession, ciphertexts: Sequence[bytes]) -> bytes:
        plan = session.plan
        if len(ciphertexts) != plan.ciphertexts_per_query:
            raise DataError(
                f"a {plan.packing.value} query has {plan.ciphertexts_per_query} ciphertext(s); "
                f"got {len(ciphertexts)}"
            )
        ev = session.evaluator
        cts = [ev.load(c) for c in ciphertexts]
        try:
            out = self._evaluate(plan, ev, cts)
        except RuntimeError as exc:  # SEAL refusing an input that passed the checks in load
            raise DataError(f"the ciphertexts cannot be evaluated: {exc}") from None
        return ev.dump(out)

    def _evaluate(self, plan: ScoringPlan, ev: Evaluator, cts: list[Any]) -> Any:
        w, b = self.model.weights, self.model.bias
        poly = plan.sigmoid
        if plan.packing is Packing.SINGLE:
            if poly is None:
                out = circuits.single_linear(ev, cts[0], w, b)
            else:
                out = circuits.single_probability(
                    ev, cts[0], w, b, radius=poly.radius, coefficients=poly.coefficients
                )
        elif poly is None:
            out = circuits.batch_linear(ev, cts, w, b)
        else:
            out = circuits.batch_probability(
                ev, cts, w, b, radius=poly.radius, coefficients=poly.coefficients
            )
        return out
