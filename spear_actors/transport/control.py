"""ControlSockets: the control endpoint's socket thread ("spear-control"), a
:class:`~.socket_thread.SocketThread` like the router pump.

It binds a ROUTER on ``bind_endpoint`` (loopback: every request carries a token, which the
owner checks) and, given ``curve`` keys, a second ROUTER beyond loopback that is a CURVE
server: pyzmq's ZAP authenticator (``zmq.auth``'s ``ThreadAuthenticator``, in this thread's
context) admits a client during the handshake only if its public key is authorised, so no
byte of an unauthorised client ever reaches Python.

Each request (one body frame from a REQ or DEALER peer) goes to ``on_request`` in the socket
thread, which must not block: it returns the reply body at once, or None and later calls
:meth:`ControlSockets.reply` from any thread (a deque plus the wake pipe). Frames that are not
requests are dropped; nothing a client sends can stop the thread.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import zmq

from .._log import log_exception, logger
from ..errors import TransportError
from .socket_thread import Context, SocketThread

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

__all__ = ["ControlRequest", "ControlSockets", "CurveKeys", "KeyAllowList"]

MAX_DRAIN = 256
"""Requests read per socket per wake-up before replies are flushed again."""


class CurveKeys(Protocol):
    """Where the CURVE endpoint binds, the server's key pair and the client public keys
    (Z85) allowed in (``control.curve.RemoteAccess`` is one)."""

    @property
    def endpoint(self) -> str: ...
    @property
    def public_key(self) -> bytes: ...
    @property
    def secret_key(self) -> bytes: ...
    @property
    def authorized(self) -> frozenset[bytes]: ...


class KeyAllowList:
    """The ZAP policy: is this client public key (Z85) authorised? A pure decision; pyzmq's
    authenticator asks it and answers the handshake."""

    def __init__(self, authorized: frozenset[bytes]) -> None:
        self.authorized = authorized

    def callback(self, domain: str, key: bytes) -> bool:
        """``key`` is the client's public key, already Z85-encoded by pyzmq."""
        return bytes(key) in self.authorized


@dataclass(frozen=True)
class ControlRequest:
    """One request as it arrived: ``curve`` is True on the CURVE endpoint (the client's key
    was authorised by the handshake), False on the loopback one (check the token)."""

    curve: bool
    envelope: tuple[bytes, ...]
    body: bytes


OnRequest = Callable[[ControlRequest], bytes | None]


class ControlSockets(SocketThread):
    """The control endpoint's sockets, in one thread; see the module docstring.

    ``endpoint`` and ``remote_endpoint`` are set once :meth:`start` returns.
    """

    def __init__(self, on_request: OnRequest, bind_endpoint: str, *, max_request: int,
                 curve: CurveKeys | None = None, name: str = "spear-control") -> None:
        super().__init__(name)
        self._on_request = on_request
        self._bind_endpoint = bind_endpoint
        self._max_request = max_request
        self._curve = curve
        self.endpoint = ""
        self.remote_endpoint = ""
        self._sockets: list[zmq.Socket[bytes]] = []  # [loopback, curve?]; the thread's
        self._authenticator: ThreadAuthenticator | None = None
        self._replies: deque[tuple[bool, tuple[bytes, ...], bytes]] = deque()
        self.dropped = 0
        """Frames that were not a request (a ROUTER, PUB, ... peer), dropped unanswered."""

    def start(self, timeout: float = 10.0) -> None:
        """Bind and start serving (TransportError naming the endpoint if binding fails)."""
        try:
            self.start_thread(timeout)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot bind the control endpoint: {exc}") from None

    def reply(self, request: ControlRequest, body: bytes) -> None:
        """Answer ``request`` (any thread; dropped if the client has gone or the endpoint
        has stopped)."""
        if self._stopping:
            return
        self._replies.append((request.curve, request.envelope, body))
        self._wakeup.wake()

    # -- socket thread -----------------------------------------------------------------------
    def _open(self, ctx: Context) -> None:
        self._sockets.append(self._router(ctx))
        self._sockets[0].bind(self._bind_endpoint)
        self.endpoint = self._sockets[0].getsockopt_string(zmq.LAST_ENDPOINT)
        if self._curve is not None:
            from zmq.auth.thread import ThreadAuthenticator

            self._authenticator = ThreadAuthenticator(ctx)
            self._authenticator.start()
            self._authenticator.configure_curve_callback(
                "*", credentials_provider=KeyAllowList(self._curve.authorized))
            curve = self._router(ctx)
            self._sockets.append(curve)
            curve.curve_secretkey = self._curve.secret_key
            curve.curve_publickey = self._curve.public_key
            curve.curve_server = True
            try:
                curve.bind(self._curve.endpoint)
            except zmq.ZMQError:
                self._stop_authenticator()
                raise
            self.remote_endpoint = curve.getsockopt_string(zmq.LAST_ENDPOINT)
        for sock in self._sockets:
            self._poller.register(sock, zmq.POLLIN)

    def _router(self, ctx: Context) -> zmq.Socket[bytes]:
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_request)
        return sock

    def _ready(self, events: dict[zmq.Socket[bytes] | int, int], woken: bool) -> None:
        for index, sock in enumerate(self._sockets):
            if sock in events:
                self._drain(sock, curve=index == 1)
        replies = self._replies
        while replies:
            curve, envelope, body = replies.popleft()
            self._send(self._sockets[1 if curve else 0], envelope, body)

    def _drain(self, sock: zmq.Socket[bytes], curve: bool) -> None:
        for _ in range(MAX_DRAIN):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not 2 <= len(frames) <= 3:
                self.dropped += 1  # not a REQ or DEALER peer: nothing sensible to answer
                continue
            request = ControlRequest(curve, tuple(frames[:-1]), frames[-1])
            try:
                body = self._on_request(request)
            except Exception:
                self.dropped += 1
                log_exception(logger, "{}: a request could not be handled", self.thread_name)
                continue
            if body is not None:
                self._send(sock, request.envelope, body)

    @staticmethod
    def _send(sock: zmq.Socket[bytes], envelope: tuple[bytes, ...], body: bytes) -> None:
        with contextlib.suppress(zmq.ZMQError):  # the client has gone
            sock.send_multipart([*envelope, body], zmq.NOBLOCK)

    def _stop_authenticator(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()  # joins its thread: its socket closes there
            self._authenticator = None

    def _close(self) -> None:
        for sock in self._sockets:
            sock.close(0)
        self._sockets.clear()
        self._stop_authenticator()
