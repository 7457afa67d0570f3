"""A rogue instance: authenticates as itself (its own ``SPEAR_*`` credentials), then on
request tries to act for another instance. Methods (the answer is a JSON report):

- ``impersonate`` (data: the other instance's id): a fresh DEALER authenticates with that id
  and *our* secret;
- ``reauth`` (data: the other id): an AUTH_REQUEST for that id on our authenticated socket;
- ``forge`` (data: JSON list of offsets): EXECUTE_RESPONSEs (data ``b"forged"``) for the
  request ids this request's id plus each offset: requests we were never given;
- anything else: echo.

Exits on SIGNAL stop, on CONNECTION_CLOSE, or when the server goes silent.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import zmq

from spear_actors.protocol.client import (
    AuthAccepted,
    AuthRejected,
    ClientSession,
    ErrorReceived,
    RequestReceived,
    ServerClosed,
    SignalReceived,
)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "reliability",
                                "programs"))
from rawclient import authenticate, dealer, session


def impersonate(ctx: zmq.Context[zmq.Socket[bytes]], other: str) -> dict[str, Any]:
    sock = dealer(ctx)
    try:
        fake = ClientSession(other, os.environ["SPEAR_SECRET"])
        sock.send(fake.start(time.time()))
        seen = []
        while sock.poll(5000):
            event = fake.receive(sock.recv(), time.time())
            seen.append(type(event).__name__)
            if isinstance(event, (AuthAccepted, AuthRejected)):
                break
        return {"accepted": "AuthAccepted" in seen, "seen": seen}
    finally:
        sock.close(0)


class Rogue:
    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.ctx = ctx
        self.sock = dealer(ctx)
        self.sess = session(heartbeat_timeout_factor=10)  # patient on a loaded machine
        authenticate(self.sock, self.sess)
        self.errors: list[str] = []

    def step(self, timeout_ms: int) -> RequestReceived | bool | None:
        """One frame: a request to handle, None, or False when it is time to go."""
        now = time.time()
        if self.sess.heartbeat_due(now):
            self.sock.send(self.sess.heartbeat(now))
        if self.sess.server_silent(now):
            return False
        if not self.sock.poll(timeout_ms):
            return None
        event = self.sess.receive(self.sock.recv(), time.time())
        if isinstance(event, RequestReceived):
            return event
        if isinstance(event, ErrorReceived):
            self.errors.append(event.code)
        if isinstance(event, ServerClosed) or (
                isinstance(event, SignalReceived) and event.signal == "stop"):
            return False
        return None

    def reauth(self, other: str) -> dict[str, Any]:
        before = len(self.errors)
        fake = ClientSession(other, os.environ["SPEAR_SECRET"])
        self.sock.send(fake.start(time.time()))
        deadline = time.monotonic() + 5
        while len(self.errors) == before and time.monotonic() < deadline:
            if self.step(50) is False:
                break
        return {"errors": self.errors[before:]}

    def handle(self, request: RequestReceived) -> bytes:
        if request.method == "impersonate":
            return json.dumps(impersonate(self.ctx, request.data.decode())).encode()
        if request.method == "reauth":
            return json.dumps(self.reauth(request.data.decode())).encode()
        if request.method == "forge":
            offsets = json.loads(request.data)
            for offset in offsets:
                if request.request_id + offset > 0:
                    self.sock.send(self.sess.respond(request.request_id + offset, time.time(),
                                                     b"forged"))
            return json.dumps({"forged": len(offsets)}).encode()
        return request.data

    def run(self) -> int:
        while True:
            event = self.step(50)
            if event is False:
                return 0
            if isinstance(event, RequestReceived):
                self.sock.send(self.sess.respond(event.request_id, time.time(),
                                                 self.handle(event)))


def main() -> int:
    ctx = zmq.Context()
    try:
        return Rogue(ctx).run()
    finally:
        ctx.destroy(0)


if __name__ == "__main__":
    sys.exit(main())
