"""The router pump: one thread that owns the ROUTER socket (ZeroMQ sockets are not
thread-safe, and an actor cannot block on its inbox and a socket at once).

The thread's life (bounded start-up, wake-up pipe, poll loop, orderly stop) is
:class:`~.socket_thread.SocketThread`'s, shared with the control endpoint: :meth:`start`
binds and returns the endpoint, :meth:`stop` closes the sockets with ``linger`` set and
terminates the context. The pump thread drains every ready frame and hands
inbound batches to ``consumer`` (called in the pump thread); any thread may queue outbound
frames with :meth:`send` (a deque plus a wake-up pipe: a pipe fd, unlike a zmq socket, may be
written from any thread). Nothing a peer sends can stop the pump.

Hostile peers (DESIGN.md section 11): the owner may :meth:`~RouterPump.mute` a routing id.
The pump then drops that peer's frames as they arrive, without decoding or handing them on,
and :data:`~.peer_cut.CUT_GRACE` later cuts its TCP or ipc connection
(:class:`~.peer_cut.PeerCuts`), so the peer must reconnect, under a new routing id, to be
heard again. What it had sent beyond our queue for it (PEER_QUEUE frames) goes with the
connection.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import replace
from typing import NamedTuple

import zmq

from .._log import log_exception, logger
from ..config import ConnectionConfig
from ..errors import TransportError
from .endpoints import BoundEndpoint, bind_listener, release_endpoint
from .gate import PlainGate
from .peer_cut import PeerCuts
from .socket_thread import Context, SocketThread

__all__ = ["Inbound", "RouterPump"]

MAX_BATCH = 256
"""Frames read per drain before the outbox is flushed again: a peer's burst (a flood) never
holds up others' requests and replies for long."""
DEFAULT_HWM = 100_000
"""Outbound queue per peer (requests in flight to one instance)."""
PEER_QUEUE = 4096
"""Inbound queue per peer (ZMQ_RCVHWM): what a peer may have waiting for us. A muted peer's
queue is read and dropped frame by frame until its cut takes effect, so this bounds what a
flood costs per connection; an instance never has more than its window of answers pending."""
LISTENER_MARK = 0xFF
"""Routing ids of peers on an extra listener read ``0xFF + tag (4 bytes) + ZeroMQ id``.
Ids ZeroMQ assigns start with a zero byte, so on the main listener a peer-chosen id starting
with 0xFF could only be an impersonation attempt: such frames are dropped and counted."""
TAG_SIZE = 4
# plain ints: pyzmq's flag enums cost an Enum call per `|`, and `sock.rcvmore` goes through
# attribute magic (getattr on the zmq module) on every access; both sit on the hot path
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)


class Inbound(NamedTuple):
    """One inbound frame. ``remote_addr`` is set the first time a routing id is seen."""

    routing_id: bytes
    body: bytes
    received_at: float  # time.monotonic()
    remote_addr: str | None


Consumer = Callable[[list[Inbound]], None]
SendFailed = Callable[[bytes, int, str], None]
"""(routing_id, tag, reason) of a frame that could not be sent; ``tag`` is what the sender
queued it with (the task manager tags each execute request with its request id; 0: none)."""
Tick = Callable[[float], None]


