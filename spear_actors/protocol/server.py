"""Server side of the protocol, sans-IO: every peer's session and the rules of DESIGN.md §2.

:class:`ServerProtocol` takes frames as ``(routing_id, body, now)`` and returns *outputs*:
frames to send and facts for its owner (a peer authenticated, a connection closed, an
application message arrived). It never touches a socket, a thread or a clock. It is not
thread-safe: one owner thread (the ConnectionActor's) drives it.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import RemoteProtocolError
from ..records import ConnectionState, ConnectionStatus
from .auth import AuthPolicy, AuthVerdict
from .codec import DEFAULT_MAX_SIZE, decode, decode_payload, pack
from .types import (
    AuthRequest,
    AuthResponse,
    ConnectionClose,
    Error,
    ErrorCode,
    ExecuteResponse,
    Heartbeat,
    MessageType,
    Payload,
    SpearMessage,
    StreamData,
)

__all__ = [
    "Authenticated",
    "AuthenticationFailed",
    "Closed",
    "Delivered",
    "Dropped",
    "Mute",
    "Opened",
    "Output",
    "Send",
    "ServerProtocol",
    "ServerSession",
    "ServerSettings",
    "SessionState",
]

SERVER_VERSION = "spear-actors/0.1"
FEATURES = ("heartbeat", "execute", "signal", "stream")
GENERIC_AUTH_FAILURE = "authentication failed"
ERROR_INTERVAL = 1.0  # at most one unsolicited ERROR per peer per second
MAX_MUTED = 4096


class SessionState(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    AUTHENTICATED = "authenticated"
    CLOSED = "closed"
    ERROR = "error"  # sticky: the peer broke the protocol beyond repair


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The numbers the server enforces (see ConnectionConfig for their meaning)."""

    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 3.0
    auth_timeout: float = 5.0
    connection_timeout: float = 300.0
    max_pending: int = 4096
    max_message_size: int = DEFAULT_MAX_SIZE
    max_bad_messages: int = 100
    """Garbage from an authenticated peer tolerated in a row before it is cut off."""


# -- outputs -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Send:
    """Send ``body`` to ``routing_id``."""

    routing_id: bytes
    body: bytes
    message_type: MessageType


@dataclass(frozen=True, slots=True)
class Opened:
    """A new peer sent its first frame."""

    connection_id: str
    routing_id: bytes
    remote_addr: str | None


@dataclass(frozen=True, slots=True)
class Authenticated:
    connection_id: str
    routing_id: bytes
    instance_id: str
    session_id: str
    client_type: str
    client_version: str
    superseded: str | None
    """connection_id of the instance's previous connection, now closed, if any."""


@dataclass(frozen=True, slots=True)
class AuthenticationFailed:
    connection_id: str
    instance_id: str
    reason: str  # an AuthVerdict value: internal, never sent to the peer


@dataclass(frozen=True, slots=True)
class Closed:
    """A connection is gone (its routing id forgotten)."""

    connection_id: str
    routing_id: bytes
    instance_id: str | None
    reason: str
    was_authenticated: bool


@dataclass(frozen=True, slots=True)
class Delivered:
    """An application message from an authenticated instance (execute response, stream, error)."""

    connection_id: str
    routing_id: bytes
    instance_id: str
    message: SpearMessage
    payload: ExecuteResponse | StreamData | Error


@dataclass(frozen=True, slots=True)
class Dropped:
    """A frame was refused; counted by the owner under ``code``."""

    connection_id: str | None
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Mute:
    """Drop this peer's further frames undecoded and cut its connection (DESIGN.md section
    11): its first frame was not a valid AUTH_REQUEST, its auth failed, or there was no room
    for it. It is heard again only under a new routing id (a reconnection). Its session is
    closed at once: a muted peer never holds a pending slot (``max_pending``) that a
    restarting instance may need."""

    routing_id: bytes
    reason: str


Output = (Send | Opened | Authenticated | AuthenticationFailed | Closed | Delivered | Dropped
          | Mute)


