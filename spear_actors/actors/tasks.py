"""TaskExecutionManager: routes execute requests to instances and correlates the answers.

Runs in its own Pykka thread and owns all request state. Caller threads hand submissions
over through a :class:`SubmissionQueue` (a deque plus one coalesced wake-up ``tell``, so a
burst of submits costs one actor message); frames go straight to the router pump's outbound
queue, and answers come back from the ConnectionActor in one message per inbound batch.

Routing: among the task's connected instances, least outstanding requests first, never more
than an instance's window (``max_concurrency + prefetch``); otherwise a bounded queue per
target. Every request ends exactly once: its answer, ExecutionError, TimeoutError,
NoInstanceAvailable or
InstanceFailed (or a retry elsewhere when the call was marked idempotent with ``retries``).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import pykka

from .._log import logger
from ..errors import (
    ExecutionError,
    InstanceFailed,
    NoInstanceAvailable,
    TimeoutError,
)
from ..messages import (
    CheckDeadlines,
    Completed,
    CountMetric,
    DrainSubmissions,
    ExecuteResponses,
    InstanceRoute,
    RecordLatencies,
    RecordMessages,
    Submission,
    Undeliverable,
)
from ..protocol.codec import pack_execute_request, peek_execute_response
from ..records import InstanceState
from ..transport.router import Inbound
from .service import ServiceActor

__all__ = ["ResponseFastPath", "SubmissionQueue", "TaskExecutionManager"]

Sender = Callable[[list[tuple[bytes, bytes]]], None]
DEFAULT_MAX_QUEUE = 100_000
DEFAULT_MAX_WAIT = 30.0  # a queued request without its own timeout waits at most this long


class SubmissionQueue:
    """Hand-off from caller threads to the manager: thread-safe, one wake-up per burst."""

    def __init__(self) -> None:
        self._items: collections.deque[Submission] = collections.deque()
        self._woken = False
        self.actor: pykka.ActorRef[Any] | None = None

    def put(self, item: Submission) -> None:
        self._items.append(item)
        if not self._woken:
            self._woken = True
            actor = self.actor
            if actor is not None:
                try:
                    actor.tell(DrainSubmissions())
                except pykka.ActorDeadError:
                    self._fail_all("the system is shut down")

    def take_all(self) -> list[Submission]:
        self._woken = False  # reset before draining: a put racing us wakes us again
        items = []
        pop = self._items.popleft
        while self._items:
            items.append(pop())
        return items

    def _fail_all(self, why: str) -> None:
        for item in self.take_all():
            _fail(item.future, NoInstanceAvailable(why))


def _resolve(future: Future[bytes], data: bytes) -> None:
    try:
        future.set_result(data)
    except InvalidStateError:  # cancelled by the caller
        pass


def _fail(future: Future[bytes], error: BaseException) -> None:
    try:
        future.set_exception(error)
    except InvalidStateError:
        pass


@dataclass(slots=True, eq=False)
class _Request:
    submission: Submission
    deadline: float | None  # monotonic
    retries_left: int
    instance_id: str | None = None
    routing_id: bytes | None = None
    sent_at: float = 0.0
    request_id: int = 0
    queued: bool = False
    expired: bool = False


@dataclass(slots=True, eq=False)
class _Instance:
    instance_id: str
    task_id: str
    window: int
    routing_id: bytes | None = None
    state: InstanceState = InstanceState.CREATING
    in_flight: dict[int, _Request] = field(default_factory=dict)


class ResponseFastPath:
    """Resolves execute responses in the router pump thread, skipping two actor hops.

    The manager puts every sent request in ``table`` (request id -> request); whoever pops
    an entry first (this fast path, or the manager expiring or failing it) owns its outcome,
    and ``dict.pop`` is atomic, so each request ends exactly once. Only a response from the
    routing id the request was sent to is taken; anything else goes on to the ConnectionActor
    untouched. Completions wait in :attr:`completions` until the manager's next message; it
    is woken for them (``Completed``) only while it has requests queued for free slots.
    Future callbacks therefore run in the pump thread: keep them short.
    """

    def __init__(self, table: dict[int, Any], manager: pykka.ActorRef[Any],
                 max_message_size: int) -> None:
        self.table = table
        self._manager = manager
        self._max = max_message_size
        self.completions: collections.deque[tuple[int, str, float, int]] = \
            collections.deque()
        """(request id, instance id, latency, response bytes) for the manager to account."""
        self.wake_manager = False
        """Set by the manager while requests wait in its queues for a free slot."""

    def __call__(self, frames: list[Inbound]) -> list[Inbound]:
        table = self.table
        rest: list[Inbound] = []
        done: list[tuple[int, str, float, int]] = []
        resolved: list[tuple[_Request, tuple[int, bool, bytes, str | None]]] = []
        now = time.monotonic()
        peek, limit = peek_execute_response, self._max
        for frame in frames:
            answer = peek(frame.body, limit)
            request = table.get(answer[0]) if answer is not None else None
            if request is None or request.routing_id != frame.routing_id or \
                    table.pop(answer[0], None) is not request:  # type: ignore[index]
                rest.append(frame)  # not ours to take: the ConnectionActor decides
                continue
            assert answer is not None
            done.append((answer[0], request.instance_id or "", now - request.sent_at,
                         len(frame.body)))
            resolved.append((request, answer))
        if done:
            # account first, resolve second: a caller woken by its answer that submits again
            # at once must find the slot already free
            self.completions.extend(done)
            for request, (_, ok, data, error) in resolved:
                if ok:
                    _resolve(request.submission.future, data)
                else:
                    _fail(request.submission.future, ExecutionError(
                        error or "the handler failed", request.instance_id))
            if self.wake_manager:
                try:
                    self._manager.tell(Completed())
                except pykka.ActorDeadError:
                    pass
        return rest


class TaskExecutionManager(ServiceActor):
    """Owns routing tables, queues and outstanding requests; see the module docstring."""

    def __init__(self, intake: SubmissionQueue, monitor: pykka.ActorRef[Any], *,
                 max_queue: int = DEFAULT_MAX_QUEUE, max_wait: float = DEFAULT_MAX_WAIT
                 ) -> None:
        super().__init__()
        self._intake = intake
        self._monitor = monitor
        self._sender: Sender | None = None
        self.max_queue = max_queue
        self.max_wait = max_wait
        self._instances: dict[str, _Instance] = {}
        self._tasks: dict[str, list[_Instance]] = {}
        self._queues: dict[str, collections.deque[_Request]] = {}
        self._pending: dict[int, _Request] = {}
        """Shared with the ResponseFastPath (pump thread): pop it to own an outcome."""
        self._ids = itertools.count(1)
        self._deadlines: list[tuple[float, int, _Request]] = []  # heap; stale entries skipped
        self._seq = itertools.count()
        self._frames: list[tuple[bytes, bytes]] = []
        self._fast: ResponseFastPath | None = None
        self._latencies: list[float] = []  # reported to the monitor on the deadline tick
        self._out_count = self._out_bytes = self._in_count = self._in_bytes = 0
        self._closed = False
        self.counters: collections.Counter[str] = collections.Counter()
        self._log = logger.bind(actor="tasks")

    def on_start(self) -> None:
        self._intake.actor = self.actor_ref

    def fast_path(self, max_message_size: int) -> ResponseFastPath:
        """The pump-thread response resolver sharing this manager's table (call before
        the manager starts serving; the table object never changes)."""
        self._fast = ResponseFastPath(self._pending, self.actor_ref, max_message_size)
        return self._fast

    def on_stop(self) -> None:
        self._shutdown("the system is shutting down")

    def handle(self, message: Any) -> Any:
        fast = self._fast
        if fast is not None and fast.completions:
            self._completed(time.monotonic())
        try:
            return self._dispatch_message(message)
        finally:
            if fast is not None:
                fast.wake_manager = bool(self._queues)

    def _dispatch_message(self, message: Any) -> Any:
        match message:
            case DrainSubmissions():
                now = time.monotonic()
                for item in self._intake.take_all():
                    self._admit(item, now)
                self._flush()
            case ExecuteResponses(responses, at):
                self._answers(responses, at)
                self._flush()
            case Undeliverable(routing_id, request_id, reason):
                self._undeliverable(routing_id, request_id, reason)
                self._flush()
            case Completed():
                self._flush()  # completions were taken above
            case InstanceRoute(instance_id, task_id, routing_id, window, state):
                self._route(instance_id, task_id, routing_id, window, state)
                self._flush()
            case CheckDeadlines():
                self._expire(time.monotonic())
                self._flush()
                self._report()
            case ("sender", sender):
                self._sender = sender
            case "stats":
                self._report()
                return self._stats()
            case "shutdown":
                self._shutdown("the system is shutting down")
            case _:
                self._log.warning("unexpected message {!r}", type(message).__name__)
        return None

    # -- admission and dispatch ----------------------------------------------------------------
    def _admit(self, item: Submission, now: float) -> None:
        if self._closed:
            _fail(item.future, NoInstanceAvailable("the system is shutting down"))
            return
        target = item.target
        if target not in self._instances and target not in self._tasks:
            _fail(item.future, NoInstanceAvailable(f"no task or instance named {target!r}"))
            return
        timeout = item.timeout
        deadline = now + timeout if timeout is not None else None
        request = _Request(item, deadline, max(0, item.retries))
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, next(self._seq), request))
        if not self._dispatch(request, now):
            self._enqueue(request)

    def _candidates(self, target: str) -> list[_Instance]:
        inst = self._instances.get(target)
        return [inst] if inst is not None else self._tasks.get(target, [])

    def _dispatch(self, request: _Request, now: float) -> bool:
        best: _Instance | None = None
        most = 0
        for inst in self._candidates(request.submission.target):
            if inst.routing_id is not None:
                free = inst.window - len(inst.in_flight)
                if free > most:
                    best, most = inst, free
        if best is None:
            return False
        self._send(request, best, now)
        return True

    def _send(self, request: _Request, inst: _Instance, now: float) -> None:
        request_id = next(self._ids)
        sub = request.submission
        wall_deadline = (time.time() + (request.deadline - now)
                         if request.deadline is not None else None)
        body = pack_execute_request(request_id, sub.method, sub.data, wall_deadline,
                                    time.time())
        assert inst.routing_id is not None
        request.instance_id = inst.instance_id
        request.routing_id = inst.routing_id
        request.sent_at = now
        request.request_id = request_id
        inst.in_flight[request_id] = request
        self._pending[request_id] = request
        self._frames.append((inst.routing_id, body))
        self._out_bytes += len(body)

    def _enqueue(self, request: _Request) -> None:
        queue = self._queues.setdefault(request.submission.target, collections.deque())
        if len(queue) >= self.max_queue:
            self.counters["queue_full"] += 1
            _fail(request.submission.future, NoInstanceAvailable(
                f"queue for {request.submission.target!r} is full ({self.max_queue} waiting)"))
            return
        if request.deadline is None:  # waiting for an instance is always bounded
            request.deadline = time.monotonic() + self.max_wait
            heapq.heappush(self._deadlines, (request.deadline, next(self._seq), request))
        request.queued = True
        queue.append(request)

    def _drain_queues(self, now: float) -> None:
        for target, queue in list(self._queues.items()):
            while queue:
                request = queue[0]
                if request.expired:
                    queue.popleft()
                    continue
                if not self._dispatch(request, now):
                    break
                queue.popleft()
                request.queued = False
            if not queue:
                del self._queues[target]

    def _flush(self) -> None:
        if self._frames:
            frames, self._frames = self._frames, []
            self._out_count += len(frames)
            if self._sender is not None:
                self._sender(frames)

    def _report(self) -> None:
        """Hand the monitor what accumulated (on the deadline tick, not per request: the
        monitor's thread waking per request would compete with the callers)."""
        now = time.time()
        stats = [(name, direction, size, count) for name, direction, size, count in (
            ("EXECUTE_REQUEST", "out", self._out_bytes, self._out_count),
            ("EXECUTE_RESPONSE", "in", self._in_bytes, self._in_count)) if count]
        if stats:
            self._monitor.tell(RecordMessages(stats, now))
            self._out_count = self._out_bytes = self._in_count = self._in_bytes = 0
        if self._latencies:
            self._monitor.tell(RecordLatencies(self._latencies, now))
            self._latencies = []

    # -- answers -------------------------------------------------------------------------------
    def _answers(self, responses: Sequence[tuple[str, bytes, int, bool, bytes, str | None]],
                 at: float) -> None:
        pending = self._pending
        latencies = self._latencies
        for instance_id, routing_id, request_id, ok, data, error in responses:
            request = pending.get(request_id)
            if request is None:
                self.counters["late_replies_dropped"] += 1
                continue
            if request.routing_id != routing_id:
                # an instance answering a request it was not given: drop, count, keep waiting
                self.counters["foreign_replies_dropped"] += 1
                self._monitor.tell(CountMetric("foreign_replies_dropped"))
                continue
            if pending.pop(request_id, None) is not request:
                self.counters["late_replies_dropped"] += 1
                continue
            inst = self._instances.get(request.instance_id or "")
            if inst is not None:
                inst.in_flight.pop(request_id, None)
            latencies.append(at - request.sent_at)
            if ok:
                _resolve(request.submission.future, data)
            else:
                _fail(request.submission.future,
                      ExecutionError(error or "the handler failed", instance_id))
        if self._queues:
            self._drain_queues(at)

    def _undeliverable(self, routing_id: bytes, request_id: int, reason: str) -> None:
        """The pump could not send a request: it is lost (retried if allowed)."""
        request = self._pending.get(request_id)
        if request is None or request.routing_id != routing_id or \
                self._pending.pop(request_id, None) is not request:
            return  # already ended (answered, expired, or lost with its connection)
        inst = self._instances.get(request.instance_id or "")
        if inst is not None:
            inst.in_flight.pop(request_id, None)
            if inst.routing_id == routing_id and reason == "unreachable":
                # the peer is gone: route nothing more to it (not even this request's
                # retry) until the instance connects again
                self._route(inst.instance_id, inst.task_id, None, inst.window, inst.state)
        self._lost(request, f"could not send the request: {reason}", time.monotonic())

    def _completed(self, at: float) -> None:
        """Requests the fast path resolved: free their slots, record their latency."""
        assert self._fast is not None
        completions = self._fast.completions
        instances = self._instances
        latencies = self._latencies
        while completions:
            request_id, instance_id, latency, size = completions.popleft()
            inst = instances.get(instance_id)
            if inst is not None:
                inst.in_flight.pop(request_id, None)
            latencies.append(latency)
            self._in_count += 1
            self._in_bytes += size
        if self._queues:
            self._drain_queues(at)

    # -- instances coming and going ------------------------------------------------------------
    def _route(self, instance_id: str, task_id: str, routing_id: bytes | None,
               window: int, state: InstanceState) -> None:
        inst = self._instances.get(instance_id)
        if inst is None:
            if state.is_final:
                return
            inst = self._instances[instance_id] = _Instance(instance_id, task_id,
                                                            window)
            self._tasks.setdefault(task_id, []).append(inst)
        inst.state = state
        inst.window = window
        lost: list[_Request] = []
        if routing_id != inst.routing_id and inst.in_flight:
            # the connection it was answering on is gone: those requests are lost
            lost = [request for request_id, request in list(inst.in_flight.items())
                    if self._pending.pop(request_id, None) is request]  # not answered yet
            inst.in_flight.clear()
        inst.routing_id = routing_id if state.is_serving else None
        for request in lost:  # after the switch, so no retry goes back to the dead connection
            self._lost(request, f"instance {instance_id} lost ({state.value})",
                       time.monotonic())
        if state.is_final:
            del self._instances[instance_id]
            siblings = self._tasks.get(task_id, [])
            if inst in siblings:
                siblings.remove(inst)
            if not siblings:
                self._tasks.pop(task_id, None)
            self._fail_unroutable(f"instance {instance_id} is {state.value}")
        self._drain_queues(time.monotonic())

    def _lost(self, request: _Request, why: str, now: float) -> None:
        """The request's instance is gone: retry it if allowed, else fail it."""
        request.instance_id = request.routing_id = None
        if request.retries_left > 0 and not self._closed:
            request.retries_left -= 1
            self.counters["retried"] += 1
            if not self._dispatch(request, now):
                self._enqueue(request)
            return
        _fail(request.submission.future, InstanceFailed(why))

    def _fail_unroutable(self, why: str) -> None:
        for target in list(self._queues):
            if target not in self._instances and target not in self._tasks:
                for request in self._queues.pop(target):
                    _fail(request.submission.future, NoInstanceAvailable(why))

    # -- deadlines -----------------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        """Fail what passed its deadline: a heap, so each check costs O(expired), not
        O(pending); entries of requests that ended meanwhile are skipped."""
        heap = self._deadlines
        expired_any = False
        while heap and heap[0][0] <= now:
            _, _, request = heapq.heappop(heap)
            if request.queued and not request.expired:
                request.expired = True  # removed from its queue lazily
                self.counters["timeouts"] += 1
                _fail(request.submission.future, (
                    TimeoutError if request.submission.timeout is not None
                    else NoInstanceAvailable)(
                    f"no instance of {request.submission.target!r} became available in time"))
                continue
            request_id = request.request_id
            if not request_id or self._pending.get(request_id) is not request or \
                    self._pending.pop(request_id, None) is not request:
                continue  # answered, or not in flight
            inst = self._instances.get(request.instance_id or "")
            if inst is not None:
                inst.in_flight.pop(request_id, None)
            self.counters["timeouts"] += 1
            expired_any = True
            _fail(request.submission.future, TimeoutError(
                f"no answer from {request.instance_id} within "
                f"{request.submission.timeout or self.max_wait:g} s"))
        if expired_any:
            self._drain_queues(now)

    def _shutdown(self, why: str) -> None:
        self._closed = True
        for request_id in list(self._pending):
            request = self._pending.pop(request_id, None)
            if request is not None:
                _fail(request.submission.future, InstanceFailed(why))
        for queue in self._queues.values():
            for request in queue:
                _fail(request.submission.future, NoInstanceAvailable(why))
        self._queues.clear()
        for item in self._intake.take_all():
            _fail(item.future, NoInstanceAvailable(why))

    def _stats(self) -> dict[str, Any]:
        return {"pending": len(self._pending),
                "queued": sum(len(q) for q in self._queues.values()),
                "instances": {i.instance_id: {"in_flight": len(i.in_flight),
                                              "connected": i.routing_id is not None,
                                              "busy": i.routing_id is not None
                                              and len(i.in_flight) >= i.window,
                                              "state": i.state.value}
                              for i in self._instances.values()},
                **dict(self.counters)}


def start_deadline_checks(scheduler: Any, ref: pykka.ActorRef[Any],
                          interval: float = 0.05) -> Any:
    """Tick the manager's deadline check from the shared scheduler."""
    def tick() -> None:
        try:
            ref.tell(CheckDeadlines())
        except pykka.ActorDeadError:
            pass
    return scheduler.call_every(interval, tick)
