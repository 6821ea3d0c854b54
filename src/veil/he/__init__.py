"""Encrypted scoring with homomorphic encryption (CKKS): a lender scores applicants' features
without seeing them and without holding a secret key.

- :mod:`veil.he.params`: CKKS parameters at 128-bit security (HomomorphicEncryption.org table),
  chosen from a circuit's depth; over-budget parameters are refused.
- :mod:`veil.he.backend`: the backend interface, with TenSEAL (Microsoft SEAL) as the default.
- :mod:`veil.he.model`: linear and logistic models trained with scikit-learn (or scorecards
  built elsewhere), their model file, and the feature encoding client and server share.
- :mod:`veil.he.sigmoid`: the sigmoid polynomial fitted to a model's logit range.
- :mod:`veil.he.circuits`: the scoring circuits (no slot but the result is readable).
- :mod:`veil.he.scoring`: client and server sides without transport.
- :mod:`veil.he.service`: the gRPC service (several worker processes) and its client SDK.
- :mod:`veil.he.scenarios`: German credit end to end, as ``veil demo`` shows it.

Needs the ``he`` extra (TenSEAL, grpcio, protobuf, scikit-learn): ``pip install 'veil[he]'``.
"""

from veil.errors import MissingDependencyError

try:
    import tenseal  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("tenseal", "he") from None

from veil.he.backend import ClientKeys, Evaluator, HEBackend, TenSealBackend, default_backend
from veil.he.model import (
    FeatureEncoder,
    LinearModel,
    ModelKind,
    read_rows,
    scorecard_model,
    train_model,
)
from veil.he.params import (
    MAX_MODULUS_BITS_128,
    CkksParameters,
    check_security,
    parameters_for_depth,
    parameters_for_sums,
)
from veil.he.scoring import Mode, Packing, Scorer, ScoringClient, ScoringPlan, ScoringSession
from veil.he.sigmoid import FitMethod, SigmoidPolynomial, fit_sigmoid, sigmoid

__all__ = [
    "MAX_MODULUS_BITS_128",
    "CkksParameters",
    "ClientKeys",
    "Evaluator",
    "FeatureEncoder",
    "FitMethod",
    "HEBackend",
    "LinearModel",
    "Mode",
    "ModelKind",
    "Packing",
    "Scorer",
    "ScoringClient",
    "ScoringPlan",
    "ScoringSession",
    "SigmoidPolynomial",
    "TenSealBackend",
    "check_security",
    "default_backend",
    "fit_sigmoid",
    "parameters_for_depth",
    "parameters_for_sums",
    "read_rows",
    "scorecard_model",
    "sigmoid",
    "train_model",
]
