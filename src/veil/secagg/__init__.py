"""Secure aggregation (Bonawitz et al. 2017; Bell et al. 2020): the building blocks.

So far: the cryptographic primitives behind one module (:mod:`veil.secagg.crypto`), Shamir
secret sharing of 32-byte secrets over a prime field (:mod:`veil.secagg.shamir`), and the
quantisation of float updates into ``Z_2^32`` (:mod:`veil.secagg.quantize`). The protocol's
state machines and distributed DP build on them.
"""

from veil.secagg import crypto, shamir
from veil.secagg.crypto import AgreementKey, SigningKey, derive, mask, open_sealed, seal, verify
from veil.secagg.quantize import Quantizer
from veil.secagg.shamir import PRIME, SECRET_BYTES, combine, lagrange_at_zero, split

__all__ = [
    "PRIME",
    "SECRET_BYTES",
    "AgreementKey",
    "Quantizer",
    "SigningKey",
    "combine",
    "crypto",
    "derive",
    "lagrange_at_zero",
    "mask",
    "open_sealed",
    "seal",
    "shamir",
    "split",
    "verify",
]
