"""Many peers that never authenticate: ``flood.py ENDPOINT COUNT``.

Opens COUNT DEALER sockets to ENDPOINT (in batches, so the connects overlap), and each sends
exactly one frame that is not an AUTH_REQUEST: odd ones garbage bytes, even ones a
well-formed HEARTBEAT. Then prints ``sent COUNT`` and keeps every socket open (half-open:
connected, never authenticated) until its stdin is closed or its parent goes away; then
prints ``answers N`` (frames the server sent them) and closes everything.
"""

from __future__ import annotations

import os
import select
import sys
import time

import zmq

from spear_actors.protocol import Heartbeat, pack

BATCH = 500


def main() -> int:
    endpoint, count = sys.argv[1], int(sys.argv[2])
    parent = os.getppid()
    ctx = zmq.Context()
    ctx.max_sockets = count + 64
    socks: list[zmq.Socket[bytes]] = []
    heartbeat = pack(Heartbeat(1), 0, time.time())
    for start in range(0, count, BATCH):
        batch = []
        for i in range(start, min(count, start + BATCH)):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            batch.append((i, sock))
        for i, sock in batch:
            sock.send(heartbeat if i % 2 == 0 else b"\xc1" + os.urandom(16))
            socks.append(sock)
    print(f"sent {count}", flush=True)
    while os.getppid() == parent:
        if select.select([sys.stdin], [], [], 0.2)[0] and not sys.stdin.read(1):
            break  # stdin closed: we are done
    answers = 0  # what the server said to them (ERROR not_authenticated, at most)
    for sock in socks:
        while True:
            try:
                sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            answers += 1
    print(f"answers {answers}", flush=True)
    for sock in socks:
        sock.close(0)
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
