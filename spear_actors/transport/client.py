"""InstanceClient: what an instance program links to talk to its spearlet.

Imports only the standard library, zmq and msgpack (instance start time matters: a test
proves it). Threads: :meth:`connect` does the handshake in the caller's thread, then one I/O
thread owns the DEALER socket (heartbeats, reconnects, sending replies). :meth:`serve` runs
the handler in the calling thread plus ``max_concurrency - 1`` worker threads, so heartbeats
keep flowing however long a handler takes.
"""

from __future__ import annotations

import collections
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

import zmq

from ..errors import AuthenticationError, ConfigError, TimeoutError, TransportError
from ..protocol.client import (
    AuthAccepted,
    AuthRejected,
    ClientSession,
    ErrorReceived,
    RequestReceived,
    ServerClosed,
    SignalReceived,
)
from .wake import WakePipe

__all__ = ["ENV_VARS", "Handler", "InstanceClient"]

Handler = Callable[[str, bytes], bytes]

ENV_VARS = ("SPEAR_INSTANCE_ID", "SPEAR_SECRET", "SPEAR_COMMUNICATION_TYPE",
            "SPEAR_COMMUNICATION_PORT", "SPEAR_COMMUNICATION_PATH",
            "SPEAR_COMMUNICATION_ENDPOINT")

if TYPE_CHECKING:
    import logging

LOGGER_NAME = "spear_actors.client"
"""Reconnect attempts are logged to this standard ``logging`` logger at WARNING (no loguru in
an instance process)."""


def _log() -> logging.Logger:
    """Imported on the first reconnect, not at start: ``logging`` would add milliseconds to
    every instance start for a message most instances never write."""
    import logging

    return logging.getLogger(LOGGER_NAME)


class _Reply(NamedTuple):
    generation: int
    request_id: int
    ok: bool
    data: bytes
    error: str | None
    processing_time: float | None


