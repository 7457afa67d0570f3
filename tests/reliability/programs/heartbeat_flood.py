"""Instance that authenticates, then sends HEARTBEATs in a tight loop for ``FLOOD_SECONDS``
(reading and dropping the answers as it goes), then behaves: heartbeats at the server's
interval, echoes requests, and answers method ``count`` with the number of heartbeats it
sent. Exits on SIGNAL stop, on CONNECTION_CLOSE, or when the server goes silent."""

from __future__ import annotations

import os
import sys
import time

import zmq
from rawclient import authenticate, dealer, serve, session

from spear_actors.protocol.client import RequestReceived


def main() -> int:
    flood_for = float(os.environ.get("FLOOD_SECONDS", "2"))
    ctx = zmq.Context()
    sock = dealer(ctx, SNDHWM=100_000, RCVHWM=100_000)
    # after the flood the server has a backlog to work through: be patient with its answers
    sess = session(heartbeat_timeout_factor=50)
    authenticate(sock, sess)
    sent = 0
    held: list[RequestReceived] = []  # answered once the flood is over
    end = time.monotonic() + flood_for
    while time.monotonic() < end:
        for _ in range(100):
            sock.send(sess.heartbeat(time.time()))
            sent += 1
        while sock.poll(0):
            event = sess.receive(sock.recv(), time.time())
            if isinstance(event, RequestReceived):
                held.append(event)
    print(f"heartbeat flood: sent {sent} heartbeats in {flood_for} s", file=sys.stderr)
    for event in held:
        data = str(sent).encode() if event.method == "count" else event.data
        sock.send(sess.respond(event.request_id, time.time(), data))
    return serve(sock, sess, lambda event: str(sent).encode() if event.method == "count"
                 else event.data)

if __name__ == "__main__":
    sys.exit(main())
