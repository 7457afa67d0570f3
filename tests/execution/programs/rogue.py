"""Test instance program that also answers request ids it was never given.

A raw DEALER driven by the sans-IO :class:`ClientSession` (no InstanceClient, so nothing in
the real client can stop it misbehaving). For every EXECUTE_REQUEST it first sends one extra
EXECUTE_RESPONSE (``ok=true``, data ``b"rogue"``) for each offset in ``ROGUE_OFFSETS``
(comma-separated ints, default ``1000``): request id ``id + offset``. Then it answers the
real request with its data. Heartbeats as the server asks; exits on SIGNAL stop, on
CONNECTION_CLOSE, or when the server has been silent for its heartbeat timeout.
"""

from __future__ import annotations

import os
import sys
import time

import zmq

from spear_actors.protocol.client import (
    AuthAccepted,
    ClientSession,
    RequestReceived,
    ServerClosed,
    SignalReceived,
)

OFFSETS = [int(o) for o in os.environ.get("ROGUE_OFFSETS", "1000").split(",") if o]


def endpoint() -> str:
    return os.environ.get("SPEAR_COMMUNICATION_ENDPOINT") or \
        f"tcp://127.0.0.1:{os.environ['SPEAR_COMMUNICATION_PORT']}"


def main() -> int:
    session = ClientSession(os.environ["SPEAR_INSTANCE_ID"], os.environ["SPEAR_SECRET"])
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 200)
    sock.connect(endpoint())
    try:
        sock.send(session.start(time.time()))
        if not sock.poll(10_000) or not isinstance(
                session.receive(sock.recv(), time.time()), AuthAccepted):
            print("rogue: not authenticated", file=sys.stderr)
            return 1
        while True:
            now = time.time()
            if session.heartbeat_due(now):
                sock.send(session.heartbeat(now))
            if session.server_silent(now):
                return 2
            if not sock.poll(50):
                continue
            event = session.receive(sock.recv(), time.time())
            if isinstance(event, RequestReceived):
                for offset in OFFSETS:
                    if event.request_id + offset > 0:
                        sock.send(session.respond(event.request_id + offset, time.time(),
                                                  b"rogue"))
                sock.send(session.respond(event.request_id, time.time(), event.data))
            elif isinstance(event, SignalReceived) and event.signal == "stop":
                sock.send(session.close("stop", time.time()))
                return 0
            elif isinstance(event, ServerClosed):
                return 0
    finally:
        sock.close()
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())
