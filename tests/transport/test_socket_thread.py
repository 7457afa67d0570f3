"""SocketThread (the driver the router pump and the control endpoint run on) and
ControlSockets (the control endpoint's sockets), with real sockets and threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import zmq
from helpers import wait_until

from spear_actors.errors import TransportError
from spear_actors.transport.control import ControlRequest, ControlSockets
from spear_actors.transport.control_client import NoReply, RequestChannel
from spear_actors.transport.socket_thread import Context, SocketThread

WAIT = 5.0


class Pair(SocketThread):
    """A PAIR socket bound on ``endpoint``: echoes what it receives, and also sends what other
    threads queue with :meth:`post` (the wake pipe's job)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__("test-pair")
        self.endpoint = endpoint
        self.sock: zmq.Socket[bytes] | None = None
        self.posted: list[bytes] = []
        self.closed = threading.Event()
        self.wakes = 0

    def post(self, body: bytes) -> None:
        self.posted.append(body)
        self.wake()

    def _open(self, ctx: Context) -> None:
        self.sock = ctx.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.endpoint)
        self._poller.register(self.sock, zmq.POLLIN)

    def _ready(self, events: dict[zmq.Socket[bytes] | int, int], woken: bool) -> None:
        assert self.sock is not None
        if woken:
            self.wakes += 1
        while self.posted:
            self.sock.send(self.posted.pop(0))
        if self.sock in events:
            body = self.sock.recv()
            if body == b"crash":
                raise RuntimeError("a bug in the hook")
            self.sock.send(body)

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
        self.closed.set()


@pytest.fixture
def served_pair() -> Iterator[tuple[Pair, zmq.Socket[bytes]]]:
    """A started Pair and a PAIR peer connected to it; both closed at teardown."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(WAIT * 1000))
    port = _free_port()
    pair = Pair(f"tcp://127.0.0.1:{port}")
    pair.start_thread(WAIT)
    try:
        sock.connect(f"tcp://127.0.0.1:{port}")
        yield pair, sock
    finally:
        pair.stop(WAIT)
        sock.close(0)
        ctx.term()
    assert not _threads_named("test-pair")


def _threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_driver_serves_wakes_and_stops_cleanly(
        served_pair: tuple[Pair, zmq.Socket[bytes]]) -> None:
    pair, sock = served_pair
    assert pair.running and _threads_named("test-pair")
    sock.send(b"hello")
    assert sock.recv() == b"hello"
    pair.post(b"from another thread")  # only the wake pipe gets the thread to send it
    assert sock.recv() == b"from another thread"
    assert pair.wakes >= 1
    pair.stop(WAIT)
    pair.stop(WAIT)  # idempotent
    assert pair.closed.is_set() and not pair.running
    assert not _threads_named("test-pair")
    with pytest.raises(TransportError, match="already started"):
        pair.start_thread(WAIT)


def test_driver_returns_the_open_error_to_start() -> None:
    holder: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    taken = holder.socket(zmq.PAIR)
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    pair = Pair(f"tcp://127.0.0.1:{port}")
    try:
        with pytest.raises(zmq.ZMQError):
            pair.start_thread(WAIT)
        assert not pair.running and not pair.closed.is_set()  # never opened, never closed
        wait_until(lambda: not _threads_named("test-pair"), WAIT)
    finally:
        pair.stop(WAIT)
        taken.close(0)
        holder.term()


def test_a_failing_hook_ends_the_thread_and_still_closes_its_sockets(
        served_pair: tuple[Pair, zmq.Socket[bytes]]) -> None:
    pair, sock = served_pair
    sock.send(b"crash")
    assert pair.closed.wait(WAIT)
    wait_until(lambda: not _threads_named("test-pair"), WAIT)
    assert not pair.running


def _free_port() -> int:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    try:
        return sock.bind_to_random_port("tcp://127.0.0.1")
    finally:
        sock.close(0)
        ctx.term()


# -- ControlSockets -------------------------------------------------------------------------------
class Handler:
    """Answers "now:X" at once, queues anything else for :meth:`answer_later`, and raises on
    "bug" (a handler bug must not stop the endpoint)."""

    def __init__(self) -> None:
        self.later: list[ControlRequest] = []
        self.seen: list[ControlRequest] = []

    def __call__(self, request: ControlRequest) -> bytes | None:
        self.seen.append(request)
        if request.body == b"bug":
            raise ValueError("handler bug")
        if request.body.startswith(b"now:"):
            return request.body[4:]
        self.later.append(request)
        return None


@pytest.fixture
def control() -> Iterator[tuple[ControlSockets, Handler]]:
    handler = Handler()
    sockets = ControlSockets(handler, "tcp://127.0.0.1:*", max_request=1024)
    sockets.start(WAIT)
    try:
        yield sockets, handler
    finally:
        sockets.stop(WAIT)
    assert not _threads_named("spear-control")


def test_control_sockets_answer_now_and_later(control: tuple[ControlSockets, Handler]) -> None:
    sockets, handler = control
    assert sockets.endpoint.startswith("tcp://127.0.0.1:") and sockets.remote_endpoint == ""
    channel = RequestChannel(sockets.endpoint)
    try:
        assert channel.request(b"now:quick", WAIT) == b"quick"
        replies: list[bytes] = []
        asker = threading.Thread(target=lambda: replies.append(channel.request(b"slow", WAIT)))
        asker.start()
        wait_until(lambda: handler.later, WAIT)
        (request,) = handler.later
        assert request.curve is False and request.body == b"slow"
        threading.Thread(target=sockets.reply, args=(request, b"done")).start()  # a worker
        asker.join(WAIT)
        assert replies == [b"done"]
    finally:
        channel.close()


def test_control_sockets_survive_junk_and_handler_bugs(
        control: tuple[ControlSockets, Handler]) -> None:
    sockets, handler = control
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    channel = RequestChannel(sockets.endpoint)
    try:
        dealer.connect(sockets.endpoint)
        dealer.send_multipart([b"a", b"b", b"c", b"d"])  # no REQ or DEALER request shape
        dealer.send(b"x" * 4096)  # over max_request: libzmq drops the connection
        wait_until(lambda: sockets.dropped >= 1, WAIT)
        with pytest.raises(NoReply):
            channel.request(b"bug", 0.5)  # logged and dropped, never answered
        assert sockets.dropped >= 2 and sockets.running
        assert channel.request(b"now:still serving", WAIT) == b"still serving"  # fresh socket
        assert [r.body for r in handler.seen].count(b"bug") == 1
        assert all(len(r.body) <= 1024 for r in handler.seen)  # the oversize one never came
    finally:
        channel.close()
        dealer.close(0)
        ctx.term()


def test_control_sockets_name_an_endpoint_they_cannot_bind() -> None:
    holder: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    taken = holder.socket(zmq.ROUTER)
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    sockets = ControlSockets(Handler(), f"tcp://127.0.0.1:{port}", max_request=1024)
    try:
        with pytest.raises(TransportError, match="cannot bind the control endpoint"):
            sockets.start(WAIT)
    finally:
        sockets.stop(WAIT)
        taken.close(0)
        holder.term()
    wait_until(lambda: not _threads_named("spear-control"), WAIT)
