"""RouterPump serving real instance processes through the ServerProtocol (see conftest's
ServerHarness): the handshake, echo, heartbeat loss, oversize and garbage frames."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import msgpack
import pytest
import zmq
from helpers import wait_until
from zmq.utils.monitor import recv_monitor_message

from spear_actors.protocol import (
    AuthRequest,
    ExecuteResponse,
    Heartbeat,
    MessageType,
    encode_payload,
    pack,
)
from spear_actors.protocol.client import ErrorReceived, HeartbeatAck
from spear_actors.protocol.server import Closed, Dropped, Opened
from spear_actors.transport.router import Inbound, RouterPump

from .conftest import (
    ECHO_MODULE,
    HEARTBEAT_TIMEOUT,
    WAIT,
    RawPeers,
    ServerHarness,
    recv,
    short_config,
    untimed,
)


def start_echo(server: ServerHarness, spawn: Any, instance_id: str = "echo-1") -> Any:
    secret = server.expect(instance_id)
    child = spawn(*ECHO_MODULE, env=server.env(instance_id, secret))
    server.authenticated(instance_id)
    return child


def test_echo_child_authenticates_and_echoes(server: ServerHarness, spawn: Any) -> None:
    secret = server.expect("echo-1")
    child = spawn(*ECHO_MODULE, env=server.env("echo-1", secret))

    auth = server.authenticated("echo-1")
    opened = server.wait_for(Opened, lambda o: o.connection_id == auth.connection_id)
    assert opened.remote_addr == "127.0.0.1"
    assert auth.client_type == "process" and auth.superseded is None
    assert len(auth.session_id) >= 32  # >= 128 random bits, hex

    for data in (b"", b"hi", bytes(range(256)) * 3):
        reply = server.call("echo-1", data, method="anything")
        assert reply.instance_id == "echo-1"
        assert untimed(reply.payload) == ExecuteResponse(ok=True, data=data, error=None)

    server.signal("echo-1", "stop")
    assert child.finish() == 0
    assert "echo instance stopping: stop" in child.err
    closed = server.closed("echo-1")
    assert closed.reason == "peer_closed" and closed.was_authenticated


def test_killed_client_is_closed_on_heartbeat_timeout(server_factory: Any,
                                                      spawn: Any) -> None:
    server: ServerHarness = server_factory(short_config())  # interval 0.1 s, timeout 0.3 s
    child = start_echo(server, spawn)
    wait_until(lambda: (server.heartbeat_sequence("echo-1") or 0) >= 1, WAIT)

    child.proc.kill()
    killed_at = time.monotonic()
    closed = server.closed("echo-1", timeout=WAIT)
    elapsed = time.monotonic() - killed_at

    assert closed.reason == "heartbeat_timeout" and closed.was_authenticated
    assert elapsed < HEARTBEAT_TIMEOUT + 0.7, f"closed {elapsed:.2f} s after the kill"
    assert server.protocol.session_of_instance("echo-1") is None
    child.kill()  # reap


def test_oversize_frame_is_refused_and_pump_keeps_serving(
        server_factory: Any, spawn: Any, raw: RawPeers) -> None:
    server = server_factory(short_config(max_message_size=1024))
    child = start_echo(server, spawn)

    big = raw.dealer(server.endpoint)
    monitor = big.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        big.send(b"x" * 4096)
        # ZMQ_MAXMSGSIZE: the ROUTER drops the connection instead of reading the frame
        assert monitor.poll(int(WAIT * 1000)), "the oversize sender was not disconnected"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
    finally:
        big.disable_monitor()
        monitor.close(linger=0)

    small = raw.dealer(server.endpoint)  # a frame under the limit does reach the protocol
    small.send(b"y" * 1000)
    wait_until(lambda: server.counters().get("bad_message", 0) >= 1, WAIT)

    assert server.largest_inbound <= 1024
    assert server.echo("echo-1", b"still here") == b"still here"
    assert not [c for c in server.outputs(Closed) if c.instance_id == "echo-1"]
    assert server.pump is not None and server.pump.counters.get("consumer_errors", 0) == 0
    server.signal("echo-1", "stop")
    assert child.finish() == 0


def envelope(message_type: Any = 6, request_id: Any = 0, timestamp: Any = 1.0,
             payload: Any = b"\x80", version: Any = 1, **extra: Any) -> bytes:
    fields = {"message_type": message_type, "request_id": request_id,
              "timestamp": timestamp, "payload": payload, "version": version, **extra}
    return msgpack.packb(fields, use_bin_type=True)  # type: ignore[no-any-return]


GARBAGE: dict[str, bytes] = {
    "random bytes": os.urandom(200),
    "empty": b"",
    "msgpack array": msgpack.packb([1, 2, 3]),
    "msgpack int": msgpack.packb(7),
    "msgpack str": msgpack.packb("hello"),
    "extension type": msgpack.packb(msgpack.ExtType(5, b"ext")),
    "truncated map": envelope()[:-3],
    "missing keys": msgpack.packb({"message_type": 6, "payload": b""}),
    "extra key": envelope(extra=1),
    "wrong types": msgpack.packb({k: "x" for k in (
        "message_type", "request_id", "timestamp", "payload", "version")}),
    "unknown message_type": envelope(message_type=99),
    "negative request_id": envelope(request_id=-1),
    "float request_id": envelope(request_id=1.5),
    "nan timestamp": envelope(timestamp=float("nan")),
    "payload not msgpack": envelope(payload=b"\xc1"),
    "payload str": envelope(payload="not bin"),
    "payload wrong shape": envelope(payload=msgpack.packb({"sequence": "one"})),
    "auth payload missing fields": envelope(
        message_type=1, payload=msgpack.packb({"instance_id": "echo-1"})),
    "unsupported version": envelope(version=2),
}


@pytest.fixture
def garbage_server(server_factory: Any) -> ServerHarness:
    # heartbeats slow enough that a raw peer stays connected while it sends garbage
    harness: ServerHarness = server_factory(short_config(heartbeat_interval=0.5,
                                                         heartbeat_timeout=5.0))
    return harness


def test_garbage_from_unauthenticated_peer_is_counted_and_harmless(
        garbage_server: ServerHarness, spawn: Any, raw: RawPeers) -> None:
    server = garbage_server
    child = start_echo(server, spawn)
    peer = raw.dealer(server.endpoint)

    for body in GARBAGE.values():
        peer.send(body)
    peer.send_multipart([b"two", b"frames"])
    peer.send_multipart([b"", b"", b""])
    # a well-formed message, but not AUTH_REQUEST: not_authenticated
    peer.send(pack(Heartbeat(1), 0, time.time()))
    frames = len(GARBAGE) + 3

    wait_until(lambda: sum(server.counters().values()) >= frames, WAIT,
               message="every garbage frame counted")
    counters = server.counters()
    # the first refused frame mutes the peer (DESIGN.md section 11): the rest are dropped
    # without being decoded, each counted
    assert counters.get("bad_message") == 1
    assert counters.get("muted_dropped") == frames - 1
    assert server.pump is not None
    assert server.pump.counters["multipart"] == 2
    assert server.pump.counters.get("consumer_errors", 0) == 0
    # an unauthenticated peer is told nothing about garbage (and is muted at once)
    assert not peer.poll(200)

    assert server.echo("echo-1", b"unaffected") == b"unaffected"
    assert all(d.connection_id is not None for d in server.outputs(Dropped)
               if d.code != "muted_dropped")
    assert not [c for c in server.outputs(Closed) if c.instance_id == "echo-1"]
    server.signal("echo-1", "stop")
    assert child.finish() == 0


def test_garbage_from_authenticated_peer_gets_errors_and_session_survives(
        garbage_server: ServerHarness, spawn: Any, raw: RawPeers) -> None:
    server = garbage_server
    child = start_echo(server, spawn)
    secret = server.expect("raw-1")
    peer, session = raw.authenticated(server.endpoint, "raw-1", secret)

    for name, body in GARBAGE.items():
        peer.send(body)
        event = session.receive(recv(peer), time.time())
        assert isinstance(event, ErrorReceived), (name, event)
        expected = "unsupported_version" if name == "unsupported version" else "bad_message"
        assert event.code == expected, (name, event)
    peer.send_multipart([b"two", b"frames"])
    event = session.receive(recv(peer), time.time())
    assert isinstance(event, ErrorReceived) and event.code == "bad_message"
    # a message type instances may not send
    peer.send(pack(AuthRequest("raw-1", secret, "x", "y", {}), 5, time.time()))
    event = session.receive(recv(peer), time.time())
    assert isinstance(event, ErrorReceived) and event.code == "bad_message"

    peer.send(session.heartbeat(time.time()))
    assert isinstance(session.receive(recv(peer), time.time()), HeartbeatAck)
    assert server.protocol.session_of_instance("raw-1") is not None
    assert server.echo("echo-1", b"unaffected") == b"unaffected"
    assert server.pump is not None and server.pump.counters.get("consumer_errors", 0) == 0
    server.signal("echo-1", "stop")
    assert child.finish() == 0


def test_valid_payload_types_are_checked_per_message_type(
        garbage_server: ServerHarness, raw: RawPeers) -> None:
    server = garbage_server
    secret = server.expect("raw-1")
    peer, session = raw.authenticated(server.endpoint, "raw-1", secret)
    # an EXECUTE_RESPONSE envelope carrying a HEARTBEAT payload
    peer.send(envelope(message_type=int(MessageType.EXECUTE_RESPONSE),
                       payload=encode_payload(Heartbeat(3))))
    event = session.receive(recv(peer), time.time())
    assert isinstance(event, ErrorReceived) and event.code == "bad_message"


# -- the pump on its own -----------------------------------------------------------------------

def test_consumer_exceptions_are_counted_and_survived(raw: RawPeers) -> None:
    seen: list[Inbound] = []
    got = threading.Event()

    def consumer(batch: list[Inbound]) -> None:
        seen.extend(batch)
        got.set()
        if any(i.body == b"boom" for i in batch):
            raise RuntimeError("consumer bug")

    pump = RouterPump(consumer, short_config())
    try:
        pump.start()
        peer = raw.dealer(pump.endpoint)
        peer.send(b"boom")
        wait_until(lambda: pump.counters.get("consumer_errors", 0) == 1, WAIT)
        peer.send(b"after")
        wait_until(lambda: any(i.body == b"after" for i in seen), WAIT)
        assert pump.running
        assert seen[0].remote_addr == "127.0.0.1"
        assert seen[-1].remote_addr is None  # reported once per routing id
        # replies reach the peer; frames for unknown routing ids fail without stopping it
        pump.send(b"\x00nobody", b"lost")
        pump.send(seen[0].routing_id, b"reply")
        assert recv(peer) == b"reply"
        wait_until(lambda: pump.counters.get("send_failed", 0) == 1, WAIT)
    finally:
        pump.stop()
    assert not pump.running


def test_send_from_many_threads(raw: RawPeers) -> None:
    first: list[Inbound] = []
    ready = threading.Event()

    def consumer(batch: list[Inbound]) -> None:
        first.extend(batch)
        ready.set()

    pump = RouterPump(consumer, short_config())
    try:
        pump.start()
        peer = raw.dealer(pump.endpoint)
        peer.send(b"hello")
        assert ready.wait(WAIT)
        rid = first[0].routing_id

        def sender(n: int) -> None:
            for i in range(200):
                pump.send(rid, b"%d:%d" % (n, i))

        threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        received = {recv(peer) for _ in range(800)}
        assert len(received) == 800
    finally:
        pump.stop()
