"""Wire-protocol vocabulary (DESIGN.md section 2, a contract): message types, error codes,
the SpearMessage envelope and the typed payload records.

Standard library only. Every record is a frozen dataclass that validates itself on
construction and raises :class:`LocalProtocolError` when built wrongly; the codec decodes
untrusted bytes separately and raises :class:`RemoteProtocolError` for those.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import LocalProtocolError

__all__ = [
    "MAX_REQUEST_ID",
    "PROTOCOL_VERSION",
    "AuthRequest",
    "AuthResponse",
    "ConnectionClose",
    "Error",
    "ErrorCode",
    "ExecuteRequest",
    "ExecuteResponse",
    "Heartbeat",
    "MessageType",
    "Payload",
    "Signal",
    "SpearMessage",
    "StreamData",
]

PROTOCOL_VERSION = 1
MAX_REQUEST_ID = (1 << 64) - 1


class MessageType(enum.IntEnum):
    """``message_type`` values on the wire."""

    AUTH_REQUEST = 1
    AUTH_RESPONSE = 2
    EXECUTE_REQUEST = 3
    EXECUTE_RESPONSE = 4
    SIGNAL = 5
    HEARTBEAT = 6
    ERROR = 7
    STREAM_DATA = 8
    CONNECTION_CLOSE = 9


class ErrorCode(str, enum.Enum):
    """``code`` values of ERROR messages."""

    NOT_AUTHENTICATED = "not_authenticated"
    AUTH_FAILED = "auth_failed"
    BAD_MESSAGE = "bad_message"
    UNSUPPORTED_VERSION = "unsupported_version"
    TOO_LARGE = "too_large"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    UNKNOWN_REQUEST = "unknown_request"
    TIMEOUT = "timeout"
    INTERNAL = "internal"


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise LocalProtocolError(what)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_opt_str(value: object) -> bool:
    return value is None or isinstance(value, str)


@dataclass(frozen=True)
class SpearMessage:
    """The envelope: one ZeroMQ frame is one msgpack map of exactly these five keys."""

    message_type: MessageType
    request_id: int
    timestamp: float
    payload: bytes
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _require(isinstance(self.message_type, MessageType), "message_type must be a MessageType")
        _require(_is_int(self.request_id) and 0 <= self.request_id <= MAX_REQUEST_ID,
                 "request_id must be an int in 0..2**64-1")
        _require(isinstance(self.timestamp, float) and math.isfinite(self.timestamp),
                 "timestamp must be a finite float")
        _require(isinstance(self.payload, bytes), "payload must be bytes")
        _require(_is_int(self.version) and self.version >= 0, "version must be an int >= 0")


class Payload:
    """Base of the typed payload records; ``TYPE`` ties each to its MessageType.

    Frozen dataclasses without ``slots``: every instance imports these at start-up, and a
    slotted dataclass is built twice."""

    TYPE: ClassVar[MessageType]


@dataclass(frozen=True)
class AuthRequest(Payload):
    TYPE: ClassVar[MessageType] = MessageType.AUTH_REQUEST
    instance_id: str
    token: str = field(repr=False)  # the secret: never printed
    client_version: str
    client_type: str
    extra_params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(isinstance(self.instance_id, str), "instance_id must be a str")
        _require(isinstance(self.token, str), "token must be a str")
        _require(isinstance(self.client_version, str), "client_version must be a str")
        _require(isinstance(self.client_type, str), "client_type must be a str")
        _require(isinstance(self.extra_params, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.extra_params.items()),
            "extra_params must map str to str")


@dataclass(frozen=True)
class AuthResponse(Payload):
    TYPE: ClassVar[MessageType] = MessageType.AUTH_RESPONSE
    success: bool
    session_id: str | None
    error_message: str | None
    server_version: str
    supported_features: tuple[str, ...]
    heartbeat_interval: float

    def __post_init__(self) -> None:
        _require(isinstance(self.success, bool), "success must be a bool")
        _require(_is_opt_str(self.session_id), "session_id must be a str or None")
        _require(_is_opt_str(self.error_message), "error_message must be a str or None")
        _require(isinstance(self.server_version, str), "server_version must be a str")
        object.__setattr__(self, "supported_features", tuple(self.supported_features))
        _require(all(isinstance(f, str) for f in self.supported_features),
                 "supported_features must be strs")
        _require(isinstance(self.heartbeat_interval, (int, float))
                 and not isinstance(self.heartbeat_interval, bool)
                 and math.isfinite(self.heartbeat_interval) and self.heartbeat_interval > 0,
                 "heartbeat_interval must be a positive number")
        # the contract's type is float: never put an int on the wire
        object.__setattr__(self, "heartbeat_interval", float(self.heartbeat_interval))


@dataclass(frozen=True)
class ExecuteRequest(Payload):
    TYPE: ClassVar[MessageType] = MessageType.EXECUTE_REQUEST
    method: str
    data: bytes
    deadline: float | None = None

    def __post_init__(self) -> None:
        _require(isinstance(self.method, str), "method must be a str")
        _require(isinstance(self.data, bytes), "data must be bytes")
        _require(self.deadline is None or (isinstance(self.deadline, float)
                                           and math.isfinite(self.deadline)),
                 "deadline must be a finite float or None")


@dataclass(frozen=True)
class ExecuteResponse(Payload):
    TYPE: ClassVar[MessageType] = MessageType.EXECUTE_RESPONSE
    ok: bool
    data: bytes
    error: str | None = None
    processing_time: float | None = None
    """The handler's own time in seconds (DESIGN.md section 12); older peers omit it."""

    def __post_init__(self) -> None:
        _require(isinstance(self.ok, bool), "ok must be a bool")
        _require(isinstance(self.data, bytes), "data must be bytes")
        _require(_is_opt_str(self.error), "error must be a str or None")
        t = self.processing_time
        _require(t is None or (isinstance(t, (int, float)) and not isinstance(t, bool)
                               and math.isfinite(t) and t >= 0),
                 "processing_time must be a finite float >= 0 or None")


