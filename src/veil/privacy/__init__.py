"""The mathematics of privacy: events, secure noise, mechanisms, accountants, calibration.

Nothing here touches storage or I/O; :mod:`veil.ledger` persists what this package computes.
"""

from veil.privacy.accountants import (
    Accountant,
    AccountingMethod,
    NeighboringRelation,
    PldAccountant,
    PureDpAccountant,
    RdpAccountant,
    TightestAccountant,
    ZCdpAccountant,
    make_accountant,
)
from veil.privacy.calibration import (
    calibrate,
    discrete_gaussian_sigma,
    dpsgd_noise_multiplier,
    gaussian_noise_multiplier,
    laplace_scale,
)
from veil.privacy.events import (
    ApproxDpEvent,
    ComposedEvent,
    DiscreteGaussianEvent,
    DiscreteLaplaceEvent,
    Event,
    ExponentialMechanismEvent,
    GaussianEvent,
    LaplaceEvent,
    NonPrivateEvent,
    NoOpEvent,
    PoissonSampledEvent,
    PureDpEvent,
    SampledWithoutReplacementEvent,
    SelfComposedEvent,
    ZCdpEvent,
    event_from_dict,
    event_from_json,
)
from veil.privacy.mechanisms import Domain, GaussianMechanism, LaplaceMechanism, Mechanism
from veil.privacy.random import InsecureSeededRandom, RandomSource, SecureRandom, default_random
from veil.privacy.samplers import discrete_gaussian, discrete_laplace

__all__ = [
    "Accountant",
    "AccountingMethod",
    "ApproxDpEvent",
    "ComposedEvent",
    "DiscreteGaussianEvent",
    "DiscreteLaplaceEvent",
    "Domain",
    "Event",
    "ExponentialMechanismEvent",
    "GaussianEvent",
    "GaussianMechanism",
    "InsecureSeededRandom",
    "LaplaceEvent",
    "LaplaceMechanism",
    "Mechanism",
    "NeighboringRelation",
    "NoOpEvent",
    "NonPrivateEvent",
    "PldAccountant",
    "PoissonSampledEvent",
    "PureDpAccountant",
    "PureDpEvent",
    "RandomSource",
    "RdpAccountant",
    "SampledWithoutReplacementEvent",
    "SecureRandom",
    "SelfComposedEvent",
    "TightestAccountant",
    "ZCdpAccountant",
    "ZCdpEvent",
    "calibrate",
    "default_random",
    "discrete_gaussian",
    "discrete_gaussian_sigma",
    "discrete_laplace",
    "dpsgd_noise_multiplier",
    "event_from_dict",
    "event_from_json",
    "gaussian_noise_multiplier",
    "laplace_scale",
    "make_accountant",
]
