from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_TRAIN: _ClassVar[TaskKind]
    TASK_WAIT: _ClassVar[TaskKind]
    TASK_FINISHED: _ClassVar[TaskKind]
TASK_UNSPECIFIED: TaskKind
TASK_TRAIN: TaskKind
TASK_WAIT: TaskKind
TASK_FINISHED: TaskKind

class JoinRequest(_message.Message):
    __slots__ = ("agent_version",)
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    def __init__(self, agent_version: _Optional[str] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("federation", "client_id", "model_json", "rounds", "round", "secure")
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_JSON_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    federation: str
    client_id: str
    model_json: str
    rounds: int
    round: int
    secure: bool
    def __init__(self, federation: _Optional[str] = ..., client_id: _Optional[str] = ..., model_json: _Optional[str] = ..., rounds: _Optional[int] = ..., round: _Optional[int] = ..., secure: _Optional[bool] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("after_round", "wait_seconds")
    AFTER_ROUND_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    after_round: int
    wait_seconds: float
    def __init__(self, after_round: _Optional[int] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class TrainConfig(_message.Message):
    __slots__ = ("local_epochs", "learning_rate", "batch_size", "proximal_mu", "clip_norm")
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROXIMAL_MU_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    local_epochs: int
    learning_rate: float
    batch_size: int
    proximal_mu: float
    clip_norm: float
    def __init__(self, local_epochs: _Optional[int] = ..., learning_rate: _Optional[float] = ..., batch_size: _Optional[int] = ..., proximal_mu: _Optional[float] = ..., clip_norm: _Optional[float] = ...) -> None: ...

class RoundPlan(_message.Message):
    __slots__ = ("graph", "clients", "degree", "threshold", "abort_probability", "min_survivors")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    DEGREE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ABORT_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    MIN_SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    graph: str
    clients: int
    degree: int
    threshold: int
    abort_probability: float
    min_survivors: int
    def __init__(self, graph: _Optional[str] = ..., clients: _Optional[int] = ..., degree: _Optional[int] = ..., threshold: _Optional[int] = ..., abort_probability: _Optional[float] = ..., min_survivors: _Optional[int] = ...) -> None: ...

class SecureRoundSpec(_message.Message):
    __slots__ = ("session", "round", "clients", "plan", "encoding", "dimension", "clip", "max_weight", "metric_keys", "metric_bound", "granularity", "client_sigma", "verify_keys", "min_survivors")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    MAX_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    METRIC_KEYS_FIELD_NUMBER: _ClassVar[int]
    METRIC_BOUND_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SIGMA_FIELD_NUMBER: _ClassVar[int]
    VERIFY_KEYS_FIELD_NUMBER: _ClassVar[int]
    MIN_SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    session: bytes
    round: int
    clients: _containers.RepeatedScalarFieldContainer[str]
    plan: RoundPlan
    encoding: str
    dimension: int
    clip: float
    max_weight: int
    metric_keys: _containers.RepeatedScalarFieldContainer[str]
    metric_bound: float
    granularity: float
    client_sigma: float
    verify_keys: _containers.RepeatedScalarFieldContainer[bytes]
    min_survivors: int
    def __init__(self, session: _Optional[bytes] = ..., round: _Optional[int] = ..., clients: _Optional[_Iterable[str]] = ..., plan: _Optional[_Union[RoundPlan, _Mapping]] = ..., encoding: _Optional[str] = ..., dimension: _Optional[int] = ..., clip: _Optional[float] = ..., max_weight: _Optional[int] = ..., metric_keys: _Optional[_Iterable[str]] = ..., metric_bound: _Optional[float] = ..., granularity: _Optional[float] = ..., client_sigma: _Optional[float] = ..., verify_keys: _Optional[_Iterable[bytes]] = ..., min_survivors: _Optional[int] = ...) -> None: ...

class TaskHeader(_message.Message):
    __slots__ = ("kind", "round", "client_id", "config", "secure", "dtype", "length", "stage_seconds")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    STAGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    kind: TaskKind
    round: int
    client_id: str
    config: TrainConfig
    secure: SecureRoundSpec
    dtype: str
    length: int
    stage_seconds: float
    def __init__(self, kind: _Optional[_Union[TaskKind, str]] = ..., round: _Optional[int] = ..., client_id: _Optional[str] = ..., config: _Optional[_Union[TrainConfig, _Mapping]] = ..., secure: _Optional[_Union[SecureRoundSpec, _Mapping]] = ..., dtype: _Optional[str] = ..., length: _Optional[int] = ..., stage_seconds: _Optional[float] = ...) -> None: ...

class ChunkHeader(_message.Message):
    __slots__ = ("round", "dtype", "length", "num_examples", "metrics", "client")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    round: int
    dtype: str
    length: int
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    client: int
    def __init__(self, round: _Optional[int] = ..., dtype: _Optional[str] = ..., length: _Optional[int] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., client: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("task", "header", "data")
    TASK_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    task: TaskHeader
    header: ChunkHeader
    data: bytes
    def __init__(self, task: _Optional[_Union[TaskHeader, _Mapping]] = ..., header: _Optional[_Union[ChunkHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class AdvertiseKeys(_message.Message):
    __slots__ = ("round", "client", "mask_key", "share_key", "signature")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    round: int
    client: int
    mask_key: bytes
    share_key: bytes
    signature: bytes
    def __init__(self, round: _Optional[int] = ..., client: _Optional[int] = ..., mask_key: _Optional[bytes] = ..., share_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Neighbours(_message.Message):
    __slots__ = ("client", "neighbours")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    client: int
    neighbours: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, client: _Optional[int] = ..., neighbours: _Optional[_Iterable[int]] = ...) -> None: ...

class KeyDirectory(_message.Message):
    __slots__ = ("keys", "neighbours", "threshold")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[AdvertiseKeys]
    neighbours: _containers.RepeatedCompositeFieldContainer[Neighbours]
    threshold: int
    def __init__(self, keys: _Optional[_Iterable[_Union[AdvertiseKeys, _Mapping]]] = ..., neighbours: _Optional[_Iterable[_Union[Neighbours, _Mapping]]] = ..., threshold: _Optional[int] = ...) -> None: ...

class Sealed(_message.Message):
    __slots__ = ("peer", "ciphertext")
    PEER_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    peer: int
    ciphertext: bytes
    def __init__(self, peer: _Optional[int] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class ShareKeys(_message.Message):
    __slots__ = ("round", "client", "sealed", "seed_commitment")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    SEED_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    round: int
    client: int
    sealed: _containers.RepeatedCompositeFieldContainer[Sealed]
    seed_commitment: bytes
    def __init__(self, round: _Optional[int] = ..., client: _Optional[int] = ..., sealed: _Optional[_Iterable[_Union[Sealed, _Mapping]]] = ..., seed_commitment: _Optional[bytes] = ...) -> None: ...

class SharesForYou(_message.Message):
    __slots__ = ("sealed",)
    SEALED_FIELD_NUMBER: _ClassVar[int]
    sealed: _containers.RepeatedCompositeFieldContainer[Sealed]
    def __init__(self, sealed: _Optional[_Iterable[_Union[Sealed, _Mapping]]] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("survivors", "dropped")
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[int]
    dropped: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, survivors: _Optional[_Iterable[int]] = ..., dropped: _Optional[_Iterable[int]] = ...) -> None: ...

class ConsistencyCheck(_message.Message):
    __slots__ = ("round", "client", "signature")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    round: int
    client: int
    signature: bytes
    def __init__(self, round: _Optional[int] = ..., client: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Signature(_message.Message):
    __slots__ = ("client", "signature")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    client: int
    signature: bytes
    def __init__(self, client: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ConsistencyProof(_message.Message):
    __slots__ = ("request", "signatures")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    request: UnmaskRequest
    signatures: _containers.RepeatedCompositeFieldContainer[Signature]
    def __init__(self, request: _Optional[_Union[UnmaskRequest, _Mapping]] = ..., signatures: _Optional[_Iterable[_Union[Signature, _Mapping]]] = ...) -> None: ...

class Share(_message.Message):
    __slots__ = ("peer", "value")
    PEER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    peer: int
    value: bytes
    def __init__(self, peer: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...

class UnmaskShares(_message.Message):
    __slots__ = ("round", "client", "seed_shares", "key_shares")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    SEED_SHARES_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    round: int
    client: int
    seed_shares: _containers.RepeatedCompositeFieldContainer[Share]
    key_shares: _containers.RepeatedCompositeFieldContainer[Share]
    def __init__(self, round: _Optional[int] = ..., client: _Optional[int] = ..., seed_shares: _Optional[_Iterable[_Union[Share, _Mapping]]] = ..., key_shares: _Optional[_Iterable[_Union[Share, _Mapping]]] = ...) -> None: ...

class RoundDone(_message.Message):
    __slots__ = ("round", "aggregated")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    AGGREGATED_FIELD_NUMBER: _ClassVar[int]
    round: int
    aggregated: bool
    def __init__(self, round: _Optional[int] = ..., aggregated: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...
