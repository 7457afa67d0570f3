"""Client (instance) side of the protocol, sans-IO: handshake, heartbeats, requests.

The events are NamedTuples rather than dataclasses: every instance imports this module at
start-up, and building a frozen dataclass costs a millisecond or two of ``exec``.

:class:`ClientSession` turns frames from the spearlet into :class:`ClientEvent` records and
builds the frames the instance sends. Time is passed in; no sockets, no threads. One owner
thread (the InstanceClient's I/O thread) drives it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import NamedTuple

from ..errors import LocalProtocolError, RemoteProtocolError
from .codec import DEFAULT_MAX_SIZE, decode, decode_payload, pack, pack_execute_response
from .types import (
    AuthRequest,
    AuthResponse,
    ConnectionClose,
    Error,
    ExecuteRequest,
    Heartbeat,
    Signal,
    StreamData,
)

__all__ = [
    "AuthAccepted",
    "AuthRejected",
    "ClientEvent",
    "ClientSession",
    "ClientState",
    "ErrorReceived",
    "HeartbeatAck",
    "Ignored",
    "RequestReceived",
    "ServerClosed",
    "SignalReceived",
    "StreamReceived",
]

CLIENT_VERSION = "spear-actors/0.1"


class ClientState(enum.Enum):
    IDLE = "idle"
    AUTHENTICATING = "authenticating"
    AUTHENTICATED = "authenticated"
    CLOSED = "closed"


class AuthAccepted(NamedTuple):
    session_id: str
    heartbeat_interval: float
    features: tuple[str, ...]


class AuthRejected(NamedTuple):
    message: str


class RequestReceived(NamedTuple):
    request_id: int
    method: str
    data: bytes
    deadline: float | None


class SignalReceived(NamedTuple):
    signal: str
    reason: str


class HeartbeatAck(NamedTuple):
    sequence: int


class ErrorReceived(NamedTuple):
    code: str
    message: str
    request_id: int


class StreamReceived(NamedTuple):
    stream_id: int
    seq: int
    data: bytes
    end: bool


class ServerClosed(NamedTuple):
    reason: str


class Ignored(NamedTuple):
    """A frame that was malformed or made no sense now; counted, not fatal."""

    reason: str


ClientEvent = (AuthAccepted | AuthRejected | RequestReceived | SignalReceived | HeartbeatAck
               | ErrorReceived | StreamReceived | ServerClosed | Ignored)


class ClientSession:
    """One connection attempt's protocol state. Make a new one (or :meth:`reset`) to reconnect.

    ``heartbeat_timeout_factor``: the server is considered silent after this many heartbeat
    intervals without any frame from it (the contract's default is 3).
    """

    def __init__(self, instance_id: str, token: str, *, client_type: str = "process",
                 client_version: str = CLIENT_VERSION,
                 extra_params: Mapping[str, str] | None = None,
                 heartbeat_timeout_factor: float = 3.0,
                 max_message_size: int = DEFAULT_MAX_SIZE) -> None:
        self.instance_id = instance_id
        self._token = token
        self.client_type = client_type
        self.client_version = client_version
        self.extra_params = dict(extra_params or {})
        self.heartbeat_timeout_factor = heartbeat_timeout_factor
        self.max_message_size = max_message_size
        self.reset()

    def __repr__(self) -> str:
        return f"<ClientSession {self.instance_id} {self.state.value}>"

    def reset(self) -> None:
        """Forget the current connection (before reconnecting with a fresh socket)."""
        self.state = ClientState.IDLE
        self.session_id: str | None = None
        self.heartbeat_interval: float | None = None
        self.last_received = 0.0
        self.last_heartbeat_sent = 0.0
        self._sequence = 0
        self._auth_request_id = 0
        self.ignored = 0

    # -- frames out ----------------------------------------------------------------------------
    def start(self, now: float, request_id: int = 1) -> bytes:
        """The AUTH_REQUEST frame; the session then awaits AUTH_RESPONSE."""
        if self.state is not ClientState.IDLE:
            raise LocalProtocolError(f"cannot authenticate in state {self.state.value}")
        self.state = ClientState.AUTHENTICATING
        self._auth_request_id = request_id
        self.last_received = now
        return pack(AuthRequest(self.instance_id, self._token, self.client_version,
                                self.client_type, self.extra_params), request_id, now)

    def heartbeat(self, now: float, stats: Mapping[str, int | float | str | bool | None]
                  | None = None) -> bytes:
        self._require_authenticated()
        self._sequence += 1
        self.last_heartbeat_sent = now
        return pack(Heartbeat(self._sequence, dict(stats) if stats else None), 0, now)

    def heartbeat_due(self, now: float) -> bool:
        return (self.state is ClientState.AUTHENTICATED and self.heartbeat_interval is not None
                and now - self.last_heartbeat_sent >= self.heartbeat_interval)

    def respond(self, request_id: int, now: float, data: bytes = b"", ok: bool = True,
                error: str | None = None, processing_time: float | None = None) -> bytes:
        """The EXECUTE_RESPONSE frame; ``processing_time`` is the handler's own time (s)."""
        self._require_authenticated()
        if type(data) is not bytes or type(ok) is not bool or not (
                error is None or type(error) is str):
            raise LocalProtocolError("respond() takes bytes data, a bool ok and a str error")
        if processing_time is not None and not 0.0 <= processing_time < float("inf"):
            processing_time = None  # a clock that went backwards: better say nothing
        return pack_execute_response(request_id, ok, data, error, now, processing_time)

    def close(self, reason: str, now: float) -> bytes:
        self.state = ClientState.CLOSED
        return pack(ConnectionClose(reason), 0, now)

    # -- deadlines -----------------------------------------------------------------------------
    def silence_limit(self) -> float | None:
        if self.heartbeat_interval is None:
            return None
        return self.heartbeat_interval * self.heartbeat_timeout_factor

    def server_silent(self, now: float) -> bool:
        """True once an authenticated server has sent nothing for the heartbeat timeout."""
        limit = self.silence_limit()
        return (self.state is ClientState.AUTHENTICATED and limit is not None
                and now - self.last_received >= limit)

    # -- frames in -----------------------------------------------------------------------------
    def receive(self, body: bytes, now: float) -> ClientEvent:
        """Interpret one frame from the server."""
        try:
            message = decode(body, self.max_message_size)
            payload = decode_payload(message, self.max_message_size)
        except RemoteProtocolError as exc:
            return self._ignore(f"malformed frame: {exc}")
        self.last_received = now
        if isinstance(payload, Error):
            return ErrorReceived(payload.code, payload.message, message.request_id)
        if isinstance(payload, ConnectionClose):
            self.state = ClientState.CLOSED
            return ServerClosed(payload.reason)
        if self.state is ClientState.AUTHENTICATING:
            if not isinstance(payload, AuthResponse):
                return self._ignore(f"{message.message_type.name} before AUTH_RESPONSE")
            if not payload.success or payload.session_id is None:
                self.state = ClientState.CLOSED
                return AuthRejected(payload.error_message or "authentication failed")
            self.state = ClientState.AUTHENTICATED
            self.session_id = payload.session_id
            self.heartbeat_interval = payload.heartbeat_interval
            self.last_heartbeat_sent = now
            return AuthAccepted(payload.session_id, payload.heartbeat_interval,
                                payload.supported_features)
        if self.state is not ClientState.AUTHENTICATED:
            return self._ignore(f"{message.message_type.name} while {self.state.value}")
        if isinstance(payload, ExecuteRequest):
            return RequestReceived(message.request_id, payload.method, payload.data,
                                   payload.deadline)
        if isinstance(payload, Heartbeat):
            return HeartbeatAck(payload.sequence)
        if isinstance(payload, Signal):
            return SignalReceived(payload.signal, payload.reason)
        if isinstance(payload, StreamData):
            return StreamReceived(payload.stream_id, payload.seq, payload.data, payload.end)
        return self._ignore(f"unexpected {message.message_type.name}")

    def _ignore(self, reason: str) -> Ignored:
        self.ignored += 1
        return Ignored(reason)

    def _require_authenticated(self) -> None:
        if self.state is not ClientState.AUTHENTICATED:
            raise LocalProtocolError(f"not authenticated (state {self.state.value})")
