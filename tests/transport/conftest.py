"""Fixtures for the transport tests: real sockets, real threads, real child processes.

:class:`ServerHarness` is the spearlet's connection side without the actors: a
:class:`RouterPump` feeding a :class:`ServerProtocol` (with its :class:`AuthPolicy`), the way
the ConnectionActor will. It records every protocol output in a thread-safe list that tests
wait on with bounded waits, sends payloads to instances, can go silent or restart its pump,
and is always stopped by the ``server_factory`` fixture (which ``server`` uses), whatever
the test did.

``spawn`` starts child processes (killed and reaped at teardown) and ``clients`` tracks
in-process :class:`InstanceClient` objects and their ``serve`` threads (closed and joined at
teardown).
"""

from __future__ import annotations

import itertools
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq

from spear_actors.client import InstanceClient
from spear_actors.config import ConnectionConfig
from spear_actors.protocol import ExecuteRequest, ExecuteResponse, Payload, Signal
from spear_actors.protocol.auth import AuthPolicy
from spear_actors.protocol.client import AuthAccepted, ClientSession
from spear_actors.protocol.server import (
    Authenticated,
    Closed,
    Delivered,
    Output,
    Send,
    ServerProtocol,
    ServerSettings,
)
from spear_actors.transport.router import Inbound, RouterPump

PROGRAMS = Path(__file__).parent / "programs"
INSTANCE_PROGRAM = str(PROGRAMS / "instance.py")
AUTH_PROBE = str(PROGRAMS / "auth_probe.py")
ECHO_MODULE = ("-m", "spear_actors.examples.echo")

HEARTBEAT_INTERVAL = 0.1
HEARTBEAT_TIMEOUT = 0.3
"""For the tests about heartbeat timing (children in their own processes)."""
RELAXED_INTERVAL = 0.2
RELAXED_TIMEOUT = 0.6
"""For the ``server`` fixture: still short, but with room for an in-process client sharing
the GIL with the pump on a loaded machine."""
WAIT = 10.0
"""Upper bound for waits that normally end in well under a second (child start-up included:
a loaded 2-core machine can take a while to start Python and import zmq)."""

OutputT = TypeVar("OutputT")
ClientT = TypeVar("ClientT", bound=InstanceClient)


def untimed(payload: Any) -> Any:
    """An ExecuteResponse without the handler time the client measured (it varies)."""
    if isinstance(payload, ExecuteResponse):
        return replace(payload, processing_time=None)
    return payload


def short_config(**overrides: Any) -> ConnectionConfig:
    """Loopback TCP on a free port, with heartbeats short enough for quick tests."""
    values: dict[str, Any] = {"heartbeat_interval": HEARTBEAT_INTERVAL,
                              "heartbeat_timeout": HEARTBEAT_TIMEOUT}
    values.update(overrides)
    return ConnectionConfig(**values)


def settings_for(config: ConnectionConfig) -> ServerSettings:
    return ServerSettings(
        heartbeat_interval=config.heartbeat_interval,
        heartbeat_timeout=config.heartbeat_timeout, auth_timeout=config.auth_timeout,
        connection_timeout=config.connection_timeout, max_pending=config.max_pending,
        max_message_size=config.max_message_size)


def new_secret() -> str:
    return secrets.token_hex(32)