class RouterPump(SocketThread):
    """Owns one ROUTER socket in one thread (a :class:`~.socket_thread.SocketThread`).
    ``consumer``, ``on_tick`` and ``on_send_failed`` run in the pump thread and must not
    block; exceptions they raise are logged and survived.
    """

    def __init__(self, consumer: Consumer, config: ConnectionConfig | None = None, *,
                 on_tick: Tick | None = None, tick_interval: float = 0.1,
                 on_send_failed: SendFailed | None = None, hwm: int = DEFAULT_HWM,
                 name: str = "spear") -> None:
        super().__init__(f"{name}-router-pump")
        self.config = config or ConnectionConfig()
        self._consumer = consumer
        self._on_tick = on_tick
        self._tick_interval = tick_interval
        self._on_send_failed = on_send_failed
        self._hwm = hwm
        self._name = name
        self._outbox: collections.deque[tuple[bytes, bytes, int]] = collections.deque()
        self._control: collections.deque[tuple[str, bytes, Future[BoundEndpoint]]] = \
            collections.deque()
        self._extra: dict[bytes, tuple[zmq.Socket[bytes], BoundEndpoint]] = {}
        self._extra_prefix: dict[zmq.Socket[bytes], bytes] = {}
        self._ctx: Context | None = None  # the pump thread's
        self._sock: zmq.Socket[bytes] | None = None  # the main listener (pump thread)
        self._next_tick = 0.0
        self.bound: BoundEndpoint | None = None
        self.gate = PlainGate() if self.config.gate == "plain" else None
        """ZeroMQ's own gate (``ConnectionConfig.gate``): the owner allows instances in it."""
        self.counters: dict[str, int] = collections.defaultdict(int)
        """frames_in, frames_out, send_failed, multipart, consumer_errors, ..."""
        self._peers = PeerCuts(self.counters)  # muted peers and their cuts

    # -- owner API (any thread) ------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        if self.bound is None:
            raise TransportError("the pump is not started")
        return self.bound.endpoint

    @property
    def port(self) -> int | None:
        return self.bound.port if self.bound else None

    def start(self, timeout: float = 10.0) -> str:
        """Bind and start the pump thread; returns the endpoint. Raises TransportError or
        ConfigError if binding fails, TransportError if the thread does not come up in time."""
        self.start_thread(timeout)
        return self.endpoint

    def send(self, routing_id: bytes, body: bytes, tag: int = 0) -> None:
        """Queue one frame for ``routing_id`` (thread-safe, never blocks); ``tag`` comes back
        to ``on_send_failed`` if it cannot be sent."""
        self._outbox.append((routing_id, body, tag))
        self._wakeup.wake()

    def send_many(self, frames: Iterable[tuple[bytes, bytes]]) -> None:
        """Queue several untagged frames with one wake-up."""
        self._outbox.extend([(routing_id, body, 0) for routing_id, body in frames])
        self._wakeup.wake()

    def send_tagged(self, frames: Iterable[tuple[bytes, bytes, int]]) -> None:
        """Queue several (routing id, body, tag) frames with one wake-up."""
        self._outbox.extend(frames)
        self._wakeup.wake()

    def add_listener(self, tag: bytes) -> Future[BoundEndpoint]:
        """Bind one more ROUTER (a dedicated listener) like the main one but on a port (or
        ipc path) of its own; its peers' routing ids carry ``tag``. Any thread; the pump
        thread does the binding and resolves the future (TransportError on failure)."""
        if len(tag) != TAG_SIZE:
            raise ValueError(f"a listener tag is {TAG_SIZE} bytes")
        future: Future[BoundEndpoint] = Future()
        self._control.append(("add", tag, future))
        self._wakeup.wake()
        return future

    def remove_listener(self, tag: bytes) -> Future[BoundEndpoint]:
        """Close a dedicated listener (its peers are cut off). Any thread."""
        future: Future[BoundEndpoint] = Future()
        self._control.append(("remove", tag, future))
        self._wakeup.wake()
        return future

    @staticmethod
    def listener_tag(routing_id: bytes) -> bytes | None:
        """The tag of the dedicated listener a routing id came through (None: main)."""
        if routing_id[:1] == b"\xff":
            return routing_id[1:1 + TAG_SIZE]
        return None

    def forget(self, routing_id: bytes) -> None:
        """The owner no longer tracks this peer; its address is reported again if it returns.
        Any thread."""
        self._peers.request(routing_id, mute=False)
        self._wakeup.wake()

    def mute(self, routing_id: bytes) -> None:
        """Drop every later frame of ``routing_id`` undecoded and cut its connection. Any
        thread; applied by the pump thread before it reads the next frames."""
        self._peers.request(routing_id, mute=True)
        self._wakeup.wake()

    @property
    def muted_count(self) -> int:
        return len(self._peers.muted)

    def __enter__(self) -> RouterPump:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- pump thread ---------------------------------------------------------------------------
    def _open(self, ctx: Context) -> None:
        self._ctx = ctx
        if self.gate is not None:
            # before any listener: libzmq asks it from the start
            self._poller.register(self.gate.bind(ctx), zmq.POLLIN)
        sock = self._router_socket()
        self.bound = bind_listener(sock, self.config, self._name)
        self._sock = sock
        self._poller.register(sock, zmq.POLLIN)
        self._next_tick = time.monotonic() + self._tick_interval
        logger.debug("router pump listening on {}", self.bound.endpoint)

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=100)  # let final CONNECTION_CLOSE frames out
        for extra, bound in self._extra.values():
            extra.close(linger=100)
            release_endpoint(bound)
        self._extra.clear()
        for _, _, future in self._control:
            if not future.done():
                future.set_exception(TransportError("the router pump stopped"))
        if self.gate is not None:
            self.gate.close()
        if self.bound is not None:
            release_endpoint(self.bound)

    def _poll_timeout(self) -> int:
        return max(0, int((self._next_tick - time.monotonic()) * 1000))

    def _router_socket(self) -> zmq.Socket[bytes]:
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_size)
        sock.setsockopt(zmq.SNDHWM, self._hwm)
        sock.setsockopt(zmq.RCVHWM, min(self._hwm, PEER_QUEUE))
        if self.gate is not None:
            self.gate.secure(sock)
        if self.config.curve_secret_key:
            sock.curve_server = True
            sock.curve_secretkey = self.config.curve_secret_key.encode()
        return sock

    def _ready(self, events: dict[zmq.Socket[bytes] | int, int], woken: bool) -> None:
        sock = self._sock
        assert sock is not None
        gate = self.gate
        if gate is not None and gate.socket in events:
            accepted, denied = gate.answer()
            self.counters["gate_accepted"] += accepted
            self.counters["gate_denied"] += denied
        if woken and self._control:
            self._apply_control()
        if self._peers.pending():
            self._peers.apply()
        if self._outbox:
            self._flush(sock)
        if sock in events:
            self._drain(sock, b"")
        if self._extra_prefix:
            for extra, prefix in self._extra_prefix.items():
                if extra in events:
                    self._drain(extra, prefix)
        if self._outbox:  # consumers often answer synchronously
            self._flush(sock)
        now = time.monotonic()
        if now >= self._next_tick:
            self._next_tick = now + self._tick_interval
            if self._on_tick is not None:
                self._call(self._on_tick, now)

    def _apply_control(self) -> None:
        poller, extra_prefix = self._poller, self._extra_prefix
        while self._control:
            op, tag, future = self._control.popleft()
            try:
                if op == "add":
                    if tag in self._extra:
                        raise TransportError(f"listener {tag.hex()} exists already")
                    extra = self._router_socket()
                    try:
                        config = replace(self.config, port=0) \
                            if self.config.transport == "tcp" else self.config
                        bound = bind_listener(extra, config, f"{self._name}-{tag.hex()}")
                    except BaseException:
                        extra.close(0)
                        raise
                    self._extra[tag] = (extra, bound)
                    extra_prefix[extra] = b"\xff" + tag
                    poller.register(extra, zmq.POLLIN)
                    future.set_result(bound)
                else:
                    entry = self._extra.pop(tag, None)
                    if entry is None:
                        raise TransportError(f"no listener {tag.hex()}")
                    poller.unregister(entry[0])
                    extra_prefix.pop(entry[0], None)
                    entry[0].close(linger=100)
                    release_endpoint(entry[1])
                    future.set_result(entry[1])
            except Exception as exc:
                future.set_exception(exc if isinstance(exc, TransportError | ValueError)
                                     else TransportError(str(exc)))

    def _drain(self, sock: zmq.Socket[bytes], prefix: bytes) -> None:
        batch: list[Inbound] = []
        peers = self._peers
        known, muted = peers.known, peers.muted
        now = time.monotonic()
        recv, more = sock.recv, sock.getsockopt
        for _ in range(MAX_BATCH):
            try:
                rid_frame = recv(_NOBLOCK, copy=False)
            except zmq.Again:
                break
            routing_id = rid_frame.bytes
            if prefix:
                routing_id = prefix + routing_id
            elif routing_id[:1] == b"\xff" and self._extra:
                while more(_RCVMORE):  # would pass for a dedicated listener's peer: refuse
                    recv(_NOBLOCK)
                self.counters["impersonation"] += 1
                continue
            if muted and routing_id in muted:
                while more(_RCVMORE):  # dropped unread: never decoded, never handed on
                    recv(_NOBLOCK, copy=False)
                self.counters["muted_dropped"] += 1
                continue
            body = recv(_NOBLOCK) if more(_RCVMORE) else b""
            if more(_RCVMORE):  # the contract is one frame per message: refuse the rest
                while more(_RCVMORE):
                    recv(_NOBLOCK)
                self.counters["multipart"] += 1
                body = b""  # decodes as a bad message and is counted as such upstream
            addr = None if routing_id in known else peers.note(routing_id, rid_frame)
            batch.append(Inbound(routing_id, body, now, addr))
        if batch:
            self.counters["frames_in"] += len(batch)
            self._call(self._consumer, batch)

    def _flush(self, sock: zmq.Socket[bytes]) -> None:
        outbox = self._outbox
        extra = self._extra
        sent = 0
        while outbox:
            routing_id, body, tag = outbox.popleft()
            target, zmq_id = sock, routing_id
            if extra and routing_id[:1] == b"\xff":
                entry = extra.get(routing_id[1:1 + TAG_SIZE])
                if entry is None:  # its listener is closed
                    self._send_failed(routing_id, tag, "unreachable")
                    continue
                target, zmq_id = entry[0], routing_id[1 + TAG_SIZE:]
            try:
                target.send(zmq_id, _SNDMORE_NOBLOCK)
                target.send(body, _NOBLOCK)
                sent += 1
            except zmq.Again:  # peer's pipe full (slow consumer): drop, never block
                self._send_failed(routing_id, tag, "peer_backlogged")
            except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer is gone
                reason = "unreachable" if exc.errno == zmq.EHOSTUNREACH else f"error:{exc.errno}"
                self._send_failed(routing_id, tag, reason)
        self.counters["frames_out"] += sent

    def _send_failed(self, routing_id: bytes, tag: int, reason: str) -> None:
        self.counters["send_failed"] += 1
        if self._on_send_failed is not None:
            self._call(self._on_send_failed, routing_id, tag, reason)

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            self.counters["consumer_errors"] += 1
            log_exception(logger, "router pump callback {} raised", getattr(fn, "__name__", fn))
