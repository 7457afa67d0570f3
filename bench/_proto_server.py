"""A bare spearlet transport for benchmarks: :class:`RouterPump` + sans-IO
:class:`ServerProtocol` + :class:`AuthPolicy`, no actors.

The pump thread runs the protocol (auth, heartbeats, deadlines) and hands execute responses
to ``on_delivered`` (called in the pump thread with a list of ``Delivered``). Calls from other
threads that touch the protocol take :attr:`ProtocolServer.lock`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence

from spear_actors.config import ConnectionConfig
from spear_actors.protocol.auth import AuthPolicy
from spear_actors.protocol.server import Delivered, Send, ServerProtocol, ServerSettings
from spear_actors.transport.router import Inbound, RouterPump

OnDelivered = Callable[[list[Delivered]], None]


class ProtocolServer:
    """``start()`` binds and returns the endpoint; ``stop()`` closes every connection (telling
    the peers) and stops the pump. Also a context manager."""

    def __init__(self, on_delivered: OnDelivered | None = None, *,
                 max_connections: int = 1024, config: ConnectionConfig | None = None,
                 settings: ServerSettings | None = None) -> None:
        self.config = config or ConnectionConfig(max_connections=max_connections)
        self.settings = settings or ServerSettings(
            heartbeat_interval=self.config.heartbeat_interval,
            heartbeat_timeout=self.config.heartbeat_timeout,
            auth_timeout=self.config.auth_timeout,
            connection_timeout=self.config.connection_timeout,
            max_pending=self.config.max_pending,
            max_message_size=self.config.max_message_size)
        self.policy = AuthPolicy(max_connections=max_connections)
        self.proto = ServerProtocol(self.settings, self.policy, wall_clock=time.time)
        self.lock = threading.Lock()
        self.on_delivered = on_delivered
        self.outputs: collections.Counter[str] = collections.Counter()
        """Count of every non-Send, non-Delivered output by type name (Opened, Closed, ...)."""
        self.pump = RouterPump(self._consume, self.config, on_tick=self._tick, name="bench")

    # -- owner API -------------------------------------------------------------------------------
    def start(self) -> str:
        return self.pump.start()

    @property
    def endpoint(self) -> str:
        return self.pump.endpoint

    def expect(self, instance_id: str, secret: str) -> None:
        with self.lock:
            self.policy.expect(instance_id, secret)

    def routing_id_of(self, instance_id: str) -> bytes | None:
        with self.lock:
            session = self.proto.session_of_instance(instance_id)
            return None if session is None else session.routing_id

    @property
    def authenticated(self) -> int:
        return self.proto.authenticated_count

    def wait_authenticated(self, count: int, timeout: float,
                           alive: Callable[[], bool] | None = None) -> None:
        """Block until ``count`` peers are authenticated. TimeoutError past ``timeout``;
        RuntimeError as soon as ``alive()`` says the peers' processes are gone."""
        deadline = time.monotonic() + timeout
        while self.proto.authenticated_count < count:
            if alive is not None and not alive():
                raise RuntimeError(f"peer process gone; {self.authenticated}/{count} "
                                   "authenticated")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.authenticated}/{count} peers authenticated "
                                   f"within {timeout} s ({dict(self.outputs)})")
            time.sleep(0.002)

    def close_instance(self, instance_id: str, reason: str = "stop") -> None:
        with self.lock:
            outs = self.proto.close_instance(instance_id, reason, time.monotonic())
        self._emit(outs)

    def stop(self) -> None:
        if self.pump.running:
            with self.lock:
                outs = self.proto.close_all("shutdown", time.monotonic())
            self._emit(outs)
        self.pump.stop()

    def __enter__(self) -> ProtocolServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- pump thread -----------------------------------------------------------------------------
    def _emit(self, outs: Sequence[object]) -> None:
        frames = [(o.routing_id, o.body) for o in outs if isinstance(o, Send)]
        if frames:
            self.pump.send_many(frames)

    def _consume(self, batch: list[Inbound]) -> None:
        frames: list[tuple[bytes, bytes]] = []
        delivered: list[Delivered] = []
        counts = self.outputs
        receive = self.proto.receive
        with self.lock:
            for rid, body, received_at, addr in batch:
                for o in receive(rid, body, received_at, addr):
                    if isinstance(o, Send):
                        frames.append((o.routing_id, o.body))
                    elif isinstance(o, Delivered):
                        delivered.append(o)
                    else:
                        counts[type(o).__name__] += 1
        if frames:
            self.pump.send_many(frames)
        if delivered and self.on_delivered is not None:
            self.on_delivered(delivered)

    def _tick(self, now: float) -> None:
        with self.lock:
            outs = self.proto.tick(now)
        for o in outs:
            if type(o) is not Send:
                self.outputs[type(o).__name__] += 1
        self._emit(outs)