class ServerHarness:
    """RouterPump + ServerProtocol + AuthPolicy, driven like the ConnectionActor will.

    The protocol is not thread-safe, so it is only touched under ``self._cond``: by the pump
    thread (consumer, tick) and by test threads (commands, inspection). Outputs other than
    :class:`Send` are appended to a list; sends are counted by message type.
    """

    def __init__(self, config: ConnectionConfig | None = None, *,
                 settings: ServerSettings | None = None, tick_interval: float = 0.02) -> None:
        self.config = config or short_config()
        self.settings = settings or settings_for(self.config)
        self.policy = AuthPolicy(self.config.secret_validator, self.config.max_connections)
        self.protocol = ServerProtocol(self.settings, self.policy, wall_clock=time.time)
        self.tick_interval = tick_interval
        self.pump: RouterPump | None = None
        self.pumps: list[RouterPump] = []
        self.sent: Counter[str] = Counter()
        """Frames the protocol asked to send, by message type name."""
        self.send_failures: list[tuple[bytes, str]] = []
        self.largest_inbound = 0
        self.ignored = 0
        """Frames dropped while silent."""
        self._cond = threading.Condition()
        self._outputs: list[Output] = []
        self._silenced: frozenset[bytes] = frozenset()
        self._request_ids = itertools.count(1000)

    def __repr__(self) -> str:
        bound = self.pump.bound if self.pump is not None else None
        return f"<ServerHarness {bound.endpoint if bound else 'not listening'}>"

    # -- life cycle ------------------------------------------------------------------------------
    def start(self, config: ConnectionConfig | None = None) -> str:
        """Start a (new) pump; returns its endpoint."""
        pump = RouterPump(self._consume, config or self.config, on_tick=self._tick,
                          tick_interval=self.tick_interval, on_send_failed=self._send_failed,
                          name="test")
        self.pumps.append(pump)  # before start(): stopped at teardown even if start fails
        with self._cond:
            self.pump = pump
        pump.start(timeout=WAIT)
        return pump.endpoint

    def stop_pump(self) -> None:
        """The server stops answering at all: its socket is closed."""
        if self.pump is not None:
            self.pump.stop()

    def restart_pump(self) -> str:
        """Stop the pump and start a new one on the same port, like a restarted server: the
        protocol forgets every connection (expected instances stay registered)."""
        assert self.pump is not None and self.pump.port is not None
        port = self.pump.port
        self.stop_pump()
        with self._cond:
            self._record(self.protocol.close_all("server_restart", time.monotonic()))
        return self.start(replace(self.config, port=port))

    def stop(self) -> None:
        for pump in self.pumps:
            pump.stop()

    @property
    def endpoint(self) -> str:
        assert self.pump is not None
        return self.pump.endpoint

    def go_silent(self) -> None:
        """Stop answering the connections open now: their frames are dropped unread and
        nothing is sent to them. New connections are still served."""
        with self._cond:
            self._silenced = frozenset(s.routing_id for s in self.protocol.sessions())

    # -- instances -------------------------------------------------------------------------------
    def expect(self, instance_id: str, secret: str | None = None) -> str:
        """Register an expected instance; returns its secret."""
        secret = secret or new_secret()
        with self._cond:
            self.policy.expect(instance_id, secret)
        return secret

    def env(self, instance_id: str, secret: str, *, endpoint: bool = True) -> dict[str, str]:
        """The environment the spearlet gives an instance process (on top of ours)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAR_")}
        env.update(SPEAR_INSTANCE_ID=instance_id, SPEAR_SECRET=secret,
                   SPEAR_COMMUNICATION_TYPE=self.config.transport)
        assert self.pump is not None
        if self.pump.port is not None:
            env["SPEAR_COMMUNICATION_PORT"] = str(self.pump.port)
        if self.endpoint.startswith("ipc://"):
            env["SPEAR_COMMUNICATION_PATH"] = self.endpoint[len("ipc://"):]
        if endpoint:
            env["SPEAR_COMMUNICATION_ENDPOINT"] = self.endpoint
        return env

    def send_payload(self, instance_id: str, payload: Payload, request_id: int = 0) -> None:
        with self._cond:
            frame = self.protocol.send_to_instance(instance_id, payload, request_id)
        assert frame is not None, f"{instance_id} has no live connection"
        self._ship([frame])

    def execute(self, instance_id: str, data: bytes, method: str = "echo") -> int:
        """Send an EXECUTE_REQUEST; returns its request id (see :meth:`reply`)."""
        request_id = next(self._request_ids)
        self.send_payload(instance_id, ExecuteRequest(method, data, None), request_id)
        return request_id

    def reply(self, request_id: int, timeout: float = WAIT) -> Delivered:
        return self.wait_for(Delivered, lambda d: d.message.request_id == request_id, timeout)

    def call(self, instance_id: str, data: bytes, method: str = "echo",
             timeout: float = WAIT) -> Delivered:
        return self.reply(self.execute(instance_id, data, method), timeout)

    def echo(self, instance_id: str, data: bytes, timeout: float = WAIT) -> bytes:
        """Round trip through an echo handler; the data that came back."""
        payload = self.call(instance_id, data, timeout=timeout).payload
        assert isinstance(payload, ExecuteResponse) and payload.ok, payload
        return payload.data

    def signal(self, instance_id: str, signal: str, reason: str = "test") -> None:
        self.send_payload(instance_id, Signal(signal, reason))

    def close_instance(self, instance_id: str, reason: str) -> None:
        with self._cond:
            outputs = self.protocol.close_instance(instance_id, reason, time.monotonic())
            sends = self._record(outputs)
        self._ship(sends)

    def heartbeat_sequence(self, instance_id: str) -> int | None:
        with self._cond:
            session = self.protocol.session_of_instance(instance_id)
            return None if session is None else session.heartbeat_sequence

    def counters(self) -> dict[str, int]:
        with self._cond:
            return dict(self.protocol.counters)

    # -- outputs ---------------------------------------------------------------------------------
    def outputs(self, kind: type[OutputT] | None = None) -> list[Any]:
        with self._cond:
            return [o for o in self._outputs if kind is None or isinstance(o, kind)]

    def wait_for(self, kind: type[OutputT], match: Callable[[OutputT], bool] = lambda _: True,
                 timeout: float = WAIT, count: int = 1) -> OutputT:
        """The ``count``-th output of type ``kind`` matching ``match``; AssertionError if it
        does not come within ``timeout``."""
        def found() -> list[OutputT]:
            return [o for o in self._outputs if isinstance(o, kind) and match(o)]
        with self._cond:
            if not self._cond.wait_for(lambda: len(found()) >= count, timeout):
                raise AssertionError(f"no {kind.__name__} #{count} within {timeout} s; "
                                     f"outputs: {self._outputs[-20:]}")
            return found()[count - 1]

    def authenticated(self, instance_id: str, count: int = 1,
                      timeout: float = WAIT) -> Authenticated:
        return self.wait_for(Authenticated, lambda a: a.instance_id == instance_id,
                             timeout, count)

    def closed(self, instance_id: str | None = None, timeout: float = WAIT) -> Closed:
        return self.wait_for(Closed, lambda c: instance_id is None
                             or c.instance_id == instance_id, timeout)

    # -- pump thread -----------------------------------------------------------------------------
    def _consume(self, batch: list[Inbound]) -> None:
        with self._cond:
            sends: list[Send] = []
            for inbound in batch:
                self.largest_inbound = max(self.largest_inbound, len(inbound.body))
                if inbound.routing_id in self._silenced:
                    self.ignored += 1
                    continue
                sends += self._record(self.protocol.receive(
                    inbound.routing_id, inbound.body, inbound.received_at,
                    inbound.remote_addr))
        self._ship(sends)

    def _tick(self, now: float) -> None:
        with self._cond:
            sends = self._record(self.protocol.tick(now))
        self._ship(sends)

    def _send_failed(self, routing_id: bytes, _tag: int, reason: str) -> None:
        with self._cond:
            self.send_failures.append((routing_id, reason))

    def _record(self, outputs: list[Output]) -> list[Send]:
        """Keep ``outputs`` (caller holds the lock); return the frames to send."""
        sends = []
        for output in outputs:
            if isinstance(output, Send):
                if output.routing_id not in self._silenced:
                    self.sent[output.message_type.name] += 1
                    sends.append(output)
                continue
            if isinstance(output, Closed) and self.pump is not None:
                self.pump.forget(output.routing_id)
            self._outputs.append(output)
        if outputs:
            self._cond.notify_all()
        return sends

    def _ship(self, sends: list[Send]) -> None:
        pump = self.pump
        if sends and pump is not None:
            pump.send_many((s.routing_id, s.body) for s in sends)


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ServerHarness]]:
    """Make started harnesses: ``server_factory(config=None, start=True)``; all are stopped
    at teardown."""
    made: list[ServerHarness] = []

    def make(config: ConnectionConfig | None = None, *, start: bool = True,
             **kwargs: Any) -> ServerHarness:
        harness = ServerHarness(config, **kwargs)
        made.append(harness)
        if start:
            harness.start()
        return harness

    yield make
    for harness in made:
        harness.stop()


@pytest.fixture
def server(server_factory: Callable[..., ServerHarness]) -> ServerHarness:
    """A started harness with short heartbeats (interval 0.2 s, timeout 0.6 s)."""
    return server_factory(short_config(heartbeat_interval=RELAXED_INTERVAL,
                                       heartbeat_timeout=RELAXED_TIMEOUT))


# -- child processes ---------------------------------------------------------------------------

@dataclass
class Child:
    """A child process whose output is collected when it ends."""

    proc: subprocess.Popen[str]
    out: str = ""
    err: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def finish(self, timeout: float = WAIT) -> int:
        """Wait for the child to exit on its own (bounded); returns its exit code."""
        try:
            self.out, self.err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"child {self.pid} did not exit within {timeout} s; "
                                 f"stderr: {self.err[-2000:]}") from None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.out, self.err = self.proc.communicate(timeout=WAIT)


@pytest.fixture
def spawn() -> Iterator[Callable[..., Child]]:
    """Start ``sys.executable *args`` with ``env``; every child is killed and reaped at
    teardown (pipes drained, so none can block on a full pipe)."""
    children: list[Child] = []

    def start(*args: str, env: Mapping[str, str]) -> Child:
        proc = subprocess.Popen([sys.executable, *args], env=dict(env), text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        child = Child(proc)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


# -- in-process clients ------------------------------------------------------------------------

@dataclass
class Serving:
    """``client.serve(handler)`` running in a thread."""

    client: InstanceClient
    thread: threading.Thread
    result: str | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float = WAIT) -> str:
        """serve()'s return value; AssertionError if it has not returned within ``timeout``."""
        assert self.done.wait(timeout), f"serve() still running after {timeout} s"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class Clients:
    """Factory for in-process InstanceClients; all are closed and their threads joined."""

    def __init__(self) -> None:
        self.clients: list[InstanceClient] = []
        self.serving: list[Serving] = []

    def make(self, client: ClientT) -> ClientT:
        self.clients.append(client)
        return client

    def new(self, server: ServerHarness, instance_id: str, secret: str,
            **kwargs: Any) -> InstanceClient:
        return self.make(InstanceClient(server.endpoint, instance_id, secret, **kwargs))

    def serve(self, client: InstanceClient,
              handler: Callable[[str, bytes], bytes] = lambda _m, d: d) -> Serving:
        serving: Serving

        def run() -> None:
            try:
                serving.result = client.serve(handler)
            except BaseException as exc:
                serving.error = exc
            finally:
                serving.done.set()

        serving = Serving(client, threading.Thread(target=run, name="test-serve", daemon=True))
        self.serving.append(serving)
        serving.thread.start()
        return serving

    def close_all(self) -> None:
        for client in self.clients:
            client.close(timeout=WAIT)
        for serving in self.serving:
            serving.thread.join(WAIT)
        stuck = [s for s in self.serving if s.thread.is_alive()]
        assert not stuck, f"serve() threads still running after close: {stuck}"