def endpoint_from_env(env: Mapping[str, str]) -> str:
    """The ZeroMQ endpoint the ``SPEAR_COMMUNICATION_*`` variables name (DESIGN.md section 2):
    ``SPEAR_COMMUNICATION_ENDPOINT`` when set, else by ``SPEAR_COMMUNICATION_TYPE`` (default
    ``tcp``): ``tcp://127.0.0.1:$SPEAR_COMMUNICATION_PORT`` or ``ipc://$SPEAR_COMMUNICATION_PATH``.
    Raises ConfigError naming what is missing or wrong."""
    endpoint = env.get("SPEAR_COMMUNICATION_ENDPOINT")
    if endpoint:
        return endpoint
    kind = (env.get("SPEAR_COMMUNICATION_TYPE") or "tcp").strip().lower()
    if kind == "ipc":
        path = env.get("SPEAR_COMMUNICATION_PATH")
        if not path:
            raise ConfigError("SPEAR_COMMUNICATION_TYPE is ipc but SPEAR_COMMUNICATION_PATH "
                              "is not set")
        return path if path.startswith("ipc://") else f"ipc://{path}"
    if kind != "tcp":
        raise ConfigError(f"SPEAR_COMMUNICATION_TYPE must be tcp or ipc, not {kind!r}")
    port = env.get("SPEAR_COMMUNICATION_PORT")
    if not port:
        raise ConfigError("environment variable SPEAR_COMMUNICATION_PORT is not set (this "
                          "program is meant to be started by spear_actors)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"SPEAR_COMMUNICATION_PORT is not a port number: {port!r}")
    return f"tcp://127.0.0.1:{port}"


class InstanceClient:
    """The instance side of the Spear protocol (DEALER socket, one per instance).

    ``max_retries`` bounds reconnect attempts after the server goes silent (exponential
    backoff from ``backoff_min`` to ``backoff_max`` with jitter); ``max_concurrency`` is how
    many handler calls may run at once.
    """

    def __init__(self, endpoint: str, instance_id: str, secret: str, *,
                 max_concurrency: int = 1, max_retries: int = 10,
                 backoff_min: float = 0.05, backoff_max: float = 2.0,
                 client_type: str = "process",
                 extra_params: Mapping[str, str] | None = None,
                 curve_server_key: str | None = None, plain: bool = False) -> None:
        if max_concurrency < 1:
            raise ConfigError("max_concurrency must be >= 1")
        self.endpoint = endpoint
        self.instance_id = instance_id
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._curve_server_key = curve_server_key
        self._plain = (instance_id.encode(), secret.encode()) if plain else None
        """ZMTP PLAIN credentials for a gated listener (``SPEAR_GATE=plain``); never shown."""
        self._session = ClientSession(instance_id, secret, client_type=client_type,
                                      extra_params=extra_params)
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._generation = 0
        # items are single requests, or whole batches when one worker serves them in order
        self._requests: queue.SimpleQueue[RequestReceived | list[RequestReceived] | None] = \
            queue.SimpleQueue()
        self._replies: collections.deque[_Reply] = collections.deque()
        self._wakeup = WakePipe()
        self._io_thread: threading.Thread | None = None
        self._poller = zmq.Poller()
        self._closing = False
        self._session_lost = False
        self._done = threading.Event()
        self._draining = False
        self._in_flight = 0  # touched by the I/O thread only
        self.stop_reason: str | None = None
        self.error: BaseException | None = None
        self.reconnects = 0
        self.session_id: str | None = None

    def __repr__(self) -> str:
        return f"<InstanceClient {self.instance_id} -> {self.endpoint}>"

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: object
                 ) -> InstanceClient:
        """Build from the ``SPEAR_*`` variables the spearlet sets (ConfigError names a missing
        one). ``SPEAR_MAX_CONCURRENCY`` sets ``max_concurrency`` unless given."""
        env = os.environ if environ is None else environ

        def need(name: str) -> str:
            value = env.get(name)
            if not value:
                raise ConfigError(f"environment variable {name} is not set (this program is "
                                  "meant to be started by spear_actors)")
            return value

        instance_id = need("SPEAR_INSTANCE_ID")
        secret = need("SPEAR_SECRET")
        endpoint = endpoint_from_env(env)
        if "max_concurrency" not in kwargs and env.get("SPEAR_MAX_CONCURRENCY", "").isdigit():
            kwargs["max_concurrency"] = int(env["SPEAR_MAX_CONCURRENCY"])
        if "curve_server_key" not in kwargs and env.get("SPEAR_CURVE_SERVER_KEY"):
            kwargs["curve_server_key"] = env["SPEAR_CURVE_SERVER_KEY"]
        if "plain" not in kwargs and env.get("SPEAR_GATE") == "plain":
            kwargs["plain"] = True
        return cls(endpoint, instance_id, secret, **kwargs)  # type: ignore[arg-type]

    # -- connecting ----------------------------------------------------------------------------
    def connect(self, timeout: float = 10.0) -> str:
        """Handshake with the spearlet; returns the session id. Raises AuthenticationError if
        refused, TimeoutError if nobody answers within ``timeout``."""
        if self._io_thread is not None:
            raise TransportError("already connected")
        self._ctx = zmq.Context()
        deadline = time.monotonic() + timeout
        self._handshake(deadline)
        self._io_thread = threading.Thread(target=self._io_loop, name="spear-client-io",
                                           daemon=True)
        self._io_thread.start()
        assert self.session_id is not None
        return self.session_id

    def _new_socket(self) -> zmq.Socket[bytes]:
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        if self._plain is not None:
            sock.setsockopt(zmq.PLAIN_USERNAME, self._plain[0])
            sock.setsockopt(zmq.PLAIN_PASSWORD, self._plain[1])
        if self._curve_server_key:
            public, secret = zmq.curve_keypair()
            sock.curve_serverkey = self._curve_server_key.encode()
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise TransportError(f"cannot connect to {self.endpoint}: {exc}") from exc
        return sock

    def _handshake(self, deadline: float) -> None:
        """Open a fresh DEALER and authenticate (caller's thread or the I/O thread)."""
        if self._sock is not None:
            self._sock.close(0)
        self._session.reset()
        self._generation += 1
        sock = self._sock = self._new_socket()
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._wakeup.fd, zmq.POLLIN)
        # IMMEDIATE=1: a blocking send would wait forever for a peer; wait only until deadline
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1, zmq.POLLOUT):
                raise zmq.Again()
            sock.send(self._session.start(time.time()), zmq.NOBLOCK)
        except zmq.Again:
            raise TimeoutError(f"no answer from the spearlet at {self.endpoint}") from None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no answer from the spearlet at {self.endpoint}")
                continue
            event = self._session.receive(sock.recv(), time.time())
            if isinstance(event, AuthAccepted):
                self.session_id = event.session_id
                return
            if isinstance(event, AuthRejected):
                raise AuthenticationError(f"authentication refused: {event.message}")
            if isinstance(event, ServerClosed):
                raise AuthenticationError(f"connection closed by the spearlet: {event.reason}")

    # -- serving -------------------------------------------------------------------------------
    def serve(self, handler: Handler) -> str:
        """Answer EXECUTE_REQUESTs with ``handler(method, data) -> bytes`` until the spearlet
        says stop/drain/close or :meth:`close` is called; returns the reason. Connects first if
        needed. An exception in the handler becomes ``ok=false`` with its message."""
        if self._io_thread is None:
            self.connect()
        workers = [threading.Thread(target=self._work, args=(handler,), daemon=True,
                                    name=f"spear-handler-{i}")
                   for i in range(1, self.max_concurrency)]
        for w in workers:
            w.start()
        try:
            self._work(handler)
        finally:
            for _ in workers:
                self._requests.put(None)
            for w in workers:
                w.join(5.0)
        if self.error is not None:
            raise self.error
        return self.stop_reason or "closed"

    def _work(self, handler: Handler) -> None:
        clock = time.perf_counter
        while True:
            try:
                item = self._requests.get(timeout=0.5)
            except queue.Empty:
                if self._done.is_set():
                    self._requests.put(None)  # wake the next worker too
                    return
                continue
            if item is None:
                self._requests.put(None)
                return
            for request in item if isinstance(item, list) else (item,):
                if self._done.is_set():  # stopping: the spearlet fails what we did not start
                    break
                generation = self._generation
                started = clock()
                try:
                    data = handler(request.method, request.data)
                    if not isinstance(data, bytes):
                        data = bytes(data)
                    reply = _Reply(generation, request.request_id, True, data, None,
                                   clock() - started)
                except Exception as exc:
                    reply = _Reply(generation, request.request_id, False, b"",
                                   f"{type(exc).__name__}: {exc}", clock() - started)
                self._replies.append(reply)
            self._wakeup.wake()

    # -- closing -------------------------------------------------------------------------------
    def close(self, reason: str = "closed", timeout: float = 5.0) -> None:
        """Send CONNECTION_CLOSE, stop the threads, close the socket. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self.stop_reason is None:
            self.stop_reason = reason
        if self._io_thread is not None and self._io_thread.is_alive():
            self._wakeup.wake()
            self._io_thread.join(timeout)
        else:
            self._shutdown_socket(reason)
        self._done.set()
        self._requests.put(None)
        self._wakeup.close()

    def __enter__(self) -> InstanceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _shutdown_socket(self, reason: str) -> None:
        if self._sock is not None:
            try:
                if self._session.session_id is not None:
                    self._sock.send(self._session.close(reason, time.time()), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._sock.close(linger=200)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # -- I/O thread ----------------------------------------------------------------------------
    def _finish(self, reason: str, error: BaseException | None = None) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if error is not None and self.error is None:
            self.error = error
        self._closing = True

    def _io_loop(self) -> None:
        try:
            while not self._closing:
                self._io_step()
            self._flush_replies()
        except Exception as exc:
            self._finish("error", exc)
        finally:
            self._shutdown_socket(self.stop_reason or "closed")
            self._done.set()
            self._requests.put(None)

    def _io_step(self) -> None:
        sock = self._sock
        assert sock is not None
        session = self._session
        interval = session.heartbeat_interval or 1.0
        timeout = max(0.0, session.last_heartbeat_sent + interval - time.time())
        events = dict(self._poller.poll(int(min(timeout, interval) * 1000) + 1))
        if self._wakeup.fd in events:
            self._wakeup.drain()
        if self._replies:
            self._flush_replies()
        if sock in events:
            batch: list[RequestReceived] = []
            for _ in range(1024):
                try:
                    body = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                event = session.receive(body, time.time())
                if type(event) is RequestReceived and not self._draining:
                    batch.append(event)
                    continue
                self._handle(event)
                if self._closing or self._session_lost:
                    break
            if batch:
                self._in_flight += len(batch)
                if self.max_concurrency == 1:  # one worker: hand the batch over in one go
                    self._requests.put(batch)
                else:
                    for request in batch:
                        self._requests.put(request)
            if self._closing:
                return
        now = time.time()
        if session.heartbeat_due(now):
            self._send(session.heartbeat(now))
        if session.server_silent(now) or self._session_lost:
            self._session_lost = False
            self._reconnect()
        if self._draining and self._in_flight == 0 and not self._replies:
            self._finish("drain")

    def _send(self, body: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.send(body, zmq.NOBLOCK)
        except zmq.Again:
            pass  # the spearlet is not reading; heartbeat loss will sort it out

    def _flush_replies(self) -> None:
        now = time.time()
        while self._replies:
            reply = self._replies.popleft()
            self._in_flight -= 1
            if reply.generation != self._generation or self._sock is None:
                continue  # answered on a connection that is gone: the server failed it
            self._send(self._session.respond(reply.request_id, now, reply.data, reply.ok,
                                             reply.error, reply.processing_time))

    def _handle(self, event: object) -> None:
        if isinstance(event, RequestReceived):
            if self._draining:
                self._send(self._session.respond(event.request_id, time.time(), b"", False,
                                                 "instance is draining"))
                return
            self._in_flight += 1
            self._requests.put(event)
        elif isinstance(event, SignalReceived):
            if event.signal == "stop":
                self._finish("stop")
            elif event.signal == "drain":
                self._draining = True
        elif isinstance(event, ServerClosed):
            self._finish(f"server closed: {event.reason}")
        elif isinstance(event, ErrorReceived) and event.code == "not_authenticated":
            # the server no longer knows this session (it restarted): its rate-limited errors
            # are no sign of life, so authenticate again now rather than never
            self._session_lost = True

    def _reconnect(self) -> None:
        """The server went silent: fresh DEALER, authenticate again, with backoff."""
        # read before the first handshake: resetting the session forgets the interval
        answer_within = max(1.0, self._session.silence_limit() or 3.0)
        for attempt in range(1, self.max_retries + 1):
            if self._closing:
                return
            delay = min(self.backoff_max, self.backoff_min * 2 ** (attempt - 1))
            delay *= random.uniform(0.5, 1.5)  # backoff with jitter
            _log().warning("instance %s: reconnect attempt %d/%d to %s in %.2f s",
                           self.instance_id, attempt, self.max_retries, self.endpoint, delay)
            time.sleep(delay)
            try:
                self._handshake(time.monotonic() + answer_within)
            except TimeoutError:
                _log().warning("instance %s: reconnect attempt %d/%d failed: no answer "
                               "within %.1f s", self.instance_id, attempt, self.max_retries,
                               answer_within)
                continue
            except AuthenticationError as exc:
                self._finish("auth_refused", exc)
                return
            self.reconnects += 1
            return
        self._finish("server_lost", TransportError(
            f"spearlet at {self.endpoint} silent; gave up after {self.max_retries} attempts"))
