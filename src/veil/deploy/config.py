"""The federation's settings (``FED.toml``) and the model the coordinator and agents share.

A coordinator reads one TOML file; every relative path in it is relative to the file::

    [federation]
    name = "hospitals"
    clients = ["hospital-a", "hospital-b", "hospital-c"]   # enrolled certificate names
    rounds = 10
    listen = "0.0.0.0:7443"
    state = "coordinator.sqlite"     # checkpoints, one row per round
    stage_seconds = 60               # deadline of each stage of a round
    start_seconds = 300              # while fewer than min_clients are connected, log this often
    min_clients = 3
    max_examples = 100000            # the largest example count a plain update may report

    [model]                          # sent to the agents when they join
    kind = "logistic"                # or "mlp"
    features = 30
    classes = 2
    hidden = [64]                    # mlp only
    init_seed = 0

    [training]
    local_epochs = 1
    learning_rate = 0.1
    batch_size = 0                   # 0: full batch

    [strategy]
    name = "fedavg"                  # fedavg, fedprox, fedadam, fedyogi, fedadagrad
    server_learning_rate = 0.01      # the adaptive optimisers
    mu = 0.01                        # fedprox

    [secure_aggregation]
    graph = "secagg+"                # secagg, secagg+ or none
    dropout = 0.34                   # the dropout rate each round must survive
    clip = 10.0                      # L2 bound of an update without DP
    active = false                   # against a deviating coordinator: signed keys and lists
    roster = "pki/roster.json"       # with active: every hospital's signing key

    [dp]
    mode = "client"                  # none, client (central noise) or distributed
    noise_multiplier = 1.0
    clip_norm = 1.0
    ledger = "ledger.sqlite"
    scope = "hospitals/client"
    epsilon = 8.0                    # the budget set on the scope if it has none
    delta = 1e-5

    [tls]
    dir = "pki"                      # ca.pem, <name>.pem, <name>.key from `veil certs`
    name = "coordinator"
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

from veil.errors import ConfigurationError

__all__ = ["FederationConfig", "ModelSpec", "load_config"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The architecture every party builds (the coordinator also draws its initial values)."""

    kind: str = "logistic"
    features: int = 30
    classes: int = 2
    hidden: tuple[int, ...] = (64,)
    init_seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("logistic", "mlp"):
            raise ConfigurationError(f"model kind must be logistic or mlp, got {self.kind!r}")
        for name in ("features", "classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"model {name} must be an integer >= 1, got {value!r}")
        if self.classes < 2:
            raise ConfigurationError("a classifier needs classes >= 2")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            raw = json.loads(text)
            raw["hidden"] = tuple(raw.get("hidden", (64,)))
            return cls(**raw)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"the coordinator sent an unusable model: {exc}") from None

    def build(self) -> Any:
        """The ``torch`` module, initialised from ``init_seed``."""
        import torch

        from veil.federated.models import LogisticRegression, Mlp

        outputs = 1 if self.classes == 2 else self.classes
        torch.manual_seed(self.init_seed)
        if self.kind == "logistic":
            return LogisticRegression(self.features, outputs)
        return Mlp(self.features, outputs, hidden=self.hidden)


@dataclasses.dataclass(frozen=True)
class FederationConfig:
    """Everything ``veil fl serve`` needs (see the module docstring)."""

    name: str
    clients: tuple[str, ...]
    rounds: int
    model: ModelSpec
    listen: str = "127.0.0.1:7443"
    state: Path = Path("coordinator.sqlite")
    stage_seconds: float = 60.0
    start_seconds: float = 300.0
    min_clients: int = 1
    max_examples: int | None = None
    seed: int | None = None
    local_epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int | None = None
    strategy: str = "fedavg"
    server_learning_rate: float = 0.01
    mu: float = 0.01
    secure: str = "none"
    secure_dropout: float = 0.1
    secure_clip: float = 10.0
    secure_active: bool = False
    roster: Path | None = None
    dp: str = "none"
    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    ledger: Path | None = None
    scope: str = ""
    epsilon: float | None = None
    delta: float = 1e-5
    tls_dir: Path | None = None
    tls_name: str = "coordinator"

    def __post_init__(self) -> None:
        if not self.clients or len(set(self.clients)) != len(self.clients):
            raise ConfigurationError("federation.clients must list distinct enrolled names")
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigurationError(f"federation.rounds must be >= 1, got {self.rounds!r}")
        if self.secure not in ("none", "secagg", "secagg+"):
            raise ConfigurationError(
                f"secure_aggregation.graph must be none, secagg or secagg+, got {self.secure!r}"
            )
        if self.dp not in ("none", "client", "distributed"):
            raise ConfigurationError(
                f"dp.mode must be none, client or distributed, got {self.dp!r}"
            )
        if self.secure_active and (self.secure == "none" or self.roster is None):
            raise ConfigurationError(
                "secure_aggregation.active needs a graph (secagg or secagg+) and the roster "
                "of the hospitals' signing keys (secure_aggregation.roster)"
            )
        if self.dp == "distributed" and self.secure == "none":
            raise ConfigurationError("dp.mode = distributed needs secure aggregation")
        if self.dp != "none" and (self.ledger is None or not self.scope):
            raise ConfigurationError("a private federation needs dp.ledger and dp.scope")
        if self.stage_seconds <= 0 or self.start_seconds <= 0:
            raise ConfigurationError("stage_seconds and start_seconds must be > 0")
        if not 1 <= self.min_clients <= len(self.clients):
            raise ConfigurationError(
                f"min_clients must be between 1 and {len(self.clients)}, got {self.min_clients}"
            )
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigurationError(f"max_examples must be >= 1, got {self.max_examples}")
        if self.strategy not in ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad"):
            raise ConfigurationError(f"unknown strategy {self.strategy!r}")

    @property
    def private(self) -> bool:
        return self.dp != "none"


