"""RouterPump dedicated listeners: tagged routing ids, removal, impersonation refused."""

from __future__ import annotations

import threading

import zmq

from spear_actors.config import ConnectionConfig
from spear_actors.transport.router import Inbound, RouterPump
from tests.helpers import wait_until


class _Sink:
    def __init__(self) -> None:
        self.frames: list[Inbound] = []
        self.lock = threading.Lock()

    def __call__(self, batch: list[Inbound]) -> None:
        with self.lock:
            self.frames.extend(batch)

    def bodies(self) -> list[bytes]:
        with self.lock:
            return [f.body for f in self.frames]


def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str,
            identity: bytes | None = None) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(endpoint)
    return sock


def test_tagged_listener_routes_both_ways() -> None:
    sink = _Sink()
    pump = RouterPump(sink, ConnectionConfig())
    pump.start()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        bound = pump.add_listener(b"abcd").result(timeout=5)
        assert bound.port not in (None, pump.port)
        sock = _dealer(ctx, bound.endpoint)
        sock.send(b"hello")
        wait_until(lambda: b"hello" in sink.bodies(), 5)
        frame = next(f for f in sink.frames if f.body == b"hello")
        assert RouterPump.listener_tag(frame.routing_id) == b"abcd"
        pump.send(frame.routing_id, b"back")  # replies go out through the same listener
        assert sock.poll(5000) and sock.recv() == b"back"
        sock.close(0)

        pump.remove_listener(b"abcd").result(timeout=5)
        failed: list[str] = []
        pump._on_send_failed = lambda rid, tag, why: failed.append(why)
        pump.send(frame.routing_id, b"gone")
        wait_until(lambda: failed == ["unreachable"], 5)
    finally:
        pump.stop()
        ctx.term()


def test_main_listener_refuses_a_forged_tagged_identity() -> None:
    sink = _Sink()
    pump = RouterPump(sink, ConnectionConfig())
    pump.start()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        pump.add_listener(b"wxyz").result(timeout=5)
        forger = _dealer(ctx, pump.endpoint, identity=b"\xffwxyz\x00\x01\x02\x03\x04")
        honest = _dealer(ctx, pump.endpoint)
        forger.send(b"forged")
        honest.send(b"honest")
        wait_until(lambda: b"honest" in sink.bodies(), 5)
        wait_until(lambda: pump.counters["impersonation"] == 1, 5)
        assert b"forged" not in sink.bodies()
        forger.close(0)
        honest.close(0)
    finally:
        pump.stop()
        ctx.term()