@dataclass(slots=True, eq=False)
class ServerSession:
    """One peer (one ROUTER routing id): its state and the seed's ConnectionState fields."""

    connection_id: str
    routing_id: bytes
    remote_addr: str | None
    connected_at: float
    last_activity: float
    state: SessionState = SessionState.AWAITING_AUTH
    instance_id: str | None = None
    session_id: str | None = None
    client_type: str | None = None
    client_version: str | None = None
    heartbeat_sequence: int = 0
    last_heartbeat_answer: float = float("-inf")
    last_error_sent: float = float("-inf")
    bad_in_a_row: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def authenticated(self) -> bool:
        return self.state is SessionState.AUTHENTICATED

    def snapshot(self) -> ConnectionState:
        status = {SessionState.AWAITING_AUTH: ConnectionStatus.PENDING,
                  SessionState.AUTHENTICATED: ConnectionStatus.ACTIVE}.get(
                      self.state, ConnectionStatus.CLOSED)
        return ConnectionState(
            connection_id=self.connection_id, instance_id=self.instance_id,
            remote_addr=self.remote_addr, connected_at=self.connected_at,
            last_activity=self.last_activity, authenticated=self.authenticated,
            client_type=self.client_type, client_version=self.client_version,
            session_id=self.session_id, status=status,
            heartbeat_sequence=self.heartbeat_sequence)


