"""Listener: the router pump and what must outlive a ConnectionActor restart.

The RuntimeActor creates one at boot and closes it at shutdown. It owns the
:class:`~spear_actors.transport.router.RouterPump` (so the listening socket keeps its port or
ipc path, and instances keep their DEALER connections, when the ConnectionActor is restarted),
the last-seen map of peers and the connection id sequence. Each ConnectionActor incarnation is
handed the listener; the pump's callbacks always reach the *current* service actors through
:class:`~spear_actors.actors.deps.Services`.

Threads: every callback below runs in the pump thread and must not block. Frames that arrive
while no ConnectionActor is alive are dropped and counted (``frames_dropped_restart``):
heartbeats are re-sent every interval and a peer that loses its AUTH_REQUEST retries.
"""

from __future__ import annotations

import itertools
from typing import Any

from ..config import ConnectionConfig
from ..messages import ConnectionTick, InboundBatch, SendFailed, Undeliverable
from ..transport.router import Inbound, RouterPump
from .dataplane import RequestTable, ResponseFastPath
from .deps import ListenerInfo, Services, safe_tell

__all__ = ["PEER_BURST", "PEER_RATE", "Listener"]

MAX_TRACKED = 4096
"""Peers' budgets kept before those back to a full bucket are forgotten."""

PEER_RATE = 1000.0
PEER_BURST = 1000.0
"""Per-peer budget of frames handed to the ConnectionActor (a token bucket: PEER_RATE a
second, PEER_BURST at once). A well-behaved instance sends about one heartbeat per interval
beside its execute answers (which the fast path takes, uncounted), so only a flood meets it.
"""


class Listener:
    """The spearlet's listening socket and its pump-thread routing of frames."""

    def __init__(self, config: ConnectionConfig, services: Services, table: RequestTable
                 ) -> None:
        self.config = config
        self._connection = services.handle("connection")
        self._tasks = services.handle("tasks")
        self._fast_path = ResponseFastPath(table, config.max_message_size)
        self.seen: dict[bytes, float] = {}
        """routing id -> last frame time; written by the pump thread, read (and cleared) by
        the ConnectionActor on each tick (a touch lost to the race is harmless)."""
        self._connection_ids = itertools.count(1)
        self.trusted: set[bytes] = set()
        """Routing ids of authenticated peers (the ConnectionActor's thread writes it). It
        outlives a ConnectionActor restart: the new incarnation asks these peers to
        authenticate again instead of muting them for a first frame that is not AUTH_REQUEST.
        """
        self._budget: dict[bytes, tuple[float, float]] = {}  # routing id -> (tokens, at)
        self.pump = RouterPump(self._consume, config, on_tick=self._tick,
                               on_send_failed=self._send_failed)

    def new_connection_id(self) -> str:
        """Connection ids never repeat across ConnectionActor incarnations."""
        return f"conn-{next(self._connection_ids)}"

    def start(self) -> ListenerInfo:
        """Bind and start the pump (TransportError/ConfigError if it cannot bind)."""
        self.pump.start()
        bound = self.pump.bound
        assert bound is not None
        cfg = self.config
        return ListenerInfo(self.pump.endpoint, self.pump.port, bound.transport,
                            cfg.curve_public_key, cfg.per_instance_listeners, cfg.gate)

    def stop(self) -> None:
        self.pump.stop()

    def send_requests(self, frames: Any) -> None:
        """The task manager's sender: (routing id, body, request id) frames."""
        self.pump.send_tagged(frames)

    # -- pump thread -----------------------------------------------------------------------------
    def _consume(self, frames: list[Inbound]) -> None:
        seen = self.seen
        for frame in frames:  # every frame proves liveness, fast-path answers included
            seen[frame.routing_id] = frame.received_at
        rest = self._fast_path(frames)
        if rest:
            rest = self._within_budget(rest)
        if rest and not safe_tell(self._connection, InboundBatch(rest)):
            self.pump.counters["frames_dropped_restart"] += len(rest)

    def _within_budget(self, frames: list[Inbound]) -> list[Inbound]:
        """Frames within their peer's budget go on to the ConnectionActor (what the fast path
        took is not counted): a flooding peer cannot queue up work ahead of everyone else's
        heartbeats. Its excess is dropped undecoded and counted (``over_budget``)."""
        budget = self._budget
        kept = []
        for frame in frames:
            tokens, at = budget.get(frame.routing_id, (PEER_BURST, frame.received_at))
            tokens = min(PEER_BURST, tokens + (frame.received_at - at) * PEER_RATE)
            if tokens >= 1.0:
                kept.append(frame)
                tokens -= 1.0
            budget[frame.routing_id] = (tokens, frame.received_at)
        if len(kept) < len(frames):
            self.pump.counters["over_budget"] += len(frames) - len(kept)
        return kept

    def _tick(self, now: float) -> None:
        if len(self._budget) > MAX_TRACKED:  # forget peers whose bucket is full again
            self._budget = {rid: (tokens, at) for rid, (tokens, at) in self._budget.items()
                            if (now - at) * PEER_RATE + tokens < PEER_BURST}
        safe_tell(self._connection, ConnectionTick(now))

    def _send_failed(self, routing_id: bytes, tag: int, reason: str) -> None:
        if tag and safe_tell(self._tasks, Undeliverable(routing_id, tag, reason)):
            return  # an execute request: its owner decides (retry or fail); if the manager
            # is being restarted, the root sweeps its requests and this is only counted
        safe_tell(self._connection, SendFailed(routing_id, reason))
