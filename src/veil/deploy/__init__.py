"""Federated deployment over gRPC: the coordinator and the client agents.

The coordinator (:class:`Coordinator`, ``veil fl serve``) and each hospital's agent
(:class:`Agent`, ``veil fl join``) move the same state machines as the simulator; this package
only carries their messages (``proto/federation.proto``), authenticates the parties with mutual
TLS, enforces deadlines and size limits, and checkpoints the coordinator after every round.
See ``docs/deploy.md``.
"""

from veil.deploy.agent import Agent, AgentReport, load_data
from veil.deploy.config import FederationConfig, ModelSpec, load_config
from veil.deploy.coordinator import Coordinator
from veil.deploy.store import StateStore

__all__ = [
    "Agent",
    "AgentReport",
    "Coordinator",
    "FederationConfig",
    "ModelSpec",
    "StateStore",
    "load_config",
    "load_data",
]
