"""Raw ROUTER echo server for the baselines; run as a script: ``python bench/_echo_server.py``.

Binds ``tcp://127.0.0.1:<random port>``, prints the port on one line, then for every
``[routing_id, body]`` it receives: ``msgpack.unpackb(body)``, ``msgpack.packb`` it back and
sends it to the same routing id. It imports only zmq and msgpack (no bench package), exits on
SIGTERM/SIGINT, and exits by itself if its parent goes away.
"""

from __future__ import annotations

import os
import signal
import sys

import msgpack
import zmq


def main() -> int:
    parent = os.getppid()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.sndhwm = 0  # unbounded: a pipelining client may have many requests in flight
    sock.rcvhwm = 0
    sock.rcvtimeo = 1000  # wake up now and then to notice an orphaned server
    try:
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        sys.stdout.write(f"{port}\n")
        sys.stdout.flush()
        recv = sock.recv_multipart
        send = sock.send_multipart
        unpackb = msgpack.unpackb
        packb = msgpack.packb
        while True:
            try:
                frames = recv()
            except zmq.Again:
                if os.getppid() != parent:
                    return 0
                continue
            if len(frames) != 2:
                continue
            rid, body = frames
            try:
                msg = unpackb(body)
            except (ValueError, TypeError, msgpack.UnpackException):
                continue  # not msgpack: ignore it, like a server that must carry on
            send([rid, packb(msg)])
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close(0)
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())
