"""TaskExecutionManager: routes execute requests to instances and correlates the answers.

Runs in its own Pykka thread and owns the routing tables, the queues and the deadlines.
Caller threads hand submissions over through the RuntimeActor's :class:`SubmissionQueue`;
frames go straight to the router pump's outbound queue (tagged with their request id, so a
failed send names its request); answers come back either through the pump-thread
:class:`~spear_actors.actors.dataplane.ResponseFastPath` or from the ConnectionActor in one
message per inbound batch. Who owns a request at any moment is the
:class:`~spear_actors.actors.dataplane.RequestTable`'s business (see its thread contract);
the table belongs to the RuntimeActor, which sweeps it if this actor dies.

Routing: among the task's connected instances, least outstanding requests first, never more
than an instance's window (``max_concurrency + prefetch``); otherwise a bounded queue per
target. Every request ends exactly once: its answer, ExecutionError, TimeoutError,
NoInstanceAvailable or InstanceFailed (or a retry elsewhere when the call was marked
idempotent with ``retries``).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pykka

from .._log import logger
from ..config import MonitoringConfig
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
    ExecuteTally,
    GetTaskStats,
    InstanceRoute,
    RecordExecutes,
    Submission,
    Undeliverable,
)
from ..protocol.codec import pack_execute_request
from ..records import InstanceState
from .dataplane import Request, RequestTable, fail_future, resolve_future
from .deps import ServiceLink, safe_tell
from .intake import SubmissionQueue
from .service import ServiceActor

__all__ = ["TaskExecutionManager", "start_deadline_checks"]

Sender = Callable[[Iterable[tuple[bytes, bytes, int]]], None]
"""Queues (routing id, body, request id) frames on the router pump (any thread)."""
DEFAULT_MAX_QUEUE = 100_000
DEFAULT_MAX_WAIT = 30.0  # a queued request without its own timeout waits at most this long
SPLIT_SAMPLES = 16
"""Answers per instance per report (50 ms tick) whose latency split (queue, transport,
handler) is kept: a sample bounding the monitor's work at any throughput (~320/s per
instance; percentiles of a sample). Round trips are all kept: their counts are exported."""


@dataclass(slots=True, eq=False)
class _Instance:
    instance_id: str
    task_id: str
    window: int
    routing_id: bytes | None = None
    """Where new requests go (None: not serving)."""
    peer: bytes | None = None
    """The connection the requests in flight were sent on (kept while the instance is
    paused, e.g. re-authenticating after a ConnectionActor restart)."""
    state: InstanceState = InstanceState.CREATING
    generation: int = 0
    in_flight: dict[int, Request] = field(default_factory=dict)


class TaskExecutionManager(ServiceActor):
    """Owns routing tables, queues and deadlines; see the module docstring."""

    def __init__(self, intake: SubmissionQueue, monitor: Any, table: RequestTable,
                 sender: Sender | None, *, max_queue: int = DEFAULT_MAX_QUEUE,
                 max_wait: float = DEFAULT_MAX_WAIT,
                 routes: dict[str, tuple[str, int]] | None = None,
                 monitoring: MonitoringConfig | None = None,
                 link: ServiceLink | None = None) -> None:
        super().__init__(link)
        monitoring = monitoring or MonitoringConfig()
        self._account = monitoring.enabled
        """Tally executes per instance for the monitor at all (nothing when disabled)."""
        self._timing = monitoring.enabled and monitoring.enable_performance_tracking
        """Keep latencies (round trip, queue, transport, handler)."""
        self._intake = intake
        self._monitor = monitor
        """An ActorRef, or anything with ``tell`` that resolves the current monitor."""
        self._table = table
        self._sender = sender
        self.max_queue = max_queue
        self.max_wait = max_wait
        self._instances: dict[str, _Instance] = {}
        self._tasks: dict[str, list[_Instance]] = {}
        self._queues: dict[str, collections.deque[Request]] = {}
        self._ids = _REQUEST_IDS
        self._deadlines: list[tuple[float, int, Request]] = []  # heap; stale entries skipped
        self._seq = itertools.count()
        self._frames: list[tuple[bytes, bytes, int]] = []
        self._tallies: dict[str, ExecuteTally] = {}  # reported on the deadline tick
        self._closed = False
        self.counters: collections.Counter[str] = collections.Counter()
        self._log = logger.bind(actor="tasks")
        for instance_id, (task_id, window) in (routes or {}).items():
            # instances the root knows of, to be routed once they re-send their routes after
            # a restart: requests for them queue (bounded) instead of failing as unknown
            inst = self._instances[instance_id] = _Instance(instance_id, task_id, window)
            self._tasks.setdefault(task_id, []).append(inst)

    def on_start(self) -> None:
        ref = self.actor_ref

        def wake() -> None:  # pump thread
            try:
                ref.tell(Completed())
            except pykka.ActorDeadError:
                pass

        self._table.waker = wake
        self._intake.actor = ref
        if len(self._intake):  # submissions that waited out a restart
            self._intake.wake()

    def on_stop(self) -> None:
        self._shutdown("the system is shutting down")

    def handle(self, message: Any) -> Any:
        table = self._table
        table.begin()
        if table.completions:
            self._completed(time.monotonic())
        result = self._dispatch_message(message)
        while table.settle(bool(self._queues)):  # completions that landed meanwhile
            self._completed(time.monotonic())
            self._flush()
        return result

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
                self._flush()  # completions were taken in handle()
            case InstanceRoute(instance_id, task_id, routing_id, window, state, generation):
                inst = self._instances.get(instance_id)
                if inst is not None and generation < inst.generation:
                    return None  # a replaced generation's last word
                self._route(instance_id, task_id, routing_id, window, state, generation)
                self._flush()
            case CheckDeadlines():
                self._expire(time.monotonic())
                self._flush()
                self._report()
            case GetTaskStats():
                self._report()
                return self._stats()
            case _:
                self._log.warning("unexpected message {!r}", type(message).__name__)
        return None

    # -- admission and dispatch ----------------------------------------------------------------
    def _admit(self, item: Submission, now: float) -> None:
        if self._closed:
            fail_future(item.future, NoInstanceAvailable("the system is shutting down"))
            return
        target = item.target
        if target not in self._instances and target not in self._tasks:
            fail_future(item.future,
                        NoInstanceAvailable(f"no task or instance named {target!r}"))
            return
        timeout = item.timeout
        deadline = now + timeout if timeout is not None else None
        request = Request(item, deadline, max(0, item.retries), next(self._ids))
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, next(self._seq), request))
        self._table.register(request)
        self._place(request, now)

    def _place(self, request: Request, now: float) -> None:
        """Send a registered request, or queue it; fail it if its queue is full."""
        if not self._dispatch(request, now) and not self._enqueue(request):
            self._table.claim(request.request_id, request)
            fail_future(request.submission.future, NoInstanceAvailable(
                f"queue for {request.submission.target!r} is full ({self.max_queue} waiting)"))

    def _candidates(self, target: str) -> list[_Instance]:
        inst = self._instances.get(target)
        return [inst] if inst is not None else self._tasks.get(target, [])

    def _dispatch(self, request: Request, now: float) -> bool:
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

    def _send(self, request: Request, inst: _Instance, now: float) -> None:
        """Put a registered ``request`` on the wire to ``inst``."""
        sub = request.submission
        request_id = request.request_id
        wall_deadline = (time.time() + (request.deadline - now)
                         if request.deadline is not None else None)
        body = pack_execute_request(request_id, sub.method, sub.data, wall_deadline,
                                    time.time())
        assert inst.routing_id is not None
        request.instance_id = inst.instance_id
        request.routing_id = inst.routing_id
        request.sent_at = now
        inst.in_flight[request_id] = request
        self._frames.append((inst.routing_id, body, request_id))
        if self._account:
            tally = self._tallies.get(inst.instance_id)
            if tally is None:
                tally = self._tallies[inst.instance_id] = ExecuteTally(inst.task_id)
            tally.sent += 1
            tally.sent_bytes += len(body)

    def _enqueue(self, request: Request) -> bool:
        """Queue it for a free slot; False if the target's queue is full."""
        queue = self._queues.setdefault(request.submission.target, collections.deque())
        if len(queue) >= self.max_queue:
            self.counters["queue_full"] += 1
            return False
        if request.deadline is None:  # waiting for an instance is always bounded
            request.deadline = time.monotonic() + self.max_wait
            heapq.heappush(self._deadlines, (request.deadline, next(self._seq), request))
        request.queued = True
        queue.append(request)
        return True

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
            if self._sender is not None:
                self._sender(frames)

    def _report(self) -> None:
        """Hand the monitor what accumulated (on the deadline tick, not per request: the
        monitor's thread waking per request would compete with the callers)."""
        if self._tallies:
            tallies, self._tallies = self._tallies, {}
            safe_tell(self._monitor, RecordExecutes(tallies, time.time()))

    def _tally(self, instance_id: str, inst: _Instance | None) -> ExecuteTally:
        tally = self._tallies.get(instance_id)
        if tally is None:
            tally = self._tallies[instance_id] = ExecuteTally(
                inst.task_id if inst is not None else "")
        return tally

    # -- answers -------------------------------------------------------------------------------
    def _answers(self, responses: Sequence[tuple[str, bytes, int, bool, bytes, str | None,
                                                 float | None]], at: float) -> None:
        table = self._table
        for instance_id, routing_id, request_id, ok, data, error, took in responses:
            request = table.get(request_id)
            if request is None or request.routing_id is None:
                self.counters["late_replies_dropped"] += 1
                continue
            if request.routing_id != routing_id:
                # an instance answering a request it was not given: drop, count, keep waiting
                self.counters["foreign_replies_dropped"] += 1
                safe_tell(self._monitor, CountMetric("foreign_replies_dropped"))
                continue
            if not table.claim(request_id, request):
                self.counters["late_replies_dropped"] += 1
                continue
            inst = self._instances.get(request.instance_id or "")
            if inst is not None:
                inst.in_flight.pop(request_id, None)
            if self._account:  # the ConnectionActor's protocol counted the message itself
                tally = self._tally(instance_id, inst)
                tally.answered += 1
                if self._timing:
                    round_trip = at - request.sent_at
                    tally.round_trip.append(round_trip)
                    if len(tally.queue) < SPLIT_SAMPLES:
                        tally.queue.append(request.sent_at - request.submission.submitted_at)
                        if took is not None:
                            tally.handler.append(took)
                            tally.transport.append(max(0.0, round_trip - took))
            if ok:
                resolve_future(request.submission.future, data)
            else:
                fail_future(request.submission.future,
                            ExecutionError(error or "the handler failed", instance_id))
        if self._queues:
            self._drain_queues(at)

    def _undeliverable(self, routing_id: bytes, request_id: int, reason: str) -> None:
        """The pump could not send a request: it is lost (retried if allowed)."""
        request = self._table.get(request_id)
        if request is None or request.routing_id != routing_id or \
                not self._table.claim(request_id, request):
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
        instances = self._instances
        account, timing = self._account, self._timing
        for request_id, instance_id, round_trip, size, took, queued in \
                self._table.take_completions():
            inst = instances.get(instance_id)
            if inst is not None:
                inst.in_flight.pop(request_id, None)
            if not account:
                continue
            tally = self._tallies.get(instance_id) or self._tally(instance_id, inst)
            tally.answered += 1
            tally.bypassed += 1  # the fast path: no protocol saw this message
            tally.bypassed_bytes += size
            if timing:
                tally.round_trip.append(round_trip)
                if len(tally.queue) < SPLIT_SAMPLES:
                    tally.queue.append(queued)
                    if took is not None:
                        tally.handler.append(took)
                        tally.transport.append(round_trip - took if round_trip > took else 0.0)
        if self._queues:
            self._drain_queues(at)

    # -- instances coming and going ------------------------------------------------------------
    def _route(self, instance_id: str, task_id: str, routing_id: bytes | None,
               window: int, state: InstanceState, generation: int | None = None) -> None:
        inst = self._instances.get(instance_id)
        if inst is None:
            if state.is_final:
                return
            inst = self._instances[instance_id] = _Instance(instance_id, task_id,
                                                            window)
            self._tasks.setdefault(task_id, []).append(inst)
        inst.state = state
        inst.window = window
        if generation is not None:
            inst.generation = generation
        lost: list[Request] = []
        if routing_id != inst.peer and inst.in_flight:
            # the connection it was answering on is gone: those requests are lost
            lost = [request for request_id, request in list(inst.in_flight.items())
                    if self._table.claim(request_id, request)]  # not answered yet
            inst.in_flight.clear()
        inst.peer = routing_id
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

    def _lost(self, request: Request, why: str, now: float) -> None:
        """The request's instance is gone (the caller claimed it): retry it if allowed,
        else fail it."""
        request.instance_id = request.routing_id = None
        if request.retries_left > 0 and not self._closed:
            request.retries_left -= 1
            self.counters["retried"] += 1
            request.request_id = next(self._ids)  # a re-send never reuses a wire id
            self._table.register(request)
            self._place(request, now)
            return
        fail_future(request.submission.future, InstanceFailed(why))

    def _fail_unroutable(self, why: str) -> None:
        for target in list(self._queues):
            if target not in self._instances and target not in self._tasks:
                for request in self._queues.pop(target):
                    if self._table.claim(request.request_id, request):
                        fail_future(request.submission.future, NoInstanceAvailable(why))

    # -- deadlines -----------------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        """Fail what passed its deadline: a heap, so each check costs O(expired), not
        O(pending); entries of requests that ended meanwhile are skipped."""
        heap = self._deadlines
        expired_any = False
        table = self._table
        while heap and heap[0][0] <= now:
            _, _, request = heapq.heappop(heap)
            if not table.claim(request.request_id, request):
                continue  # answered, failed or re-registered (then its own entry remains)
            if request.queued:
                request.expired = True  # removed from its queue lazily
                self.counters["timeouts"] += 1
                fail_future(request.submission.future, (
                    TimeoutError if request.submission.timeout is not None
                    else NoInstanceAvailable)(
                    f"no instance of {request.submission.target!r} became available in time"))
                continue
            inst = self._instances.get(request.instance_id or "")
            if inst is not None:
                inst.in_flight.pop(request.request_id, None)
            self.counters["timeouts"] += 1
            expired_any = True
            fail_future(request.submission.future, TimeoutError(
                f"no answer from {request.instance_id} within "
                f"{request.submission.timeout or self.max_wait:g} s"))
        if expired_any:
            self._drain_queues(now)

    def _shutdown(self, why: str) -> None:
        self._closed = True
        for request in self._table.sweep():
            fail_future(request.submission.future, InstanceFailed(why) if request.routing_id
                        else NoInstanceAvailable(why))
        self._queues.clear()
        self._intake.close(why)  # a stop (not a failure) is for good: refuse what comes

    def _stats(self) -> dict[str, Any]:
        return {"pending": sum(len(i.in_flight) for i in self._instances.values()),
                "queued": sum(len(q) for q in self._queues.values()),
                "instances": {i.instance_id: {"in_flight": len(i.in_flight),
                                              "connected": i.routing_id is not None,
                                              "busy": i.routing_id is not None
                                              and len(i.in_flight) >= i.window,
                                              "state": i.state.value}
                              for i in self._instances.values()},
                **dict(self.counters)}


_REQUEST_IDS = itertools.count(1)
"""Wire request ids, unique for the whole process: a restarted manager never reuses one that
an instance may still answer."""


def start_deadline_checks(scheduler: Any, tasks: Any, interval: float = 0.05) -> Any:
    """Tick the current manager's deadline check from the shared scheduler (``tasks``: an
    ActorRef or anything with ``tell`` that resolves the current manager)."""
    def tick() -> None:
        safe_tell(tasks, CheckDeadlines())
    return scheduler.call_every(interval, tick)
