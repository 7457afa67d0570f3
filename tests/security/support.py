"""Programs and helpers of the security tests (the system fixtures and the echo probe come
from ``reliability.support``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import zmq

from spear_actors.protocol.client import ClientEvent, ClientSession

PROGRAMS = Path(__file__).parent / "programs"
FUZZER = (sys.executable, str(PROGRAMS / "fuzzer.py"))
ROGUE = (sys.executable, str(PROGRAMS / "rogue.py"))


def try_auth(endpoint: str, instance_id: str, token: str, timeout: float = 5.0,
             curve_server_key: bytes | None = None) -> list[ClientEvent] | None:
    """A raw DEALER sends one AUTH_REQUEST; returns what came back (every frame until the
    AUTH_RESPONSE), or None if nothing came within ``timeout``."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve_server_key is not None:
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey = curve_server_key
        sock.curve_publickey = public
        sock.curve_secretkey = secret
    try:
        sock.connect(endpoint)
        session = ClientSession(instance_id, token)
        sock.send(session.start(time.time()))
        events: list[ClientEvent] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(left * 1000) + 1):
                break
            event = session.receive(sock.recv(), time.time())
            events.append(event)
            if type(event).__name__ in ("AuthAccepted", "AuthRejected"):
                return events
        return events or None
    finally:
        sock.close(0)
        ctx.term()
