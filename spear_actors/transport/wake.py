"""WakePipe: lets any thread wake a thread that polls sockets (standard library only).

A ZeroMQ socket may be used by one thread only, so other threads cannot signal a poller
through one; a pipe's write end may be written from any thread, and the poller watches the
read end like a socket. Wake-ups coalesce: after the first, further ones are free until the
poller calls :meth:`drain`.
"""

from __future__ import annotations

import os

__all__ = ["WakePipe"]


class WakePipe:
    """Non-blocking pipe. ``wake()`` from any thread; ``drain()`` from the polling thread
    before it looks at the work it was woken for (so a racing wake is never lost)."""

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write_fd, False)
        self.pending = False

    def wake(self) -> None:
        if self.pending:
            return
        self.pending = True
        try:
            os.write(self._write_fd, b"\0")
        except OSError:
            pass  # full (already woken) or closed (shutting down)

    def drain(self) -> None:
        # read first, then clear: a wake() racing in between either finds ``pending`` still
        # set (its work is picked up by the caller, which looks at the work after draining)
        # or writes a fresh byte; clearing first could swallow that byte and leave
        # ``pending`` stuck, losing every later wake-up
        try:
            while os.read(self.fd, 4096):
                pass
        except OSError:
            pass  # empty (BlockingIOError) or closed
        self.pending = False

    def close(self) -> None:
        # wakes from now on return at once (``pending``), and none writes to a closed
        # descriptor whose number the process may already have given to another file
        self.pending = True
        fds = (self.fd, self._write_fd)
        self.fd = self._write_fd = -1
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