class ServerProtocol:
    """All peers of one listener. Feed it frames and deadlines; act on what it returns.

    ``clock`` is the wall clock used only for the ``timestamp`` field of outgoing messages
    (tests may pass a fake); every decision uses the ``now`` argument.
    """

    def __init__(self, settings: ServerSettings, policy: AuthPolicy,
                 wall_clock: Callable[[], float] | None = None,
                 new_connection_id: Callable[[], str] | None = None,
                 auth_scope: Callable[[bytes, str], bool] | None = None) -> None:
        self.settings = settings
        self.policy = policy
        self._auth_scope = auth_scope
        """(routing_id, instance_id) -> may this peer authenticate as that instance at all?
        (dedicated listeners accept only their own instance)"""
        self._wall = wall_clock
        self._sessions: dict[bytes, ServerSession] = {}
        self._by_instance: dict[str, ServerSession] = {}
        self._by_connection: dict[str, ServerSession] = {}
        self._pending = 0
        self._conn_counter = 0
        self._heartbeat_spacing = settings.heartbeat_interval / 4
        self._muted: dict[bytes, None] = {}
        """Routing ids this protocol told its owner to mute (bounded, oldest first out): their
        frames already on the way are dropped here, so a peer gets one answer at most."""
        self._new_connection_id = new_connection_id or self._next_connection_id
        self.counters: dict[str, int] = {}
        """Refusals and drops by reason (bad_message, not_authenticated, ...)."""
        self._message_stats: dict[tuple[str, str, str], list[int]] = {}

    def take_message_stats(self) -> list[tuple[str, str, int, int, str]]:
        """``(type name, "in"|"out", bytes, count, connection id)`` since the last call (then
        reset)."""
        stats = [(name, direction, c[1], c[0], connection_id)
                 for (connection_id, name, direction), c in self._message_stats.items()]
        self._message_stats.clear()
        return stats

    def _tally(self, session: ServerSession, name: str, direction: str, size: int) -> None:
        key = (session.connection_id, name, direction)
        counter = self._message_stats.get(key)
        if counter is None:
            counter = self._message_stats[key] = [0, 0]
        counter[0] += 1
        counter[1] += size

    # -- introspection -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> Iterator[ServerSession]:
        return iter(list(self._sessions.values()))

    def session_for(self, routing_id: bytes) -> ServerSession | None:
        return self._sessions.get(routing_id)

    def session_of_instance(self, instance_id: str) -> ServerSession | None:
        return self._by_instance.get(instance_id)

    def session_by_connection(self, connection_id: str) -> ServerSession | None:
        return self._by_connection.get(connection_id)

    @property
    def authenticated_count(self) -> int:
        return len(self._by_instance)

    @property
    def pending_count(self) -> int:
        return self._pending

    # -- input ---------------------------------------------------------------------------------
    def receive(self, routing_id: bytes, body: bytes, now: float,
                remote_addr: str | None = None) -> list[Output]:
        """One inbound frame from ``routing_id``."""
        out: list[Output] = []
        if routing_id in self._muted:  # until the owner's pump drops them itself
            return [self._count(Dropped(None, "muted_dropped", "muted peer"))]
        session = self._sessions.get(routing_id)
        if session is None:
            if self._pending >= self.settings.max_pending:
                return [self._count(Dropped(None, "too_many_pending",
                                            "too many unauthenticated peers")),
                        self._mute(routing_id, "too_many_pending")]
            session = self._open(routing_id, now, remote_addr)
            out.append(Opened(session.connection_id, routing_id, remote_addr))
        session.last_activity = now
        try:
            message = decode(body, self.settings.max_message_size)
            payload = decode_payload(message, self.settings.max_message_size)
        except RemoteProtocolError as exc:
            self._tally(session, "INVALID", "in", len(body))
            out.extend(self._bad_frame(session, exc, now))
            return out
        self._tally(session, message.message_type.name, "in", len(body))
        session.bad_in_a_row = 0
        if session.state is SessionState.AWAITING_AUTH:
            out.extend(self._receive_unauthenticated(session, message, payload, now))
        elif session.state is SessionState.AUTHENTICATED:
            out.extend(self._receive_authenticated(session, message, payload, now))
        return out

    def touch(self, routing_id: bytes, now: float) -> None:
        """Record that an authenticated peer was heard from, through a path that does not
        feed its frames here (the execute-response fast path)."""
        session = self._sessions.get(routing_id)
        if session is not None and session.state is SessionState.AUTHENTICATED and \
                now > session.last_activity:
            session.last_activity = now

    def tick(self, now: float) -> list[Output]:
        """Enforce auth, heartbeat and idle deadlines. Call at least every ~100 ms."""
        out: list[Output] = []
        s = self.settings
        idle_limit = min(s.heartbeat_timeout, s.connection_timeout)
        idle_reason = "heartbeat_timeout" if s.heartbeat_timeout <= s.connection_timeout \
            else "idle_timeout"
        for session in list(self._sessions.values()):
            if session.state is SessionState.AWAITING_AUTH:
                if now - session.connected_at >= s.auth_timeout:
                    out.extend(self._close(session, "auth_timeout", now, notify=False))
            elif now - session.last_activity >= idle_limit:
                out.extend(self._close(session, idle_reason, now, notify=True))
        return out

    def next_deadline(self) -> float | None:
        """Earliest time at which :meth:`tick` has something to do (None: nothing pending)."""
        s = self.settings
        idle_limit = min(s.heartbeat_timeout, s.connection_timeout)
        times = [sess.connected_at + s.auth_timeout
                 if sess.state is SessionState.AWAITING_AUTH
                 else sess.last_activity + idle_limit for sess in self._sessions.values()]
        return min(times, default=None)

    # -- commands from the owner ---------------------------------------------------------------
    def send_to_instance(self, instance_id: str, payload: Payload, request_id: int = 0
                         ) -> Send | None:
        """A frame for ``instance_id``'s live connection, or None if it has none."""
        session = self._by_instance.get(instance_id)
        if session is None:
            return None
        return self._send(session, payload, request_id)

    def close_instance(self, instance_id: str, reason: str, now: float) -> list[Output]:
        """Drop ``instance_id``'s connection (telling the peer why), e.g. when it is stopped."""
        session = self._by_instance.get(instance_id)
        return [] if session is None else self._close(session, reason, now, notify=True)

    def close_all(self, reason: str, now: float) -> list[Output]:
        out: list[Output] = []
        for session in list(self._sessions.values()):
            out.extend(self._close(session, reason, now, notify=session.authenticated))
        return out

    # -- internals -----------------------------------------------------------------------------
    def _next_connection_id(self) -> str:
        self._conn_counter += 1
        return f"conn-{self._conn_counter}"

    def _open(self, routing_id: bytes, now: float, remote_addr: str | None) -> ServerSession:
        session = ServerSession(self._new_connection_id(), routing_id, remote_addr, now, now)
        self._sessions[routing_id] = session
        self._by_connection[session.connection_id] = session
        self._pending += 1
        return session

    def _timestamp(self, fallback: float) -> float:
        return self._wall() if self._wall is not None else fallback

    def _send(self, session: ServerSession, payload: Payload, request_id: int = 0) -> Send:
        body = pack(payload, request_id, self._timestamp(session.last_activity))
        self._tally(session, payload.TYPE.name, "out", len(body))
        return Send(session.routing_id, body, payload.TYPE)

    def _mute(self, routing_id: bytes, reason: str) -> Mute:
        self._muted[routing_id] = None
        if len(self._muted) > MAX_MUTED:
            del self._muted[next(iter(self._muted))]
        return Mute(routing_id, reason)

    def _count(self, dropped: Dropped) -> Dropped:
        self.counters[dropped.code] = self.counters.get(dropped.code, 0) + 1
        return dropped

    def _error(self, session: ServerSession, code: ErrorCode, message: str, now: float,
               request_id: int = 0, rate_limited: bool = True) -> list[Output]:
        if rate_limited and now - session.last_error_sent < ERROR_INTERVAL:
            return []
        session.last_error_sent = now
        return [self._send(session, Error(code.value, message), request_id)]

    def _bad_frame(self, session: ServerSession, exc: RemoteProtocolError,
                   now: float) -> list[Output]:
        out: list[Output] = [self._count(Dropped(session.connection_id, exc.code, str(exc)))]
        if session.state is SessionState.AUTHENTICATED:
            session.bad_in_a_row += 1
            out.extend(self._error(session, ErrorCode(exc.code), str(exc), now,
                                   rate_limited=False))
            if session.bad_in_a_row >= self.settings.max_bad_messages:
                session.state = SessionState.ERROR
                out.extend(self._close(session, "protocol_error", now, notify=True))
        else:
            if exc.code == ErrorCode.UNSUPPORTED_VERSION.value:
                # a client speaking another version deserves to know why nobody answers it
                out.extend(self._error(session, ErrorCode.UNSUPPORTED_VERSION, str(exc), now))
            out.append(self._mute(session.routing_id, exc.code))
            out.extend(self._close(session, "muted", now, notify=False))
        return out

    def _receive_unauthenticated(self, session: ServerSession, message: SpearMessage,
                                 payload: Payload, now: float) -> list[Output]:
        if not isinstance(payload, AuthRequest):
            out: list[Output] = [self._count(Dropped(
                session.connection_id, ErrorCode.NOT_AUTHENTICATED.value,
                f"{message.message_type.name} before AUTH_REQUEST"))]
            out.extend(self._error(session, ErrorCode.NOT_AUTHENTICATED,
                                   "authenticate first", now, message.request_id))
            out.append(self._mute(session.routing_id, ErrorCode.NOT_AUTHENTICATED.value))
            out.extend(self._close(session, "muted", now, notify=False))
            return out
        previous = self._by_instance.get(payload.instance_id)
        if self._auth_scope is not None and not self._auth_scope(session.routing_id,
                                                                  payload.instance_id):
            verdict = AuthVerdict.WRONG_LISTENER
        else:
            verdict = self.policy.check(payload.instance_id, payload.token,
                                        self.authenticated_count, now,
                                        replacing=previous is not None,
                                        peer=session.remote_addr or "local")
        if verdict is not AuthVerdict.OK:
            return self._refuse(session, message, payload, verdict, now)
        out = []
        superseded = None
        if previous is not None:
            superseded = previous.connection_id
            out.extend(self._close(previous, "superseded", now, notify=True))
        session.state = SessionState.AUTHENTICATED
        self._pending -= 1
        session.instance_id = payload.instance_id
        session.session_id = secrets.token_hex(16)
        session.client_type = payload.client_type
        session.client_version = payload.client_version
        self._by_instance[payload.instance_id] = session
        out.append(self._send(session, AuthResponse(
            success=True, session_id=session.session_id, error_message=None,
            server_version=SERVER_VERSION, supported_features=FEATURES,
            heartbeat_interval=self.settings.heartbeat_interval), message.request_id))
        out.append(Authenticated(session.connection_id, session.routing_id,
                                 payload.instance_id, session.session_id,
                                 payload.client_type, payload.client_version, superseded))
        return out

    def _refuse(self, session: ServerSession, message: SpearMessage, payload: AuthRequest,
                verdict: AuthVerdict, now: float) -> list[Output]:
        out: list[Output] = []
        if verdict is AuthVerdict.THROTTLED:  # silently: no answer, no event, no log line
            out.append(self._count(Dropped(session.connection_id, "auth_throttled",
                                           "too many failures from this peer")))
            out.append(self._mute(session.routing_id, "auth_throttled"))
            out.extend(self._close(session, "auth_failed", now, notify=False))
            return out
        if verdict is AuthVerdict.TOO_MANY_CONNECTIONS:
            out.extend(self._error(session, ErrorCode.TOO_MANY_CONNECTIONS,
                                   "connection limit reached", now, message.request_id,
                                   rate_limited=False))
        out.append(self._send(session, AuthResponse(
            success=False, session_id=None, error_message=GENERIC_AUTH_FAILURE,
            server_version=SERVER_VERSION, supported_features=(),
            heartbeat_interval=self.settings.heartbeat_interval), message.request_id))
        self._count(Dropped(session.connection_id, ErrorCode.AUTH_FAILED.value, verdict.value))
        out.append(AuthenticationFailed(session.connection_id, payload.instance_id,
                                        verdict.value))
        out.append(self._mute(session.routing_id, "auth_failed"))
        out.extend(self._close(session, "auth_failed", now, notify=False))
        return out

    def _receive_authenticated(self, session: ServerSession, message: SpearMessage,
                               payload: Payload, now: float) -> list[Output]:
        assert session.instance_id is not None
        if isinstance(payload, Heartbeat):
            session.heartbeat_sequence = payload.sequence
            if now - session.last_heartbeat_answer < self._heartbeat_spacing:
                # a peer heartbeating faster than it was told: liveness is already noted,
                # its extra answers would only cost everyone else (DESIGN.md section 11)
                return [self._count(Dropped(session.connection_id, "heartbeat_flood",
                                            "heartbeats faster than the interval"))]
            session.last_heartbeat_answer = now
            return [self._send(session, Heartbeat(payload.sequence), message.request_id)]
        if isinstance(payload, (ExecuteResponse, StreamData, Error)):
            return [Delivered(session.connection_id, session.routing_id, session.instance_id,
                              message, payload)]
        if isinstance(payload, ConnectionClose):
            return self._close(session, "peer_closed", now, notify=False)
        out: list[Output] = [self._count(Dropped(
            session.connection_id, ErrorCode.BAD_MESSAGE.value,
            f"{message.message_type.name} is not accepted from instances"))]
        out.extend(self._error(session, ErrorCode.BAD_MESSAGE,
                               f"{message.message_type.name} is not accepted from instances",
                               now, message.request_id, rate_limited=False))
        return out

    def _close(self, session: ServerSession, reason: str, now: float,
               notify: bool) -> list[Output]:
        out: list[Output] = []
        if notify:
            out.append(self._send(session, ConnectionClose(reason)))
        was_authenticated = session.instance_id is not None and \
            self._by_instance.get(session.instance_id) is session
        if was_authenticated:
            del self._by_instance[session.instance_id]  # type: ignore[arg-type]
        elif session.state is SessionState.AWAITING_AUTH:
            self._pending -= 1
        if session.state is not SessionState.ERROR:
            session.state = SessionState.CLOSED
        self._sessions.pop(session.routing_id, None)
        self._by_connection.pop(session.connection_id, None)
        out.append(Closed(session.connection_id, session.routing_id, session.instance_id,
                          reason, was_authenticated))
        return out
