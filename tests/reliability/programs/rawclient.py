"""Shared by the misbehaving instance programs here: a raw DEALER authenticated with the
sans-IO ClientSession from the ``SPEAR_*`` environment (no InstanceClient, so nothing in the
real client can stop a program from misbehaving)."""

from __future__ import annotations

import os
import sys
import time

import zmq

from spear_actors.protocol.client import AuthAccepted, ClientSession


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