_TABLES: dict[str, dict[str, tuple[str, tuple[type, ...]]]] = {
    "federation": {
        "name": ("name", (str,)),
        "clients": ("clients", (list,)),
        "rounds": ("rounds", (int,)),
        "listen": ("listen", (str,)),
        "state": ("state", (str,)),
        "stage_seconds": ("stage_seconds", (int, float)),
        "start_seconds": ("start_seconds", (int, float)),
        "min_clients": ("min_clients", (int,)),
        "max_examples": ("max_examples", (int,)),
        "seed": ("seed", (int,)),
    },
    "training": {
        "local_epochs": ("local_epochs", (int,)),
        "learning_rate": ("learning_rate", (int, float)),
        "batch_size": ("batch_size", (int,)),
    },
    "strategy": {
        "name": ("strategy", (str,)),
        "server_learning_rate": ("server_learning_rate", (int, float)),
        "mu": ("mu", (int, float)),
    },
    "secure_aggregation": {
        "graph": ("secure", (str,)),
        "dropout": ("secure_dropout", (int, float)),
        "clip": ("secure_clip", (int, float)),
        "active": ("secure_active", (bool,)),
        "roster": ("roster", (str,)),
    },
    "dp": {
        "mode": ("dp", (str,)),
        "noise_multiplier": ("noise_multiplier", (int, float)),
        "clip_norm": ("clip_norm", (int, float)),
        "ledger": ("ledger", (str,)),
        "scope": ("scope", (str,)),
        "epsilon": ("epsilon", (int, float)),
        "delta": ("delta", (int, float)),
    },
    "tls": {"dir": ("tls_dir", (str,)), "name": ("tls_name", (str,))},
}
_MODEL_KEYS = {"kind", "features", "classes", "hidden", "init_seed"}
_PATHS = {"state", "ledger", "tls_dir", "roster"}


def load_config(path: str | Path) -> FederationConfig:
    """Read and check a federation file; one clear error for anything wrong in it."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
    unknown_tables = sorted(set(raw) - set(_TABLES) - {"model"})
    if unknown_tables:
        raise ConfigurationError(f"{path}: unknown table(s) {', '.join(unknown_tables)}")
    fields: dict[str, Any] = {}
    for table, keys in _TABLES.items():
        section = raw.get(table, {})
        unknown = sorted(set(section) - set(keys))
        if unknown:
            raise ConfigurationError(
                f"{path}: unknown setting(s) [{table}] {', '.join(unknown)}; "
                f"known: {', '.join(sorted(keys))}"
            )
        for key, value in section.items():
            name, types = keys[key]
            if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
                raise ConfigurationError(
                    f"{path}: [{table}] {key} has the wrong type ({type(value).__name__})"
                )
            if name in _PATHS:
                value = (path.parent / str(value)).resolve()
            fields[name] = value
    model = raw.get("model", {})
    unknown = sorted(set(model) - _MODEL_KEYS)
    if unknown:
        raise ConfigurationError(f"{path}: unknown setting(s) [model] {', '.join(unknown)}")
    if "hidden" in model:
        model["hidden"] = tuple(model["hidden"])
    for required in ("name", "clients", "rounds"):
        if required not in fields:
            raise ConfigurationError(f"{path}: [federation] {required} is required")
    if not all(isinstance(c, str) and c for c in fields["clients"]):
        raise ConfigurationError(f"{path}: [federation] clients must be names (strings)")
    fields["clients"] = tuple(fields["clients"])
    if "batch_size" in fields:
        fields["batch_size"] = fields["batch_size"] or None
    try:
        spec = ModelSpec(**model)
    except TypeError as exc:
        raise ConfigurationError(f"{path}: [model] {exc}") from None
    return FederationConfig(model=spec, **fields)
