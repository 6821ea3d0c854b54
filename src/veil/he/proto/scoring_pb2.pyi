from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_LOGIT: _ClassVar[Mode]
    MODE_PROBABILITY: _ClassVar[Mode]

class Packing(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PACKING_SINGLE: _ClassVar[Packing]
    PACKING_BATCH: _ClassVar[Packing]
MODE_LOGIT: Mode
MODE_PROBABILITY: Mode
PACKING_SINGLE: Packing
PACKING_BATCH: Packing

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeReply(_message.Message):
    __slots__ = ("spec_json", "max_key_bytes", "chunk_bytes")
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    MAX_KEY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    spec_json: str
    max_key_bytes: int
    chunk_bytes: int
    def __init__(self, spec_json: _Optional[str] = ..., max_key_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class KeyChunk(_message.Message):
    __slots__ = ("mode", "packing", "total_size", "data")
    MODE_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    mode: Mode
    packing: Packing
    total_size: int
    data: bytes
    def __init__(self, mode: _Optional[_Union[Mode, str]] = ..., packing: _Optional[_Union[Packing, str]] = ..., total_size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("session_id", "ciphertexts")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ciphertexts: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, session_id: _Optional[str] = ..., ciphertexts: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ScoreReply(_message.Message):
    __slots__ = ("ciphertext",)
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    ciphertext: bytes
    def __init__(self, ciphertext: _Optional[bytes] = ...) -> None: ...

class Closed(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
