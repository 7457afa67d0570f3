"""PlainGate: ZeroMQ's own gate for the spearlet's listener (DESIGN.md section 11).

With ``ConnectionConfig(gate="plain")`` every listening ROUTER is a ZMTP PLAIN server in ZAP
domain ``spear``: libzmq asks the ZAP handler about every connection during its handshake,
before the peer can send a single message, and closes the connection if the answer is no.
This handler lives in the router pump's thread (its REP socket is polled with the ROUTER in
the same loop and the same context, as ZAP requires), so a peer without the id and secret
of an instance the spearlet expects costs one short handshake, never a frame read by Python.

Credentials (instance id -> secret) are written by the ConnectionActor's thread
(:meth:`allow`, :meth:`forget`) and read by the pump thread; single dict operations, atomic
under the GIL. Secrets are compared in constant time and never logged or counted by name.
"""

from __future__ import annotations

import hmac

import zmq

__all__ = ["ZAP_DOMAIN", "ZAP_ENDPOINT", "PlainGate"]

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"spear"
_UNKNOWN = b"\0" * 43  # compared against for unknown ids too: no timing oracle


class PlainGate:
    """The ZAP handler and the credentials it checks; see the module docstring."""

    def __init__(self) -> None:
        self._secrets: dict[bytes, bytes] = {}
        self._sock: zmq.Socket[bytes] | None = None

    # -- any thread ------------------------------------------------------------------------------
    def allow(self, instance_id: str, secret: str) -> None:
        self._secrets[instance_id.encode()] = secret.encode()

    def forget(self, instance_id: str) -> None:
        self._secrets.pop(instance_id.encode(), None)

    # -- pump thread -----------------------------------------------------------------------------
    def bind(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
        """The ZAP socket, bound in the pump's context before any listener is."""
        sock = ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(ZAP_ENDPOINT)
        self._sock = sock
        return sock

    @property
    def socket(self) -> zmq.Socket[bytes] | None:
        return self._sock

    @staticmethod
    def secure(listener: zmq.Socket[bytes]) -> None:
        """Make ``listener`` a PLAIN server that asks this gate (before it binds)."""
        listener.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        listener.setsockopt(zmq.PLAIN_SERVER, 1)

    def answer(self) -> tuple[int, int]:
        """Answer every waiting ZAP request (RFC 27); returns (accepted, denied)."""
        sock = self._sock
        assert sock is not None
        accepted = denied = 0
        while True:
            try:
                request = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return accepted, denied
            ok = self._judge(request)
            if ok:
                accepted += 1
            else:
                denied += 1
            request_id = request[1] if len(request) > 1 else b""
            user = request[6] if ok else b""
            sock.send_multipart([b"1.0", request_id, b"200" if ok else b"400",
                                 b"OK" if ok else b"denied", user, b""])

    def _judge(self, request: list[bytes]) -> bool:
        # version, request id, domain, address, routing id, mechanism, username, password
        if len(request) != 8 or request[0] != b"1.0" or request[5] != b"PLAIN":
            return False
        expected = self._secrets.get(request[6])
        same = hmac.compare_digest(request[7], expected if expected is not None else _UNKNOWN)
        return expected is not None and same

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
