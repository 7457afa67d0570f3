"""Many simulated instances in one process, for ``bench_connections``; run as a script.

Reads one JSON object on stdin: ``{"endpoint": str, "mode": "spear"|"raw", "interval": float,
"peers": [[instance_id, secret], ...]}``. Opens one DEALER per peer; in ``spear`` mode each
authenticates with the sans-IO ClientSession and then sends HEARTBEAT every ``interval`` (the
server's heartbeat_interval); in ``raw`` mode each sends a protocol-shaped msgpack HEARTBEAT
every ``interval`` with no auth. Heartbeats are spread evenly over the interval. Prints
``ready <n>`` once every peer is authenticated (spear) or answered once (raw), then carries on
until killed, or until its parent goes away.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import sys
import time

import msgpack
import zmq


def main() -> int:
    parent = os.getppid()
    cfg = json.loads(sys.stdin.read())
    endpoint: str = cfg["endpoint"]
    mode: str = cfg["mode"]
    interval: float = float(cfg["interval"])
    peers: list[list[str]] = cfg["peers"]
    n = len(peers)

    ctx = zmq.Context()
    ctx.max_sockets = max(1024, n + 64)
    socks: list[zmq.Socket[bytes]] = []
    poller = zmq.Poller()
    for _ in peers:
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.connect(endpoint)
        poller.register(s, zmq.POLLIN)
        socks.append(s)
    index = {s: i for i, s in enumerate(socks)}
    answered = [False] * n

    if mode == "spear":
        from spear_actors.protocol.client import AuthAccepted, AuthRejected, ClientSession

        sessions = [ClientSession(iid, secret) for iid, secret in peers]
        now = time.time()
        for s, sess in zip(socks, sessions, strict=True):
            s.send(sess.start(now))
    else:
        seq = [0] * n

        def raw_heartbeat(i: int, now: float) -> bytes:
            seq[i] += 1
            body: bytes = msgpack.packb({"message_type": 6, "request_id": 0, "timestamp": now,
                                  "payload": msgpack.packb({"sequence": seq[i]}),
                                  "version": 1})
            return body

        now = time.time()
        for i, s in enumerate(socks):
            s.send(raw_heartbeat(i, now))

    # heartbeat schedule: a heap of (due, index); each peer starts at a random phase of the
    # interval once it is answered, so the heartbeats are spread evenly
    schedule: list[tuple[float, int]] = []
    ready_reported = False
    count = 0
    while True:
        events = poller.poll(20)
        now = time.time()
        for sock, _ev in events:
            i = index[sock]
            while True:
                try:
                    body = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if mode == "spear":
                    event = sessions[i].receive(body, now)
                    if isinstance(event, AuthRejected):
                        print(f"error auth rejected for {peers[i][0]}", flush=True)
                        return 1
                    if isinstance(event, AuthAccepted) and not answered[i]:
                        answered[i] = True
                        count += 1
                        heapq.heappush(schedule, (now + interval * random.random(), i))
                elif not answered[i]:
                    answered[i] = True
                    count += 1
                    heapq.heappush(schedule, (now + interval * random.random(), i))
        if not ready_reported and count == n:
            ready_reported = True
            print(f"ready {n}", flush=True)
        while schedule and schedule[0][0] <= now:
            due, i = heapq.heappop(schedule)
            if mode == "spear":
                sess = sessions[i]
                body = sess.heartbeat(now)
            else:
                body = raw_heartbeat(i, now)
            try:
                socks[i].send(body, zmq.NOBLOCK)
            except zmq.Again:
                pass
            heapq.heappush(schedule, (max(due + interval, now), i))
        if os.getppid() != parent:
            return 0


if __name__ == "__main__":
    sys.exit(main())
