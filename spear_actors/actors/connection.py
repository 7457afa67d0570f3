"""ConnectionActor (the seed's ConnectionManager): peer sessions, auth and heartbeats.

Owns the sans-IO :class:`ServerProtocol` and drives the root's
:class:`~spear_actors.actors.listener.Listener` (its router pump). The pump thread hands
inbound frames to this actor in batches (one ``tell`` per batch) and ticks it every 100 ms
for deadlines; this actor's thread applies the protocol, sends replies through the pump, and
tells the right InstanceActor about auth, disconnects and heartbeat loss. Execute responses
go to the TaskExecutionManager in one message per batch.

Restart (DESIGN.md section 7): a new incarnation starts with no session at all. Every live
InstanceActor registers again (``ExpectInstance`` with its current secret, its dedicated
listener and the peer it was authenticated on); that peer is told ERROR
``not_authenticated`` at once, so the instance authenticates again within a round trip
instead of a heartbeat timeout.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from typing import Any

from .._log import logger
from ..config import ConnectionConfig, MonitoringConfig
from ..errors import TransportError
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
    StopListening,
)
from ..protocol.auth import AuthPolicy
from ..protocol.codec import pack
from ..protocol.server import (
    Authenticated,
    AuthenticationFailed,
    Closed,
    Delivered,
    Dropped,
    Mute,
    Opened,
    Output,
    Send,
    ServerProtocol,
    ServerSettings,
)
from ..protocol.types import Error, ErrorCode, ExecuteResponse, Signal
from ..records import ConnectionState
from ..transport.router import Inbound, RouterPump
from .deps import ServiceHandle, ServiceLink, Services, safe_tell
from .listener import Listener
from .service import ServiceActor

__all__ = ["ConnectionActor"]

_MAX_ID_IN_EVENT = 128
PUMP_DROPS = ("muted_dropped", "peers_cut", "over_budget", "frames_dropped_restart",
              "gate_denied")
"""Pump counters reported in ``metrics()["errors"]``."""


def _clip(text: str | None) -> str | None:
    """Peer-chosen strings go into events clipped (they are untrusted)."""
    return None if text is None else text[:_MAX_ID_IN_EVENT]


class ConnectionActor(ServiceActor):
    """Every peer of the spearlet's listener. See the module docstring for the threads."""

    def __init__(self, config: ConnectionConfig, listener: Listener, services: Services,
                 monitoring: MonitoringConfig | None = None,
                 link: ServiceLink | None = None) -> None:
        super().__init__(link)
        self.config = config
        monitoring = monitoring or MonitoringConfig()
        self._report = config.enable_monitoring and monitoring.enabled
        """Tell the monitor about connections and messages (events, message stats)."""
        self._report_messages = self._report and monitoring.enable_message_tracking
        self._report_totals = monitoring.enabled
        self._listener = listener
        self._monitor: ServiceHandle = services.handle("monitor")
        self._tasks: ServiceHandle = services.handle("tasks")
        self._policy = AuthPolicy(config.secret_validator, config.max_connections)
        self._protocol = ServerProtocol(ServerSettings(
            heartbeat_interval=config.heartbeat_interval,
            heartbeat_timeout=config.heartbeat_timeout,
            auth_timeout=config.auth_timeout,
            connection_timeout=config.connection_timeout,
            max_pending=config.max_pending,
            max_message_size=config.max_message_size), self._policy, wall_clock=time.time,
            new_connection_id=listener.new_connection_id,
            auth_scope=self._auth_scope if config.per_instance_listeners else None)
        self._listener_of: dict[str, tuple[bytes, int]] = {}  # instance -> (tag, generation)
        self._owner_of_tag: dict[bytes, str] = {}
        self._instances: dict[str, tuple[Any, int]] = {}  # instance -> (ActorRef, generation)
        self._seen = listener.seen
        self._reauth: dict[str, bytes] = {}
        """instance -> the peer it was authenticated on with our predecessor (trusted, never
        muted, until it has authenticated again)."""
        self._pump_counts = {name: listener.pump.counters.get(name, 0) for name in PUMP_DROPS}
        """What this incarnation has reported of the pump's counters."""
        self._pump: RouterPump = listener.pump
        self._sends: list[tuple[bytes, bytes]] = []
        self._opened = self._closed = self._auth_failures = 0
        self._errors: dict[str, int] = {}
        self._last_counts: tuple[int, int] = (-1, -1)
        self._log = logger.bind(actor="connection")

    def handle(self, message: Any) -> Any:
        match message:
            case InboundBatch(frames):
                self._inbound(frames)
            case ConnectionTick(now):
                self._touch_seen()
                self._apply(self._protocol.tick(now), now)
                self._count_pump_drops()
                self._flush(now)
            case ExpectInstance(instance_id, secret, ref, generation, tag, routing_id):
                self._expect(instance_id, secret, ref, generation, tag, routing_id)
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
                    if self._pump.gate is not None:
                        self._pump.gate.forget(instance_id)
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
            case SendFailed():
                self._errors["send_failed"] = self._errors.get("send_failed", 0) + 1
            case ListConnections():
                return self._connections()
            case StopListening():
                now = time.monotonic()
                self._apply(self._protocol.close_all("shutdown", now), now)
                self._flush(now)
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

    def _expect(self, instance_id: str, secret: str, ref: Any, generation: int,
                tag: bytes | None, routing_id: bytes | None) -> None:
        now = time.monotonic()
        self._apply(self._protocol.close_instance(instance_id, "replaced", now), now)
        self._policy.expect(instance_id, secret)
        if self._pump.gate is not None:
            self._pump.gate.allow(instance_id, secret)
        self._instances[instance_id] = (ref, generation)
        if tag is not None:  # re-registered after a restart: its dedicated listener
            self._listener_of[instance_id] = (tag, generation)
            self._owner_of_tag[tag] = instance_id
        if routing_id is not None:  # it was authenticated with our predecessor: ask again
            self._reauth[instance_id] = routing_id
            self._sends.append((routing_id, pack(Error(
                ErrorCode.NOT_AUTHENTICATED.value, "the spearlet restarted its connection "
                "service: authenticate again"), 0, time.time())))
        self._flush(now)

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
        if not self.config.per_instance_listeners:
            raise TransportError("dedicated listeners are not enabled")
        if instance_id in self._listener_of:
            self._close_listener(instance_id)
        tag = secrets.token_bytes(4)
        while tag in self._owner_of_tag:
            tag = secrets.token_bytes(4)
        bound = self._pump.add_listener(tag).result(timeout=10.0)
        self._listener_of[instance_id] = (tag, generation)
        self._owner_of_tag[tag] = instance_id
        return {"endpoint": bound.endpoint, "port": bound.port, "transport": bound.transport,
                "tag": tag}

    def _close_listener(self, instance_id: str) -> None:
        tag, _ = self._listener_of.pop(instance_id)
        self._owner_of_tag.pop(tag, None)
        self._pump.remove_listener(tag)  # its peers are gone with it

    # -- traffic -------------------------------------------------------------------------------
    def _inbound(self, frames: list[Inbound]) -> None:
        protocol = self._protocol
        responses: list[tuple[str, bytes, int, bool, bytes, str | None, float | None]] = []
        now = time.monotonic()
        for frame in frames:
            for out in protocol.receive(frame.routing_id, frame.body, frame.received_at,
                                        frame.remote_addr):
                if isinstance(out, Send):
                    self._sends.append((out.routing_id, out.body))
                elif isinstance(out, Delivered) and isinstance(out.payload, ExecuteResponse):
                    p = out.payload
                    responses.append((out.instance_id, out.routing_id, out.message.request_id,
                                      p.ok, p.data, p.error, p.processing_time))
                else:
                    self._apply([out], now)
        if responses:
            safe_tell(self._tasks, ExecuteResponses(responses, now))
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
                case Mute(routing_id, _):
                    if routing_id not in self._listener.trusted:
                        self._pump.mute(routing_id)
                case Authenticated(connection_id, routing_id, instance_id, session_id,
                                   client_type, client_version, superseded):
                    self._listener.trusted.add(routing_id)
                    previous = self._reauth.pop(instance_id, None)
                    if previous is not None and previous != routing_id:
                        self._listener.trusted.discard(previous)
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
                    self._pump.forget(routing_id)
                    if was_auth:
                        self._listener.trusted.discard(routing_id)
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

    def _count_pump_drops(self) -> None:
        """What the pump refused without us (muted peers, budgets) joins the error counts."""
        counters = self._pump.counters
        for name in PUMP_DROPS:
            total = counters.get(name, 0)
            delta = total - self._pump_counts[name]
            if delta > 0:
                self._errors[name] = self._errors.get(name, 0) + delta
            self._pump_counts[name] = total

    def _event(self, kind: str, wall: float, **data: Any) -> None:
        if self._report:
            safe_tell(self._monitor, RecordEvent(kind, data, wall))

    def _flush(self, now: float) -> None:
        if self._sends:
            self._pump.send_many(self._sends)
            self._sends = []
        stats = self._protocol.take_message_stats()
        if stats and self._report_messages:
            safe_tell(self._monitor, RecordMessages(stats, time.time()))
        if not self._report_totals:
            return
        counts = (self._protocol.authenticated_count, self._protocol.pending_count)
        if counts != self._last_counts or self._opened or self._closed or self._errors or \
                self._auth_failures:
            safe_tell(self._monitor, ConnectionCounts(counts[0], counts[1], self._opened,
                                                      self._closed, self._auth_failures,
                                                      dict(self._errors)))
            self._last_counts = counts
            self._opened = self._closed = self._auth_failures = 0
            self._errors = {}
