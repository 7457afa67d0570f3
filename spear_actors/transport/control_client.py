"""RequestChannel: the client end of the control endpoint (a REQ socket), used by
:func:`spear_actors.control.attach`. Imports no pykka or loguru.

One request at a time (a lock serialises callers). Every request has a timeout; a REQ socket
that missed its reply is stuck in its send/receive cycle, so on timeout it is thrown away
and the next request opens a fresh one.
"""

from __future__ import annotations

import threading

import zmq

from ..errors import TransportError

__all__ = ["NoReply", "RequestChannel"]


class NoReply(Exception):
    """No answer within the timeout (the server is busy, gone, or refused our CURVE key)."""


class RequestChannel:
    """A REQ socket to ``endpoint``; ``curve`` = (server public, client public, client
    secret) keys for a CURVE endpoint. Close it to release the socket and context."""

    def __init__(self, endpoint: str,
                 curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.endpoint = endpoint
        self._curve = curve
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None
        self._lock = threading.Lock()

    def request(self, body: bytes, timeout: float) -> bytes:
        """Send ``body``, return the reply; NoReply after ``timeout`` seconds, TransportError
        if the socket fails."""
        millis = max(1, int(timeout * 1000))
        with self._lock:
            if self._context.closed:
                raise TransportError("the control channel is closed")
            if self._sock is None:
                sock = self._context.socket(zmq.REQ)
                sock.setsockopt(zmq.LINGER, 0)
                if self._curve is not None:
                    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = \
                        self._curve
                sock.connect(self.endpoint)
                self._sock = sock
            self._sock.setsockopt(zmq.SNDTIMEO, millis)
            self._sock.setsockopt(zmq.RCVTIMEO, millis)
            try:
                self._sock.send(body)
                return self._sock.recv()
            except zmq.Again:
                self._drop_socket()
                raise NoReply from None
            except zmq.ZMQError as exc:
                self._drop_socket()
                raise TransportError(str(exc)) from exc

    def close(self) -> None:
        """Idempotent."""
        with self._lock:
            self._drop_socket()
            if not self._context.closed:
                self._context.term()

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
