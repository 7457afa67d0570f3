"""Instance that dies in the middle of authenticating; ``EXIT_MODE`` says where:

- ``connect_only``: connects its DEALER, sends nothing, exits;
- ``truncated``: sends the first half of its AUTH_REQUEST frame (garbage), exits;
- ``after_send``: sends a valid AUTH_REQUEST and exits before reading the answer.

Exits with code 7 (after a moment, so the frame is on its way).
"""

from __future__ import annotations

import os
import time

import zmq
from rawclient import dealer, session


def main() -> None:
    mode = os.environ["EXIT_MODE"]
    ctx = zmq.Context()
    sock = dealer(ctx, LINGER=500)
    frame = session().start(time.time())
    if mode == "truncated":
        sock.send(frame[: len(frame) // 2])
    elif mode == "after_send":
        sock.send(frame)
    sock.close()  # linger: the frame leaves before we go
    ctx.term()
    os._exit(7)


if __name__ == "__main__":
    main()
