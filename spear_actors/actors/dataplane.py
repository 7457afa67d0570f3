"""The data plane's shared state: who owns an execute request right now.

:class:`RequestTable` is the one object two threads share on the hot path: the
TaskExecutionManager's thread (which admits, sends, expires and fails requests) and the router
pump thread (whose :class:`ResponseFastPath` resolves answers without two actor hops). The
RuntimeActor creates it and hands it to every TaskExecutionManager it starts, so it outlives a
manager restart: the root then sweeps what the dead manager left (DESIGN.md section 7).

Thread contract (CPython's GIL makes each single dict/deque/attribute operation atomic; no
lock is taken on the hot path):

* **register** (:meth:`RequestTable.register`): manager thread only, once per send or
  admission, before the request can be answered.
* **claim** (:meth:`RequestTable.claim`): any thread. It pops the entry; whoever pops it owns
  the request's outcome, so every request ends exactly once (answer, error, retry or failure).
  A claimed request that is re-sent is registered again under a new request id.
* **completions**: the pump thread appends a :data:`Completion` (request id, instance id,
  round trip, size, the handler's reported time, queue wait) for every answer it took; the
  manager drains them (:meth:`RequestTable.take_completions`) to free the instance's slot and
  account the latency. The pump reads the request's ``sent_at`` and ``submission`` only after
  it popped (so owns) the request.
* **wake-up**: while the manager has requests queued for a free slot it must hear about
  completions at once. At the start of every message it calls :meth:`begin`; at the end
  :meth:`settle` (``queued``) publishes whether it wants waking and returns True if
  completions arrived meanwhile, which it must then take (and settle again). The pump, after
  appending completions, wakes the manager (one ``Completed`` tell) if it wants waking and no
  wake-up is pending. Because the manager publishes ``want_wake`` *before* it looks at the
  completions again, and the pump appends *before* it reads ``want_wake``, one of the two
  always sees the other: no wake-up is lost.
* **sweep** (:meth:`RequestTable.sweep`): the RuntimeActor, after a manager died; it claims
  every request left so that the root can retry or fail it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass

from ..errors import ExecutionError
from ..messages import Submission
from ..protocol.codec import peek_execute_response
from ..transport.router import Inbound

__all__ = ["Request", "RequestTable", "ResponseFastPath", "fail_future", "resolve_future"]

Completion = tuple[int, str, float, int, float | None, float]
"""(request id, instance id, round trip in seconds, response bytes, the handler's own time in
seconds or None (older peers), seconds from submit until sent)."""


def resolve_future(future: Future[bytes], data: bytes) -> None:
    try:
        future.set_result(data)
    except InvalidStateError:  # cancelled by the caller
        pass


def fail_future(future: Future[bytes], error: BaseException) -> None:
    try:
        future.set_exception(error)
    except InvalidStateError:
        pass


@dataclass(slots=True, eq=False)
class Request:
    """One admitted execute call. Mutated only by whoever owns it (see the module docstring):
    the manager while it is registered and unsent or after it claimed it back."""

    submission: Submission
    deadline: float | None  # monotonic
    retries_left: int
    request_id: int = 0
    instance_id: str | None = None
    routing_id: bytes | None = None
    """Where it was sent (None while queued): the only peer whose answer is taken."""
    sent_at: float = 0.0
    queued: bool = False
    expired: bool = False


class RequestTable:
    """Request id -> live :class:`Request`, plus the completions and the wake-up protocol."""

    def __init__(self) -> None:
        self._live: dict[int, Request] = {}
        self.completions: collections.deque[Completion] = collections.deque()
        self.want_wake = False
        """Manager: requests wait in its queues, wake it for every completion."""
        self.wake_sent = False
        """Pump: a ``Completed`` is on its way to the manager."""
        self.waker: Callable[[], None] | None = None
        """Tells the current manager ``Completed`` (set by each manager when it starts)."""

    def __len__(self) -> int:
        return len(self._live)

    # -- manager thread --------------------------------------------------------------------------
    def register(self, request: Request) -> None:
        self._live[request.request_id] = request

    def get(self, request_id: int) -> Request | None:
        return self._live.get(request_id)

    def begin(self) -> None:
        """Start of a manager message: a wake-up sent before now has arrived."""
        self.wake_sent = False

    def take_completions(self) -> list[Completion]:
        completions = self.completions
        taken = []
        while completions:
            taken.append(completions.popleft())
        return taken

    def settle(self, queued: bool) -> bool:
        """End of a manager message: publish whether it wants waking; True if completions
        arrived meanwhile (take them, then settle again)."""
        self.want_wake = queued
        return bool(queued and self.completions)

    # -- any thread ------------------------------------------------------------------------------
    def claim(self, request_id: int, request: Request) -> bool:
        """Pop ``request``; True if the caller now owns its outcome."""
        return self._live.get(request_id) is request and \
            self._live.pop(request_id, None) is request

    def sweep(self) -> list[Request]:
        """Claim every live request (the root, after the manager that owned them died)."""
        swept = []
        for request_id in list(self._live):
            request = self._live.pop(request_id, None)
            if request is not None:
                swept.append(request)
        return swept

    # -- pump thread ------------------------------------------------------------------------------
    def completed(self, done: list[Completion]) -> None:
        """Answers were taken: queue their accounting, wake the manager if it waits."""
        self.completions.extend(done)
        if self.want_wake and not self.wake_sent:
            self.wake_sent = True
            waker = self.waker
            if waker is not None:
                waker()


class ResponseFastPath:
    """Resolves execute responses in the router pump thread, skipping two actor hops.

    Only a response from the routing id the request was sent to is taken, and only by
    claiming it from the table; anything else goes on to the ConnectionActor untouched.
    Future callbacks therefore run in the pump thread: keep them short.
    """

    def __init__(self, table: RequestTable, max_message_size: int) -> None:
        self.table = table
        self._max = max_message_size

    def __call__(self, frames: list[Inbound]) -> list[Inbound]:
        live = self.table._live
        rest: list[Inbound] = []
        done: list[Completion] = []
        resolved: list[tuple[Request, bool, bytes, str | None]] = []
        now = time.monotonic()
        peek, limit = peek_execute_response, self._max
        for frame in frames:
            answer = peek(frame.body, limit)
            if answer is None:
                rest.append(frame)
                continue
            request_id = answer[0]
            request = live.get(request_id)
            if request is None or request.routing_id != frame.routing_id or \
                    live.pop(request_id, None) is not request:
                rest.append(frame)  # not ours to take: the ConnectionActor decides
                continue
            sent_at = request.sent_at
            done.append((request_id, request.instance_id or "", now - sent_at,
                         len(frame.body), answer[4], sent_at - request.submission.submitted_at))
            resolved.append((request, answer[1], answer[2], answer[3]))
        if done:
            # account first, resolve second: a caller woken by its answer that submits again
            # at once must find the slot already free
            self.table.completed(done)
            for request, ok, data, error in resolved:
                if ok:
                    resolve_future(request.submission.future, data)
                else:
                    fail_future(request.submission.future, ExecutionError(
                        error or "the handler failed", request.instance_id))
        return rest
