"""Federated learning: the round protocol, strategies, client training, DP, and the simulator.

The round is a state machine with no I/O (:class:`FederatedServer`) over typed, frozen messages;
the simulator (:class:`Simulation`) drives it in one process, training clients together with
``torch.func``; the gRPC deployment drives the same machine over the network. Every private
round or local training is charged to the privacy ledger before any noise is drawn.

Needs the ``federated`` extra (PyTorch, scikit-learn): ``pip install 'veil[federated]'``.
"""

from veil.errors import MissingDependencyError

try:
    import torch  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("torch", "federated") from None

from veil.federated import data, models
from veil.federated.data import FederatedData
from veil.federated.dp import AdaptiveClipping, DpAggregator, DpSgd, NoisySum, PreparedNoise
from veil.federated.messages import (
    CohortResult,
    TrainConfig,
    TrainFailure,
    TrainInstruction,
    TrainResult,
)
from veil.federated.protocol import ClientSampling, FederatedServer, RoundOutcome, Stage
from veil.federated.secure import (
    Encoding,
    RoundGuard,
    SecureAggregation,
    SecureClient,
    SecureRoundSpec,
    SecureServerRound,
)
from veil.federated.simulation import RoundRecord, Simulation, SimulationResult
from veil.federated.strategies import (
    Adagrad,
    Adam,
    Aggregator,
    CoordinateMedian,
    Krum,
    RoundContext,
    ServerOptimizer,
    Sgd,
    Strategy,
    SummedUpdates,
    TrimmedMean,
    WeightedMean,
    Yogi,
    fedadagrad,
    fedadam,
    fedavg,
    fedprox,
    fedyogi,
)
from veil.federated.training import (
    ClientData,
    Cohort,
    LocalOutcome,
    ParamLayout,
    clipped_gradient_sum,
    clipped_gradient_sum_vmap,
    evaluate,
    per_sample_gradients,
    poisson_sample,
    train_central,
    train_clients,
    train_dpsgd,
)

__all__ = [
    "Adagrad",
    "Adam",
    "AdaptiveClipping",
    "Aggregator",
    "ClientData",
    "ClientSampling",
    "Cohort",
    "CohortResult",
    "CoordinateMedian",
    "DpAggregator",
    "DpSgd",
    "Encoding",
    "FederatedData",
    "FederatedServer",
    "Krum",
    "LocalOutcome",
    "NoisySum",
    "ParamLayout",
    "PreparedNoise",
    "RoundContext",
    "RoundGuard",
    "RoundOutcome",
    "RoundRecord",
    "SecureAggregation",
    "SecureClient",
    "SecureRoundSpec",
    "SecureServerRound",
    "ServerOptimizer",
    "Sgd",
    "Simulation",
    "SimulationResult",
    "Stage",
    "Strategy",
    "SummedUpdates",
    "TrainConfig",
    "TrainFailure",
    "TrainInstruction",
    "TrainResult",
    "TrimmedMean",
    "WeightedMean",
    "Yogi",
    "clipped_gradient_sum",
    "clipped_gradient_sum_vmap",
    "data",
    "evaluate",
    "fedadagrad",
    "fedadam",
    "fedavg",
    "fedprox",
    "fedyogi",
    "models",
    "per_sample_gradients",
    "poisson_sample",
    "train_central",
    "train_clients",
    "train_dpsgd",
]
