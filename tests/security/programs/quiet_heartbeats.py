"""A quiet, well-behaved raw client (DESIGN.md section 11: no peer can starve others'
heartbeats). Authenticates with its ``SPEAR_*`` credentials, then sends a HEARTBEAT every
``QUIET_PERIOD`` s (default 0.1) on its own schedule and times each answer by its sequence.
Never reconnects: a CONNECTION_CLOSE ends it (exit 4), an ERROR is recorded.

Method ``report`` answers JSON ``{"sent", "latencies" (s, answered heartbeats), "missing"
(sent over 1 s ago and never answered), "errors" (ERROR codes received)}``; anything else is
echoed. Exits on SIGNAL stop, or when the server is silent for 100 intervals."""

from __future__ import annotations

import json
import os
import sys
import time

import zmq

from spear_actors.protocol.client import (
    ErrorReceived,
    HeartbeatAck,
    RequestReceived,
    ServerClosed,
    SignalReceived,
)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "reliability",
                                "programs"))
from rawclient import authenticate, dealer, session

MISSING_AFTER = 1.0


def main() -> int:
    period = float(os.environ.get("QUIET_PERIOD", "0.1"))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = dealer(ctx)
    sess = session(heartbeat_timeout_factor=100)
    authenticate(sock, sess)
    pending: dict[int, float] = {}  # sequence -> monotonic send time
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    next_beat = time.monotonic()
    while True:
        mono = time.monotonic()
        if mono >= next_beat:
            sock.send(sess.heartbeat(time.time()))
            sent += 1
            pending[sent] = mono  # the session numbers its heartbeats 1, 2, 3...
            next_beat += period
            if next_beat < mono:  # we were descheduled: keep the period, skip the past
                next_beat = mono + period
        if sess.server_silent(time.time()):
            return 2
        if not sock.poll(max(0, int((next_beat - time.monotonic()) * 1000)) + 1):
            continue
        event = sess.receive(sock.recv(), time.time())
        if isinstance(event, HeartbeatAck):
            at = pending.pop(event.sequence, None)
            if at is not None:
                latencies.append(time.monotonic() - at)
        elif isinstance(event, RequestReceived):
            if event.method == "report":
                now = time.monotonic()
                missing = sorted(s for s, at in pending.items() if now - at > MISSING_AFTER)
                data = json.dumps({"sent": sent, "latencies": latencies, "missing": missing,
                                   "errors": errors}).encode()
            else:
                data = event.data
            sock.send(sess.respond(event.request_id, time.time(), data))
        elif isinstance(event, ErrorReceived):
            errors.append(event.code)
        elif isinstance(event, SignalReceived) and event.signal == "stop":
            sock.send(sess.close("stop", time.time()))
            return 0
        elif isinstance(event, ServerClosed):
            print(f"{sys.argv[0]}: the server closed the connection: {event}", file=sys.stderr)
            return 4


if __name__ == "__main__":
    sys.exit(main())
