"""Fuzzing instance: authenticates with its own credentials, then sends ``FUZZ_FRAMES``
hostile frames (fuzzgen, seed ``FUZZ_SEED``) on its authenticated socket, with a valid
HEARTBEAT every 16 frames (to stay alive) and never a valid CONNECTION_CLOSE (that would end
the session on purpose). It reads every answer as it goes.

``FUZZ_RATE`` (frames per second, default unlimited) paces it below the server's per-peer
budget (DESIGN.md section 11), beyond which frames are dropped unanswered.

It answers any EXECUTE_REQUEST, during or after the fuzzing, with a JSON report:
``{"done", "sent", "bad", "errors": {code: n}, "closed": reason | null}``: ``bad`` counts the
frames the server must refuse with an ERROR (see fuzzgen.classify), ``errors`` the ERRORs it
got back. Exits on SIGNAL stop, on CONNECTION_CLOSE after the fuzzing, or when the server
goes silent.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time
from typing import Any

import zmq
from fuzzgen import classify, frames

from spear_actors.protocol.client import (
    ClientSession,
    ErrorReceived,
    RequestReceived,
    ServerClosed,
    SignalReceived,
)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "reliability",
                                "programs"))
from rawclient import authenticate, dealer, session


class Fuzzer:
    def __init__(self, sock: zmq.Socket[bytes], sess: ClientSession) -> None:
        self.sock = sock
        self.sess = sess
        self.report: dict[str, Any] = {"done": False, "sent": 0, "bad": 0, "errors": {},
                                       "closed": None}
        self.errors: collections.Counter[str] = collections.Counter()
        self.stop = False

    def drain(self, timeout_ms: int = 0) -> None:
        while self.sock.poll(timeout_ms):
            timeout_ms = 0
            event = self.sess.receive(self.sock.recv(), time.time())
            if isinstance(event, ErrorReceived):
                self.errors[event.code] += 1
            elif isinstance(event, RequestReceived):
                self.report["errors"] = dict(self.errors)
                self.sock.send(self.sess.respond(event.request_id, time.time(),
                                                 json.dumps(self.report).encode()))
            elif isinstance(event, ServerClosed):
                self.report["closed"] = event.reason
                self.stop = self.report["done"]
            elif isinstance(event, SignalReceived) and event.signal == "stop":
                self.stop = True

    def fuzz(self, seed: int, count: int, rate: float = 0.0) -> None:
        last = time.monotonic()
        for i, frame in enumerate(frames(seed, count)):
            if rate:  # at least 1/rate s between frames (reading answers), never a burst
                gap = last + 1.0 / rate - time.monotonic()
                if gap > 0:
                    self.drain(int(gap * 1000) + 1)
                last = time.monotonic()
            kind = classify(frame)
            if kind == "close":
                continue
            self.sock.send(frame)
            self.report["sent"] += 1
            self.report["bad"] += kind == "bad"
            if i % 16 == 15:
                self.sock.send(self.sess.heartbeat(time.time()))
            self.drain()
        self.report["done"] = True


def main() -> int:
    ctx = zmq.Context()
    sock = dealer(ctx, RCVHWM=100_000)
    # the server works through thousands of frames after ours: be patient with its answers
    sess = session(heartbeat_timeout_factor=50)
    authenticate(sock, sess)
    fuzzer = Fuzzer(sock, sess)
    fuzzer.fuzz(int(os.environ.get("FUZZ_SEED", "0")), int(os.environ.get("FUZZ_FRAMES", "1000")),
                float(os.environ.get("FUZZ_RATE", "0")))
    print(f"fuzzer: sent {fuzzer.report['sent']} frames, {fuzzer.report['bad']} bad",
          file=sys.stderr)
    while not fuzzer.stop:
        now = time.time()
        if sess.heartbeat_due(now):
            sock.send(sess.heartbeat(now))
        if sess.server_silent(now):
            return 2
        fuzzer.drain(50)
    return 0


if __name__ == "__main__":
    sys.exit(main())
