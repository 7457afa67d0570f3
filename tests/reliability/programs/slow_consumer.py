"""Instance that authenticates and then never reads its socket again: a slow (here: stopped)
consumer. It keeps sending HEARTBEATs on time, so the server cannot tell it from a healthy
one; whatever is sent to it piles up in its (small) receive buffers and then the server's.
Runs until killed (the spearlet's stop ends with SIGTERM: it never reads the stop SIGNAL)."""

from __future__ import annotations

import time

import zmq
from rawclient import authenticate, dealer, session


def main() -> None:
    ctx = zmq.Context()
    sock = dealer(ctx, RCVHWM=4, RCVBUF=64 * 1024)
    sess = session()
    authenticate(sock, sess)
    interval = sess.heartbeat_interval or 1.0
    while True:
        sock.send(sess.heartbeat(time.time()), zmq.NOBLOCK)
        time.sleep(interval)


if __name__ == "__main__":
    main()