@dataclass(frozen=True)
class Signal(Payload):
    TYPE: ClassVar[MessageType] = MessageType.SIGNAL
    KNOWN: ClassVar[frozenset[str]] = frozenset({"stop", "drain"})
    signal: str
    reason: str = ""

    def __post_init__(self) -> None:
        _require(isinstance(self.signal, str), "signal must be a str")
        _require(isinstance(self.reason, str), "reason must be a str")


StatValue = int | float | str | bool | None


@dataclass(frozen=True)
class Heartbeat(Payload):
    TYPE: ClassVar[MessageType] = MessageType.HEARTBEAT
    sequence: int
    stats: Mapping[str, Any] | None = None
    """Optional map of str to scalar (int, float, str, bool, nil)."""

    def __post_init__(self) -> None:
        _require(_is_int(self.sequence) and 0 <= self.sequence <= MAX_REQUEST_ID,
                 "sequence must be an int in 0..2**64-1")
        _require(self.stats is None or (isinstance(self.stats, Mapping) and all(
            isinstance(k, str) and (v is None or isinstance(v, (int, float, str, bool)))
            for k, v in self.stats.items())), "stats must map str to scalars")


@dataclass(frozen=True)
class Error(Payload):
    TYPE: ClassVar[MessageType] = MessageType.ERROR
    code: str
    message: str = ""

    def __post_init__(self) -> None:
        _require(isinstance(self.code, str), "code must be a str")
        _require(isinstance(self.message, str), "message must be a str")


@dataclass(frozen=True)
class StreamData(Payload):
    TYPE: ClassVar[MessageType] = MessageType.STREAM_DATA
    stream_id: int
    seq: int
    data: bytes
    end: bool = False

    def __post_init__(self) -> None:
        _require(_is_int(self.stream_id) and 0 <= self.stream_id <= MAX_REQUEST_ID,
                 "stream_id must be an int in 0..2**64-1")
        _require(_is_int(self.seq) and 0 <= self.seq <= MAX_REQUEST_ID,
                 "seq must be an int in 0..2**64-1")
        _require(isinstance(self.data, bytes), "data must be bytes")
        _require(isinstance(self.end, bool), "end must be a bool")


@dataclass(frozen=True)
class ConnectionClose(Payload):
    TYPE: ClassVar[MessageType] = MessageType.CONNECTION_CLOSE
    reason: str = ""

    def __post_init__(self) -> None:
        _require(isinstance(self.reason, str), "reason must be a str")
