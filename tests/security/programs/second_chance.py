"""Instance that misbehaves first, then behaves (DESIGN.md section 11: a reconnection gets a
fresh chance). On a first DEALER (no automatic reconnection) it sends garbage that is not
msgpack every 20 ms until the server cuts that connection (the peer is muted, and cut at its
next frame), for 10 s at most (exit 3 if never cut). Then it opens a fresh DEALER (a new
routing id), authenticates with its ``SPEAR_*`` credentials and serves: method ``history``
answers JSON ``{"cut": bool, "garbage": frames sent, "cut_after": s}``, anything else is
echoed. Exits on SIGNAL stop, on CONNECTION_CLOSE, or when the server goes silent."""

from __future__ import annotations

import json
import os
import sys
import time

import zmq

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "reliability",
                                "programs"))
from rawclient import authenticate, dealer, serve, session

CUT_WITHIN = 10.0
GARBAGE = b"\xc1 this is not msgpack"


def misbehave(ctx: zmq.Context[zmq.Socket[bytes]]) -> tuple[int, float]:
    """Garbage until cut: (frames sent, seconds until the cut)."""
    sock = dealer(ctx, RECONNECT_IVL=-1)
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < CUT_WITHIN:
            sock.send(GARBAGE, zmq.NOBLOCK)
            sent += 1
            if monitor.poll(20):
                monitor.recv_multipart()
                return sent, time.monotonic() - started
        print(f"{sys.argv[0]}: never cut after {sent} garbage frames", file=sys.stderr)
        sys.exit(3)
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)


def main() -> int:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    garbage, cut_after = misbehave(ctx)
    history = json.dumps({"cut": True, "garbage": garbage, "cut_after": cut_after}).encode()
    sock = dealer(ctx)
    sess = session()
    authenticate(sock, sess)
    return serve(sock, sess, lambda event: history if event.method == "history"
                 else event.data)

if __name__ == "__main__":
    sys.exit(main())
