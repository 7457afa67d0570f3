"""Shared by the misbehaving instance programs here: a raw DEALER authenticated with the
sans-IO ClientSession from the ``SPEAR_*`` environment (no InstanceClient, so nothing in the
real client can stop a program from misbehaving)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import zmq

from spear_actors.protocol.client import (
    AuthAccepted,
    ClientSession,
    RequestReceived,
    ServerClosed,
    SignalReceived,
)


def endpoint() -> str:
    return os.environ.get("SPEAR_COMMUNICATION_ENDPOINT") or \
        f"tcp://127.0.0.1:{os.environ['SPEAR_COMMUNICATION_PORT']}"


def session(**options: float) -> ClientSession:
    return ClientSession(os.environ["SPEAR_INSTANCE_ID"], os.environ["SPEAR_SECRET"],
                         **options)  # type: ignore[arg-type]


def dealer(ctx: zmq.Context[zmq.Socket[bytes]], **options: int) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(endpoint())
    return sock


def authenticate(sock: zmq.Socket[bytes], sess: ClientSession, timeout: float = 10.0) -> None:
    """Handshake or exit(1)."""
    sock.send(sess.start(time.time()))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sock.poll(100):
            if isinstance(sess.receive(sock.recv(), time.time()), AuthAccepted):
                return
            print(f"{sys.argv[0]}: not authenticated", file=sys.stderr)
            sys.exit(1)
    print(f"{sys.argv[0]}: no answer to AUTH_REQUEST", file=sys.stderr)
    sys.exit(1)


def serve(sock: zmq.Socket[bytes], sess: ClientSession,
          answer: Callable[[RequestReceived], bytes]) -> int:
    """Heartbeat and answer requests with ``answer`` until SIGNAL stop or CONNECTION_CLOSE
    (exit code 0), or until the server goes silent (2)."""
    while True:
        now = time.time()
        if sess.heartbeat_due(now):
            sock.send(sess.heartbeat(now))
        if sess.server_silent(now):
            return 2
        if not sock.poll(50):
            continue
        event = sess.receive(sock.recv(), time.time())
        if isinstance(event, RequestReceived):
            sock.send(sess.respond(event.request_id, time.time(), answer(event)))
        elif isinstance(event, SignalReceived) and event.signal == "stop":
            sock.send(sess.close("stop", time.time()))
            return 0
        elif isinstance(event, ServerClosed):
            return 0
