"""ConnectionActor (the seed's ConnectionManager): peer sessions, auth and heartbeats.

Owns the router pump and the sans-IO :class:`ServerProtocol`. The pump thread hands inbound
frames to this actor in batches (one ``tell`` per batch) and ticks it every 100 ms for
deadlines; this actor's thread applies the protocol, sends replies through the pump, and
tells the right InstanceActor about auth, disconnects and heartbeat loss. Execute responses
go to the TaskExecutionManager in one message per batch.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pykka

from .._log import logger
from ..config import ConnectionConfig
from ..errors import RemoteProtocolError, TransportError
from ..messages import (
    CloseConnection,
    ConnectionAuthenticated,
    ConnectionCounts,
    ConnectionLost,
    ConnectionTick,
    ExecuteResponses,
    ExpectInstance,
    ForgetInstance,
    InboundBatch,
    ListConnections,
    OpenListener,
    RecordEvent,
    RecordMessages,
    SendFailed,
    SendSignal,
    StartListening,
    StopListening,
    Undeliverable,
)
from ..protocol.auth import AuthPolicy
from ..protocol.codec import decode
from ..protocol.server import (
    Authenticated,
    AuthenticationFailed,
    Closed,
    Delivered,
    Dropped,
    Opened,
    Output,
    Send,
    ServerProtocol,
    ServerSettings,
)
from ..protocol.types import Error, ExecuteResponse, MessageType, Signal
from ..records import ConnectionState
from ..transport.router import Inbound, RouterPump
from .deps import safe_tell
from .service import ServiceActor

__all__ = ["ConnectionActor"]

_MAX_ID_IN_EVENT = 128


def _clip(text: str | None) -> str | None:
    """Peer-chosen strings go into events clipped (they are untrusted)."""
    return None if text is None else text[:_MAX_ID_IN_EVENT]


class ConnectionActor(ServiceActor):
    """Every peer of the spearlet's listener. See the module docstring for the threads."""

    ASKED = (StartListening, StopListening, ListConnections, OpenListener)

    def __init__(self, config: ConnectionConfig, monitor: pykka.ActorRef[Any],
                 tasks: pykka.ActorRef[Any] | None = None,
                 fast_path: Callable[[list[Inbound]], list[Inbound]] | None = None) -> None:
        super().__init__()
        self._fast_path = fast_path
        self.config = config
        self._monitor = monitor
        self._tasks = tasks
        self._policy = AuthPolicy(config.secret_validator, config.max_connections)
        self._protocol = ServerProtocol(ServerSettings(
            heartbeat_interval=config.heartbeat_interval,
            heartbeat_timeout=config.heartbeat_timeout,
            auth_timeout=config.auth_timeout,
            connection_timeout=config.connection_timeout,
            max_pending=config.max_pending,
            max_message_size=config.max_message_size), self._policy, wall_clock=time.time,
            auth_scope=self._auth_scope if config.per_instance_listeners else None)
        self._listener_of: dict[str, tuple[bytes, int]] = {}  # instance -> (tag, generation)
        self._owner_of_tag: dict[bytes, str] = {}
        self._instances: dict[str, tuple[pykka.ActorRef[Any], int]] = {}
        self._seen: dict[bytes, float] = {}
        """routing id -> last frame time, written by the pump thread, read on each tick (a
        touch lost to the race is harmless: heartbeats come every interval)."""
        self._pump: RouterPump | None = None
        self._sends: list[tuple[bytes, bytes]] = []
        self._opened = self._closed = self._auth_failures = 0
        self._errors: dict[str, int] = {}
        self._last_counts: tuple[int, int] = (-1, -1)
        self._log = logger.bind(actor="connection")

    # -- lifecycle -----------------------------------------------------------------------------
    def on_stop(self) -> None:
        self._stop_pump()

    def on_failure(self, *exc_info: object) -> None:
        self._stop_pump()

    def _stop_pump(self) -> None:
        if self._pump is not None:
            self._pump.stop()
            self._pump = None

    def handle(self, message: Any) -> Any:
        match message:
            case InboundBatch(frames):
                self._inbound(frames)
            case ConnectionTick(now):
                self._touch_seen()
                self._apply(self._protocol.tick(now), now)
                self._flush(now)
            case ExpectInstance(instance_id, secret, ref, generation):
                now = time.monotonic()
                self._apply(self._protocol.close_instance(instance_id, "replaced", now), now)
                self._policy.expect(instance_id, secret)
                self._instances[instance_id] = (ref, generation)
                self._flush(now)
            case OpenListener(instance_id, generation):
                return self._open_listener(instance_id, generation)
            case ForgetInstance(instance_id, generation, reason):
                own = self._listener_of.get(instance_id)
                if own is not None and own[1] == generation:
                    self._close_listener(instance_id)
                current = self._instances.get(instance_id)
                if current is not None and current[1] == generation:
                    del self._instances[instance_id]
                    self._policy.forget(instance_id)
                    now = time.monotonic()
                    self._apply(self._protocol.close_instance(instance_id, reason, now), now)
                    self._flush(now)
            case SendSignal(instance_id, signal, reason):
                send = self._protocol.send_to_instance(instance_id, Signal(signal, reason))
                if send is not None:
                    self._sends.append((send.routing_id, send.body))
                    self._flush(time.monotonic())
            case CloseConnection(instance_id, reason):
                now = time.monotonic()
                self._apply(self._protocol.close_instance(instance_id, reason, now), now)
                self._flush(now)
            case SendFailed(routing_id, body, reason):
                self._send_failed(routing_id, body, reason)
            case ListConnections():
                return self._connections()
            case StartListening():
                return self._start_listening()
            case StopListening():
                now = time.monotonic()
                self._apply(self._protocol.close_all("shutdown", now), now)
                self._flush(now)
                self._stop_pump()
            case _:
                self._log.warning("unexpected message {!r}", type(message).__name__)
        return None

    def _connections(self) -> list[ConnectionState]:
        """Session snapshots with their times made Unix seconds, as the record promises (the
        protocol keeps them on the monotonic clock it decides with)."""
        offset = time.time() - time.monotonic()
        return [replace(state, connected_at=state.connected_at + offset,
                        last_activity=state.last_activity + offset)
                for state in (s.snapshot() for s in self._protocol.sessions())]

    def _start_listening(self) -> dict[str, Any]:
        if self._pump is not None:
            raise TransportError("already listening")
        ref = self.actor_ref
        fast = self._fast_path

        seen = self._seen

        def consume(frames: list[Inbound]) -> None:  # pump thread
            for frame in frames:  # every frame proves liveness, fast-path answers included
                seen[frame.routing_id] = frame.received_at
            rest = fast(frames) if fast is not None else frames
            if rest:
                ref.tell(InboundBatch(rest))

        pump = RouterPump(consume, self.config,
                          on_tick=lambda now: ref.tell(ConnectionTick(now)),
                          on_send_failed=lambda rid, body, why: ref.tell(
                              SendFailed(rid, body, why)))
        pump.start()
        self._pump = pump
        assert pump.bound is not None
        self._log.info("listening on {}", pump.endpoint)
        return {"endpoint": pump.endpoint, "port": pump.port, "transport": pump.bound.transport,
                "sender": pump.send_many}

    def _touch_seen(self) -> None:
        seen = self._seen
        items = list(seen.items())
        seen.clear()
        touch = self._protocol.touch
        for routing_id, at in items:
            touch(routing_id, at)

    # -- dedicated listeners (per_instance_listeners) --------------------------------------------
    def _auth_scope(self, routing_id: bytes, instance_id: str) -> bool:
        tag = RouterPump.listener_tag(routing_id)
        if tag is None:  # the main listener serves only instances without one of their own
            return instance_id not in self._listener_of
        return self._owner_of_tag.get(tag) == instance_id

    def _open_listener(self, instance_id: str, generation: int) -> dict[str, Any]:
        if self._pump is None or not self.config.per_instance_listeners:
            raise TransportError("dedicated listeners are not enabled")
        if instance_id in self._listener_of:
            self._close_listener(instance_id)
        tag = secrets.token_bytes(4)
        while tag in self._owner_of_tag:
            tag = secrets.token_bytes(4)
        bound = self._pump.add_listener(tag).result(timeout=10.0)
        self._listener_of[instance_id] = (tag, generation)
        self._owner_of_tag[tag] = instance_id
        return {"endpoint": bound.endpoint, "port": bound.port, "transport": bound.transport}

    def _close_listener(self, instance_id: str) -> None:
        tag, _ = self._listener_of.pop(instance_id)
        self._owner_of_tag.pop(tag, None)
        if self._pump is not None:
            self._pump.remove_listener(tag)  # its peers are gone with it

    # -- traffic -------------------------------------------------------------------------------
    def _inbound(self, frames: list[Inbound]) -> None:
        protocol = self._protocol
        responses: list[tuple[str, bytes, int, bool, bytes, str | None]] = []
        now = time.monotonic()
        for frame in frames:
            for out in protocol.receive(frame.routing_id, frame.body, frame.received_at,
                                        frame.remote_addr):
                if isinstance(out, Send):
                    self._sends.append((out.routing_id, out.body))
                elif isinstance(out, Delivered) and isinstance(out.payload, ExecuteResponse):
                    p = out.payload
                    responses.append((out.instance_id, out.routing_id, out.message.request_id,
                                      p.ok, p.data, p.error))
                else:
                    self._apply([out], now)
        if responses and self._tasks is not None:
            self._tasks.tell(ExecuteResponses(responses, now))
        self._flush(now)

    def _apply(self, outputs: list[Output], now: float) -> None:
        wall = time.time()
        for out in outputs:
            match out:
                case Send(routing_id, body, _):
                    self._sends.append((routing_id, body))
                case Opened(connection_id, _, remote_addr):
                    self._opened += 1
                    self._event("Connected", wall, connection_id=connection_id,
                                remote_addr=remote_addr)
                case Authenticated(connection_id, routing_id, instance_id, session_id,
                                   client_type, client_version, superseded):
                    self._event("Authenticated", wall, connection_id=connection_id,
                                instance_id=instance_id, client_type=_clip(client_type),
                                client_version=_clip(client_version), superseded=superseded)
                    entry = self._instances.get(instance_id)
                    if entry is not None:  # its actor may have died meanwhile (safe_tell)
                        safe_tell(entry[0], ConnectionAuthenticated(connection_id, session_id,
                                                                    routing_id))
                case AuthenticationFailed(connection_id, instance_id, reason):
                    self._auth_failures += 1
                    self._log.warning("authentication failed for instance {!r} ({})",
                                      _clip(instance_id), reason)
                    self._event("AuthenticationFailed", wall, connection_id=connection_id,
                                instance_id=_clip(instance_id), reason=reason)
                case Closed(connection_id, routing_id, instance_id, reason, was_auth):
                    self._closed += 1
                    if self._pump is not None:
                        self._pump.forget(routing_id)
                    if reason == "heartbeat_timeout":
                        self._event("HeartbeatTimeout", wall, connection_id=connection_id,
                                    instance_id=instance_id)
                    self._event("Disconnected", wall, connection_id=connection_id,
                                instance_id=_clip(instance_id), reason=reason)
                    entry = self._instances.get(instance_id) if (
                        was_auth and instance_id) else None
                    if entry is not None:
                        safe_tell(entry[0], ConnectionLost(connection_id, reason))
                case Delivered(connection_id, _, instance_id, _, payload):
                    if isinstance(payload, Error):
                        self._event("Error", wall, connection_id=connection_id,
                                    instance_id=instance_id, code=_clip(payload.code),
                                    message=_clip(payload.message))
                case Dropped(_, code, _):
                    self._errors[code] = self._errors.get(code, 0) + 1

    def _send_failed(self, routing_id: bytes, body: bytes, reason: str) -> None:
        self._errors["send_failed"] = self._errors.get("send_failed", 0) + 1
        try:
            message = decode(body)
        except RemoteProtocolError:
            return
        if message.message_type is MessageType.EXECUTE_REQUEST and self._tasks is not None:
            self._tasks.tell(Undeliverable(routing_id, message.request_id, reason))

    def _event(self, kind: str, wall: float, **data: Any) -> None:
        self._monitor.tell(RecordEvent(kind, data, wall))

    def _flush(self, now: float) -> None:
        if self._sends and self._pump is not None:
            self._pump.send_many(self._sends)
            self._sends = []
        stats = self._protocol.take_message_stats()
        if stats:
            self._monitor.tell(RecordMessages(stats, time.time()))
        counts = (self._protocol.authenticated_count, self._protocol.pending_count)
        if counts != self._last_counts or self._opened or self._closed or self._errors:
            self._monitor.tell(ConnectionCounts(counts[0], counts[1], self._opened,
                                                self._closed, self._auth_failures,
                                                dict(self._errors)))
            self._last_counts = counts
            self._opened = self._closed = self._auth_failures = 0
            self._errors = {}
