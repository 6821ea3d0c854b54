"""Secure aggregation (Bonawitz et al. 2017; Bell et al. 2020): the building blocks.

So far: the cryptographic primitives behind one module (:mod:`veil.secagg.crypto`), Shamir
secret sharing of 32-byte secrets over a prime field (:mod:`veil.secagg.shamir`), and the
quantisation of float updates into ``Z_2^32`` (:mod:`veil.secagg.quantize`), and the
semi-honest protocol with dropout recovery as client and server state machines
(:mod:`veil.secagg.protocol`). Still to come: SecAgg+'s sparse neighbour graphs wired to the
federated round, the active-adversary mode, and distributed DP.
"""

from veil.secagg import crypto, shamir
from veil.secagg.crypto import (
    AgreementKey,
    SigningKey,
    derive,
    mask,
    open_sealed,
    random_seed,
    seal,
    verify,
)
from veil.secagg.protocol import (
    AdvertiseKeys,
    ClientStage,
    KeyDirectory,
    MaskedInput,
    SecAggClient,
    SecAggServer,
    ShareKeys,
    SharesForYou,
    UnmaskRequest,
    UnmaskShares,
    neighbours_complete,
    neighbours_harary,
)
from veil.secagg.quantize import Quantizer
from veil.secagg.shamir import PRIME, SECRET_BYTES, combine, lagrange_at_zero, split

__all__ = [
    "PRIME",
    "SECRET_BYTES",
    "AdvertiseKeys",
    "AgreementKey",
    "ClientStage",
    "KeyDirectory",
    "MaskedInput",
    "Quantizer",
    "SecAggClient",
    "SecAggServer",
    "ShareKeys",
    "SharesForYou",
    "SigningKey",
    "UnmaskRequest",
    "UnmaskShares",
    "combine",
    "crypto",
    "derive",
    "lagrange_at_zero",
    "mask",
    "neighbours_complete",
    "neighbours_harary",
    "open_sealed",
    "random_seed",
    "seal",
    "shamir",
    "split",
    "verify",
]