@pytest.fixture
def clients() -> Iterator[Clients]:
    tracker = Clients()
    yield tracker
    tracker.close_all()


# -- raw sockets -------------------------------------------------------------------------------

class RawPeers:
    """Raw DEALER sockets (no InstanceClient) for sending what a real client never would."""

    def __init__(self) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sockets: list[zmq.Socket[bytes]] = []

    def dealer(self, endpoint: str) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        self.sockets.append(sock)
        sock.connect(endpoint)
        return sock

    def authenticated(self, endpoint: str, instance_id: str, secret: str
                      ) -> tuple[zmq.Socket[bytes], ClientSession]:
        """A raw DEALER that completed the handshake (driven by the sans-IO ClientSession)."""
        sock = self.dealer(endpoint)
        session = ClientSession(instance_id, secret)
        sock.send(session.start(time.time()))
        event = session.receive(recv(sock), time.time())
        assert isinstance(event, AuthAccepted), event
        return sock, session

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        self.ctx.term()


def recv(sock: zmq.Socket[bytes], timeout: float = WAIT) -> bytes:
    """One frame from ``sock`` within ``timeout`` (AssertionError otherwise)."""
    assert sock.poll(int(timeout * 1000), zmq.POLLIN), f"nothing received within {timeout} s"
    return sock.recv(zmq.NOBLOCK)


@pytest.fixture
def raw() -> Iterator[RawPeers]:
    peers = RawPeers()
    yield peers
    peers.close()
