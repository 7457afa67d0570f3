"""TaskExecutionManager on its own: a real actor, a fake route and a recording sender.

No processes or sockets: the test plays the instance (it reads the frames the manager sends
and answers with ``ExecuteResponses``) and the instance actor (``InstanceRoute``), so the
queue bound, correlation and loss rules can be driven exactly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, wait
from typing import Any, cast

import pykka
import pytest
from helpers import wait_until

import spear_actors
from spear_actors import ExecutionError, InstanceFailed, InstanceState, NoInstanceAvailable
from spear_actors.actors.dataplane import RequestTable
from spear_actors.actors.intake import SubmissionQueue
from spear_actors.actors.tasks import TaskExecutionManager
from spear_actors.messages import (
    CheckDeadlines,
    ExecuteResponses,
    GetTaskStats,
    InstanceRoute,
    Submission,
    Undeliverable,
)
from spear_actors.protocol.codec import decode, decode_payload
from spear_actors.protocol.types import ExecuteRequest, MessageType

ROUTE = b"route-1"
OTHER_ROUTE = b"route-2"
MAX_QUEUE = 5


class Sink(pykka.ThreadingActor):
    """Stands in for the MonitorActor: takes every message, answers none."""

    def on_receive(self, message: Any) -> None:
        return None


class Wire:
    """The sender the manager writes frames to (called in the manager's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.frames: list[tuple[bytes, bytes]] = []

    def __call__(self, frames: list[tuple[bytes, bytes, int]]) -> None:
        with self._lock:
            self.frames.extend((routing_id, body) for routing_id, body, _ in frames)

    def requests(self) -> list[tuple[bytes, int, bytes]]:
        """(routing id, request id, data) of every EXECUTE_REQUEST sent so far."""
        with self._lock:
            frames = list(self.frames)
        out = []
        for routing_id, body in frames:
            message = decode(body)
            assert message.message_type is MessageType.EXECUTE_REQUEST
            payload = decode_payload(message)
            assert isinstance(payload, ExecuteRequest)
            out.append((routing_id, message.request_id, payload.data))
        return out


class Harness:
    def __init__(self) -> None:
        self.intake = SubmissionQueue()
        self.wire = Wire()
        self.monitor = Sink.start()
        self.table = RequestTable()
        self.manager = TaskExecutionManager.start(self.intake, self.monitor, self.table,
                                                  self.wire, max_queue=MAX_QUEUE)

    def submit(self, data: bytes, target: str = "task", timeout: float | None = 30.0,
               retries: int = 0) -> Future[bytes]:
        future: Future[bytes] = Future()
        future.set_running_or_notify_cancel()
        self.intake.put(Submission(target, "m", data, timeout, retries, future,
                                   time.monotonic()))
        return future

    def route(self, routing_id: bytes | None, state: InstanceState = InstanceState.READY,
              window: int = 1, instance_id: str = "task-1") -> None:
        self.manager.tell(InstanceRoute(instance_id, "task", routing_id, window, state))

    def answer(self, request_id: int, data: bytes = b"", ok: bool = True,
               error: str | None = None, routing_id: bytes = ROUTE,
               instance_id: str = "task-1") -> None:
        self.manager.tell(ExecuteResponses(
            [(instance_id, routing_id, request_id, ok, data, error, None)], time.monotonic()))

    def bounce(self, request_id: int, reason: str = "unreachable",
               routing_id: bytes = ROUTE) -> None:
        """The pump could not send the request (what the ConnectionActor reports)."""
        self.manager.tell(Undeliverable(routing_id, request_id, reason))

    def stats(self) -> dict[str, Any]:
        """The manager's stats; being an ``ask``, it also waits for every earlier message."""
        return cast("dict[str, Any]", self.manager.ask(GetTaskStats(), timeout=5))

    def sent(self, count: int) -> list[tuple[bytes, int, bytes]]:
        """Wait until at least ``count`` requests were sent; all of them."""
        wait_until(lambda: len(self.wire.requests()) >= count, timeout=5,
                   message=f"{count} requests on the wire")
        return self.wire.requests()

    def stop(self) -> None:
        for ref in (self.manager, self.monitor):
            ref.stop(timeout=5)


@pytest.fixture
def h(no_leftovers: None) -> Iterator[Harness]:
    harness = Harness()
    try:
        yield harness
    finally:
        harness.stop()


def error_of(future: Future[bytes]) -> BaseException | None:
    assert future.done()
    return future.exception(0)


def test_queue_beyond_max_queue_fails_at_once(h: Harness) -> None:
    h.route(ROUTE)  # one instance, window 1: one request in flight, the rest queue
    futures = [h.submit(b"%d" % i) for i in range(10)]
    stats = h.stats()
    assert stats["pending"] == 1 and stats["queued"] == MAX_QUEUE
    assert stats["queue_full"] == 10 - 1 - MAX_QUEUE
    for future in futures[1 + MAX_QUEUE:]:
        error = error_of(future)
        assert isinstance(error, NoInstanceAvailable) and "full" in str(error)
    assert not any(f.done() for f in futures[:1 + MAX_QUEUE])

    # answering frees the slot: the queue drains in order, one at a time
    for i in range(1 + MAX_QUEUE):
        routing_id, request_id, data = h.sent(i + 1)[i]
        assert routing_id == ROUTE and data == b"%d" % i
        h.answer(request_id, b"answer %d" % i)
        assert futures[i].result(timeout=5) == b"answer %d" % i
    stats = h.stats()
    assert stats["pending"] == 0 and stats["queued"] == 0
    assert len(h.wire.requests()) == 1 + MAX_QUEUE


def test_foreign_late_and_error_replies(h: Harness) -> None:
    h.route(ROUTE)
    future = h.submit(b"x")
    (_, request_id, _), = h.sent(1)

    h.answer(request_id, b"forged", routing_id=OTHER_ROUTE, instance_id="task-2")
    h.answer(request_id + 1000, b"nobody asked")
    stats = h.stats()
    assert stats["foreign_replies_dropped"] == 1 and stats["late_replies_dropped"] == 1
    assert not future.done(), "a reply from the wrong connection resolved the request"

    h.answer(request_id, ok=False, error="ValueError: no good")
    wait([future], timeout=5)
    error = error_of(future)
    assert isinstance(error, ExecutionError) and "ValueError: no good" in str(error)

    h.answer(request_id, b"again")  # a second answer to a finished request
    assert h.stats()["late_replies_dropped"] == 2


def test_lost_connection_fails_in_flight_and_keeps_the_queue(h: Harness) -> None:
    h.route(ROUTE)
    first, second = h.submit(b"1"), h.submit(b"2")
    assert h.stats()["pending"] == 1
    h.route(None, InstanceState.RESTARTING)
    wait([first], timeout=5)
    assert isinstance(error_of(first), InstanceFailed)
    assert not second.done(), "a queued request should wait for the instance to come back"
    assert h.stats()["queued"] == 1

    h.route(OTHER_ROUTE)  # back, on a new connection
    routing_id, request_id, data = h.sent(2)[1]
    assert (routing_id, data) == (OTHER_ROUTE, b"2")
    h.answer(request_id, b"two", routing_id=OTHER_ROUTE)
    assert second.result(timeout=5) == b"two"


def test_retry_goes_to_a_live_instance_not_back_to_the_dead_one(h: Harness) -> None:
    h.route(ROUTE, window=4)
    h.route(OTHER_ROUTE, window=4, instance_id="task-2")
    futures = [h.submit(b"%d" % i, retries=1) for i in range(4)]
    on_dead = [(rid, data) for route, rid, data in h.sent(4) if route == ROUTE]
    assert on_dead, "least-outstanding routing should use both instances"

    # the dead peer's frames bounce, then its instance actor reports the loss
    rid, _ = on_dead[0]
    h.bounce(rid, "unreachable")
    h.route(None, InstanceState.RESTARTING)
    h.stats()
    resent = h.wire.requests()[4:]
    assert len(resent) == len(on_dead)
    assert all(route == OTHER_ROUTE for route, _, _ in resent), resent
    for route, rid, data in h.wire.requests():
        if route == OTHER_ROUTE:
            h.answer(rid, data, routing_id=OTHER_ROUTE, instance_id="task-2")
    assert [f.result(timeout=5) for f in futures] == [b"%d" % i for i in range(4)]


def test_stopped_instance_fails_its_queue_and_unknown_targets(h: Harness) -> None:
    h.route(ROUTE)
    in_flight, queued = h.submit(b"1"), h.submit(b"2")
    h.route(None, InstanceState.STOPPED)
    h.stats()
    assert isinstance(error_of(in_flight), InstanceFailed)
    assert isinstance(error_of(queued), NoInstanceAvailable)
    late = h.submit(b"3")
    h.stats()
    assert isinstance(error_of(late), NoInstanceAvailable)


def test_deadlines_expire_in_flight_and_queued_requests(h: Harness) -> None:
    h.route(ROUTE)
    in_flight, queued = h.submit(b"1", timeout=0.05), h.submit(b"2", timeout=0.05)
    time.sleep(0.1)  # let both deadlines pass; the manager only looks when told to
    h.manager.tell(CheckDeadlines())
    h.stats()
    assert isinstance(error_of(in_flight), spear_actors.TimeoutError)
    assert isinstance(error_of(queued), spear_actors.TimeoutError)
    assert h.stats()["timeouts"] == 2
    (_, request_id, _), = h.wire.requests()
    h.answer(request_id, b"too late")
    assert h.stats()["late_replies_dropped"] == 1


def test_shutdown_fails_everything_outstanding(h: Harness) -> None:
    h.route(ROUTE)
    futures = [h.submit(b"%d" % i) for i in range(3)]
    h.stats()
    h.manager.stop(timeout=5)
    assert isinstance(error_of(futures[0]), InstanceFailed)
    assert all(isinstance(error_of(f), NoInstanceAvailable) for f in futures[1:])
    after = h.submit(b"late")
    assert isinstance(error_of(after), NoInstanceAvailable)


def test_an_instance_cannot_pass_its_error_off_as_a_send_failure(h: Harness) -> None:
    """Only the pump reports undeliverable requests: an instance answering ok=false with the
    same words gets an ExecutionError, no retry and no rerouting."""
    h.route(ROUTE, window=4)
    h.route(OTHER_ROUTE, window=4, instance_id="task-2")
    future = h.submit(b"x", target="task-1", retries=1)
    [(_, rid, _)] = h.sent(1)
    h.answer(rid, ok=False, error="could not send the request: unreachable")
    error = future.exception(timeout=5)
    assert isinstance(error, ExecutionError), error
    assert len(h.wire.requests()) == 1, "the request was re-sent"
    assert h.stats()["instances"]["task-1"]["connected"], "task-1 was taken out of rotation"
