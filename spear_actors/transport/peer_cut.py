"""PeerCuts: which peers of a ROUTER are muted, and cutting their connections (DESIGN.md
section 11). Owned by the router pump: every method runs in the pump thread except
:meth:`request`, which any thread may call (a deque append; the pump applies it).

A muted routing id's frames are dropped by the pump as they arrive, undecoded; CUT_GRACE
after the mute, its TCP or ipc connection is cut with ``shutdown`` on the connection's
descriptor (taken with ``ZMQ_SRCFD`` from the peer's first frame, :meth:`note`), but only if
that descriptor still leads to the peer first seen under that routing id (a descriptor number
may have been reused). libzmq then closes the connection: the peer must reconnect, under a
new routing id, to be heard again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import deque

import zmq

__all__ = ["CUT_GRACE", "MAX_MUTED", "PeerCuts"]

CUT_GRACE = 0.05
"""Seconds between muting a peer and cutting its connection: time for libzmq's I/O thread to
write the one answer it was sent (the socket write is asynchronous)."""
MAX_MUTED = 65_536
"""Muted routing ids remembered (oldest forgotten first: a forgotten one that is still
connected gets its next frame decoded once, and is muted again)."""


class PeerCuts:
    """The pump's muted peers and pending cuts; see the module docstring.

    ``known`` and ``muted`` are read directly by the pump's drain loop (hot path)."""

    def __init__(self, counters: dict[str, int]) -> None:
        self.counters = counters
        """The pump's counters: ``peers_cut`` counts the connections cut."""
        self.known: dict[bytes, tuple[int, object]] = {}
        """routing id -> (descriptor, the peer's identity: remote address, or credentials on
        ipc), taken at its first frame: a connection is cut only if its descriptor still
        leads there."""
        self.muted: dict[bytes, None] = {}  # ordered: the oldest is forgotten first
        self._requests: deque[tuple[bytes, bool]] = deque()
        """(routing id, mute?) from the owner, applied in order by the pump thread."""
        self._cuts: deque[tuple[float, bytes]] = deque()

    def request(self, routing_id: bytes, mute: bool) -> None:
        """Any thread: mute ``routing_id`` (True) or forget it (False); the caller wakes the
        pump, which applies requests in order before it reads the next frames."""
        self._requests.append((routing_id, mute))

    def note(self, routing_id: bytes, frame: zmq.Frame) -> str | None:
        """A routing id's first frame: remember its connection; returns the peer's address
        (None if libzmq cannot tell it)."""
        try:
            addr = str(frame.get("Peer-Address")) or None
            fd = int(frame.get(zmq.SRCFD))
            self.known[routing_id] = (fd, _peer_identity(fd))
            return addr
        except (zmq.ZMQError, ValueError, TypeError):
            self.known[routing_id] = (-1, None)
            return None

    def pending(self) -> bool:
        """Is there work for :meth:`apply`: requests, or a cut that is due?"""
        return bool(self._requests) or (bool(self._cuts) and self._cuts[0][0] <= time.monotonic())

    def apply(self) -> None:
        """Apply the owner's requests, then make the cuts that are due."""
        muted, known = self.muted, self.known
        while self._requests:
            routing_id, mute = self._requests.popleft()
            if not mute:
                if routing_id not in muted:  # a muted peer's descriptor is kept for its cut
                    known.pop(routing_id, None)
            elif routing_id not in muted:
                muted[routing_id] = None
                if len(muted) > MAX_MUTED:
                    del muted[next(iter(muted))]
                self._cuts.append((time.monotonic() + CUT_GRACE, routing_id))
        now = time.monotonic()
        while self._cuts and self._cuts[0][0] <= now:
            self._cut(self._cuts.popleft()[1])

    def _cut(self, routing_id: bytes) -> None:
        fd, expected = self.known.pop(routing_id, (-1, None))
        if fd < 0 or expected is None or _peer_identity(fd) != expected:
            return
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as conn:
            conn.shutdown(socket.SHUT_RDWR)
            self.counters["peers_cut"] += 1


def _peer_identity(fd: int) -> object:
    """Who is at the other end of connection ``fd``: (address, port) for TCP, the peer's
    (pid, uid, gid) for ipc; None if it cannot be told."""
    try:
        with socket.socket(fileno=os.dup(fd)) as conn:
            if conn.family == socket.AF_UNIX:
                return conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            return conn.getpeername()
    except OSError:
        return None
