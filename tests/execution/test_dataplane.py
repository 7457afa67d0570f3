"""RequestTable: ownership by claim, and no lost wake-up between the pump and the manager.

The first version set the manager's "wake me" flag only *after* it had handled a message: a
completion the pump thread took while the manager was enqueueing requests sent no wake-up,
and the queued requests waited for the next deadline tick (50 ms), or forever without one.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest
from helpers import wait_until

from spear_actors import InstanceState
from spear_actors.actors.dataplane import Request, RequestTable, ResponseFastPath
from spear_actors.actors.tasks import TaskExecutionManager
from spear_actors.messages import Submission
from spear_actors.protocol.codec import pack_execute_response
from spear_actors.transport.router import Inbound

from .test_manager import ROUTE, Harness

WAIT = 5.0


def request(request_id: int, routing_id: bytes | None = ROUTE) -> Request:
    future: Future[bytes] = Future()
    sub = Submission("task", "m", b"", 5.0, 0, future, time.monotonic())
    return Request(sub, None, 0, request_id, "task-1", routing_id, time.monotonic())


def answer_frame(request_id: int, data: bytes = b"ok", routing_id: bytes = ROUTE) -> Inbound:
    body = pack_execute_response(request_id, True, data, None, time.time())
    return Inbound(routing_id, body, time.monotonic(), None)


def test_a_request_is_claimed_once() -> None:
    table = RequestTable()
    r = request(1)
    table.register(r)
    assert table.claim(1, r) and not table.claim(1, r)
    assert table.get(1) is None and len(table) == 0


def test_the_fast_path_takes_only_answers_from_the_peer_it_was_sent_to() -> None:
    table = RequestTable()
    r = request(7)
    table.register(r)
    fast = ResponseFastPath(table, 1 << 20)
    assert fast([answer_frame(7, routing_id=b"someone else")]) != []
    assert not r.submission.future.done()
    assert fast([answer_frame(7)]) == []
    assert r.submission.future.result(0) == b"ok"
    assert [c[0] for c in table.take_completions()] == [7]


def test_a_completion_while_the_manager_enqueues_is_not_lost() -> None:
    """The interleaving that lost the wake-up, step by step: the manager was idle with
    nothing queued, starts a message that queues a request; the pump completes meanwhile."""
    table = RequestTable()
    woken: list[int] = []
    table.waker = lambda: woken.append(1)
    r = request(1)
    table.register(r)
    assert table.settle(queued=False) is False  # idle, nothing queued: no wake wanted
    table.begin()  # a message arrives; while handling it the manager queues a request...
    ResponseFastPath(table, 1 << 20)([answer_frame(1)])  # ...and the pump completes one
    assert not woken  # nobody wanted waking when the pump looked
    assert table.settle(queued=True) is True  # so the manager must see it itself
    assert len(table.take_completions()) == 1


def test_a_completion_after_the_manager_settled_wakes_it_once() -> None:
    table = RequestTable()
    woken: list[int] = []
    table.waker = lambda: woken.append(1)
    assert table.settle(queued=True) is False
    for i in (1, 2, 3):
        r = request(i)
        table.register(r)
        ResponseFastPath(table, 1 << 20)([answer_frame(i)])
    assert woken == [1]  # coalesced until the manager starts its next message
    table.begin()
    r = request(4)
    table.register(r)
    ResponseFastPath(table, 1 << 20)([answer_frame(4)])
    assert woken == [1, 1]


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Hold the manager inside the admission of a request whose data is b"held", after it was
    queued: the moment the old flag protocol lost a wake-up."""
    gate, entered = threading.Event(), threading.Event()
    original = TaskExecutionManager._admit

    def admit(self: TaskExecutionManager, item: Any, now: float) -> None:
        original(self, item, now)
        if item.data == b"held":
            entered.set()
            gate.wait(WAIT)

    monkeypatch.setattr(TaskExecutionManager, "_admit", admit)
    return gate, entered


def test_the_manager_sends_a_queued_request_when_a_slot_frees_during_a_message(
        no_leftovers: None, gated: tuple[threading.Event, threading.Event]) -> None:
    """A real manager with no deadline ticks (the harness starts none): the queued request
    goes out only if the completion wakes the manager."""
    gate, entered = gated
    h = Harness()
    try:
        h.route(ROUTE, InstanceState.READY, window=1)
        first = h.submit(b"first")
        [(_, first_id, _)] = h.sent(1)
        queued = h.submit(b"held")  # no free slot: queued, then the manager is held
        assert entered.wait(WAIT)
        fast = ResponseFastPath(h.table, 1 << 20)
        assert fast([answer_frame(first_id, b"one")]) == []  # the pump takes the answer
        gate.set()
        assert first.result(WAIT) == b"one"
        wait_until(lambda: len(h.wire.requests()) == 2, WAIT,
                   message="the queued request to be sent once the slot freed")
        [_, (_, held_id, data)] = h.wire.requests()
        assert data == b"held"
        h.answer(held_id, b"two")
        assert queued.result(WAIT) == b"two"
    finally:
        gate.set()
        h.stop()
