"""Secure aggregation (Bonawitz et al. 2017; Bell et al. 2020).

The cryptographic primitives behind one module (:mod:`veil.secagg.crypto`), Shamir secret
sharing of 32-byte secrets over a prime field (:mod:`veil.secagg.shamir`), the quantisation of
float updates into ``Z_2^32`` (:mod:`veil.secagg.quantize`), the protocol with dropout recovery
as client and server state machines, semi-honest or active (:mod:`veil.secagg.protocol`), and
the choice of SecAgg+'s graph and threshold (:mod:`veil.secagg.planning`). Federated rounds use
it through :mod:`veil.federated.secure`.
"""

from veil.secagg import crypto, planning, shamir
from veil.secagg.crypto import (
    AgreementKey,
    Masker,
    SigningKey,
    derive,
    mask,
    open_sealed,
    random_seed,
    seal,
    verify,
)
from veil.secagg.planning import RoundPlan, abort_probability, plan_round, survivors_quantile
from veil.secagg.protocol import (
    AdvertiseKeys,
    ClientStage,
    ConsistencyCheck,
    ConsistencyProof,
    Expectation,
    KeyDirectory,
    MaskedInput,
    SecAggClient,
    SecAggServer,
    ShareKeys,
    SharesForYou,
    UnmaskRequest,
    UnmaskShares,
    active_threshold_ok,
    derived_graph,
    neighbours_complete,
    neighbours_harary,
)
from veil.secagg.quantize import Quantizer, from_ring, stochastic_round, to_ring
from veil.secagg.shamir import PRIME, SECRET_BYTES, combine, lagrange_at_zero, split

__all__ = [
    "PRIME",
    "SECRET_BYTES",
    "AdvertiseKeys",
    "AgreementKey",
    "ClientStage",
    "ConsistencyCheck",
    "ConsistencyProof",
    "Expectation",
    "KeyDirectory",
    "MaskedInput",
    "Masker",
    "Quantizer",
    "RoundPlan",
    "SecAggClient",
    "SecAggServer",
    "ShareKeys",
    "SharesForYou",
    "SigningKey",
    "UnmaskRequest",
    "UnmaskShares",
    "abort_probability",
    "active_threshold_ok",
    "combine",
    "crypto",
    "derive",
    "derived_graph",
    "from_ring",
    "lagrange_at_zero",
    "mask",
    "neighbours_complete",
    "neighbours_harary",
    "open_sealed",
    "plan_round",
    "planning",
    "random_seed",
    "seal",
    "shamir",
    "split",
    "stochastic_round",
    "survivors_quantile",
    "to_ring",
    "verify",
]
