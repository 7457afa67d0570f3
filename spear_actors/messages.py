"""Typed messages the actors exchange (frozen dataclasses, dispatched with ``match``).

Grouped by the actor that receives them. Replies to ``ask`` are noted per message; every
other message is a ``tell``. Messages carry ids, values and ActorRefs, never actor objects.
Secrets travel only in :class:`ExpectInstance` and are excluded from its repr.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .config import InstanceConfig, ResourceLimits
from .records import InstanceInfo, InstanceState
from .transport.router import Inbound

if TYPE_CHECKING:
    from .process.instance_cgroup import InstanceCgroup

ActorRef = Any  # pykka.ActorRef[Any]; kept loose so this module imports no pykka


# -- RuntimeActor ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Boot:
    """ask -> ListenerInfo: start the services in order (monitor, listener and connection,
    tasks); raises TransportError / ConfigError if the listener cannot be bound."""


@dataclass(frozen=True)
class ServiceFailed:
    """A service actor died of an exception (sent from its ``on_failure``)."""

    service: str
    generation: int
    reason: str


@dataclass(frozen=True)
class SupervisorFailed:
    """An instance's SupervisorActor died of an exception (sent from its ``on_failure``)."""

    instance_id: str
    reason: str


@dataclass(frozen=True)
class InjectCrash:
    """ask -> None: make the actor named by ``target`` fail as a bug would
    (``monitor``, ``connection``, ``tasks``, ``instance/<id>``, ``supervisor/<id>``);
    raises SpearError for an unknown target."""

    target: str


@dataclass(frozen=True)
class Query:
    """ask -> a pykka Future of ``service``'s answer to ``message`` (the runtime forwards
    without waiting, so a slow service never holds up the root)."""

    service: str
    message: Any


@dataclass(frozen=True)
class CreateInstance:
    """ask -> instance id (str); raises SpawnError / InsufficientResources / ConfigError."""

    task_id: str
    config: InstanceConfig
    limits: ResourceLimits


@dataclass(frozen=True)
class ListInstances:
    """ask -> list[InstanceInfo] in start order."""

    task_id: str | None = None
    include_idle: bool = False
    """Also the idle members of warm pools (never claimed, never given requests)."""


@dataclass(frozen=True)
class InstanceUpdated:
    """An instance's state changed (from its InstanceActor or SupervisorActor); updates of
    an older ``generation`` than the newest seen are stale and ignored."""

    info: InstanceInfo
    generation: int = 0


@dataclass(frozen=True)
class StopInstance:
    """ask -> a pykka Future of the supervisor's answer (a Future[InstanceInfo] resolved
    once STOPPED), or None if the instance's supervisor is already done."""

    instance_id: str
    reason: str = "operator"


@dataclass(frozen=True)
class StartInstance:
    """ask -> bool: bring a STOPPED or FAILED instance back under the same id with a fresh
    restart budget (False if it is running already). With ``config``/``limits`` the instance
    runs those from now on (a reload's rolling restart; it must be stopped first)."""

    instance_id: str
    config: InstanceConfig | None = None
    limits: ResourceLimits | None = None


@dataclass(frozen=True)
class ScaleTask:
    """ask -> {"created": [ids], "removed": [ids]}: make task ``task_id`` have ``count``
    instances. New ones run ``config``/``limits`` if given (which become the task's
    template), else the task's template; removed ones (the newest first) are stopped and
    no longer listed once stopped. ``forget`` drops the task's template too (a reload
    removed the task)."""

    task_id: str
    count: int
    config: InstanceConfig | None = None
    limits: ResourceLimits | None = None
    forget: bool = False


@dataclass(frozen=True)
class RestartInstance:
    """ask -> None: operator restart (InstanceFailed if it is STOPPED or FAILED)."""

    instance_id: str
    reason: str = "operator"


@dataclass(frozen=True)
class WatchState:
    """ask -> None; ``event`` is set once the instance is in one of ``states`` (at once if it
    already is) or final (STOPPED/FAILED) or unknown."""

    instance_id: str
    states: frozenset[InstanceState]
    event: threading.Event


@dataclass(frozen=True)
class SupervisorDone:
    """A supervisor has stopped for good (its instance STOPPED or FAILED)."""

    instance_id: str


@dataclass(frozen=True)
class DescribeTree:
    """ask -> dict: the supervision tree as data."""


# -- SupervisorActor -----------------------------------------------------------------------

@dataclass(frozen=True)
class ChildExited:
    generation: int
    exit_code: int | None
    reason: str
    abnormal: bool


@dataclass(frozen=True)
class ChildCrashed:
    """The InstanceActor died of an exception (sent from its ``on_failure``)."""

    generation: int
    error: str


@dataclass(frozen=True)
class ChildReady:
    generation: int
    at: float


@dataclass(frozen=True)
class RestartDue:
    generation: int


@dataclass(frozen=True)
class StopSupervised:
    """ask -> Future[InstanceInfo] resolved once the instance is STOPPED (operator stop)."""

    reason: str = "operator"


@dataclass(frozen=True)
class RestartSupervised:
    """Operator restart: replace the process now, not counted as a failure."""

    reason: str = "operator"


@dataclass(frozen=True)
class DescribeSupervisor:
    """ask -> dict for the tree."""


@dataclass(frozen=True)
class Reattach:
    """Service ``service`` was restarted with fresh state: tell it again what it must know
    of this instance (sent by the root to every supervisor, which passes it to its child)."""

    service: str


# -- InstanceActor -------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcessExited:
    pid: int
    exit_code: int | None


@dataclass(frozen=True)
class ConnectionAuthenticated:
    connection_id: str
    session_id: str
    routing_id: bytes


@dataclass(frozen=True)
class ConnectionLost:
    connection_id: str
    reason: str


@dataclass(frozen=True)
class StartupTimedOut:
    pass


@dataclass(frozen=True)
class StopProcess:
    """Graceful stop: SIGNAL stop, SIGTERM, stop_timeout, SIGKILL."""

    reason: str


@dataclass(frozen=True)
class KillProcess:
    """Kill the whole process tree now (hung or replaced instance)."""

    reason: str


@dataclass(frozen=True)
class Crash:
    """Make the receiving actor raise, as a bug would (``SpearSystem.inject_crash``)."""

    message: str = "crash injected"


# -- ConnectionActor -----------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectInstance:
    instance_id: str
    secret: str = field(repr=False)
    instance_ref: ActorRef = field(compare=False)
    generation: int = 0
    listener_tag: bytes | None = None
    """Its dedicated listener (per_instance_listeners), when it re-registers after a
    ConnectionActor restart."""
    routing_id: bytes | None = None
    """The peer it was authenticated on before a ConnectionActor restart: told to
    authenticate again at once."""


@dataclass(frozen=True)
class OpenListener:
    """ask -> {"endpoint", "port", "transport"} of a dedicated listener for the instance
    (per_instance_listeners); it closes with the generation's ForgetInstance."""

    instance_id: str
    generation: int


@dataclass(frozen=True)
class ForgetInstance:
    instance_id: str
    generation: int
    reason: str = "forgotten"


@dataclass(frozen=True)
class InboundBatch:
    frames: list[Inbound]
    """Frames the pump-thread fast path did not take."""


@dataclass(frozen=True)
class ConnectionTick:
    now: float


@dataclass(frozen=True)
class SendSignal:
    instance_id: str
    signal: str
    reason: str


@dataclass(frozen=True)
class CloseConnection:
    instance_id: str
    reason: str


@dataclass(frozen=True)
class ListConnections:
    """ask -> list[ConnectionState]."""


@dataclass(frozen=True)
class SendFailed:
    """A frame that is not an execute request could not be sent (counted)."""

    routing_id: bytes
    reason: str


@dataclass(frozen=True)
class StopListening:
    """ask -> None: close every connection and stop the pump."""


# -- MonitorActor --------------------------------------------------------------------------

@dataclass(frozen=True)
class RecordEvent:
    kind: str
    data: Mapping[str, Any]
    time: float


@dataclass(frozen=True)
class RecordMessages:
    """(type name, direction, total bytes, count, connection id) tuples for one batch."""

    stats: Sequence[tuple[str, str, int, int, str]]
    time: float


@dataclass(slots=True, eq=False)
class ExecuteTally:
    """One instance's executes since the manager's last report. Filled by the manager, then
    handed over in :class:`RecordExecutes` and never touched by it again (the monitor's)."""

    task_id: str
    sent: int = 0
    sent_bytes: int = 0
    answered: int = 0
    """answers taken (either path)"""
    bypassed: int = 0
    """answers the pump's fast path took: no protocol counted these messages"""
    bypassed_bytes: int = 0
    round_trip: list[float] = field(default_factory=list)
    """seconds from sending the request to taking its answer"""
    queue: list[float] = field(default_factory=list)
    """seconds from submit() until the request was sent (this and the next two: a sample of
    the answers, at most ``tasks.SPLIT_SAMPLES`` per report)"""
    handler: list[float] = field(default_factory=list)
    """the instance's own ``processing_time`` (only from peers that report it)"""
    transport: list[float] = field(default_factory=list)
    """round trip minus the handler time (same answers as ``handler``)"""


@dataclass(frozen=True)
class RecordExecutes:
    """Execute traffic and latencies per instance id, batched on the manager's tick."""

    tallies: Mapping[str, ExecuteTally]
    time: float


@dataclass(frozen=True)
class CountMetric:
    name: str
    n: int = 1


@dataclass(frozen=True)
class ConnectionCounts:
    active: int
    pending: int
    opened: int = 0
    closed: int = 0
    auth_failures: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TrackProcess:
    """Sample this instance's usage (``pid`` None: stop); from its cgroup if it has one."""

    instance_id: str
    pid: int | None
    cgroup: InstanceCgroup | None = None


@dataclass(frozen=True)
class SampleProcesses:
    pass


@dataclass(frozen=True)
class GetMetrics:
    """ask -> nested dict."""


@dataclass(frozen=True)
class GetEvents:
    """ask -> list[Event]."""

    limit: int | None = 100
    kinds: frozenset[str] | None = None
    since_seq: int | None = None


# -- TaskExecutionManager -------------------------------------------------------------------

@dataclass(frozen=True)
class InstanceRoute:
    """Where an instance can be reached (routing id None: not connected)."""

    instance_id: str
    task_id: str
    routing_id: bytes | None
    window: int
    """Requests it may hold at once: max_concurrency + prefetch."""
    state: InstanceState
    generation: int = 0
    """Routes of an older generation than the newest seen are stale and ignored."""


@dataclass(frozen=True)
class ExecuteResponses:
    """(instance_id, routing_id, request_id, ok, data, error, processing_time) tuples from
    the wire."""

    responses: Sequence[tuple[str, bytes, int, bool, bytes, str | None, float | None]]
    time: float


@dataclass(frozen=True)
class Undeliverable:
    """The pump could not send request ``request_id`` to ``routing_id`` (``reason``:
    ``unreachable`` when the peer is gone, ``peer_backlogged`` when its queue is full)."""

    routing_id: bytes
    request_id: int
    reason: str


@dataclass(frozen=True)
class Completed:
    """Wake-up: the fast path resolved requests while the manager has work queued (the
    completions themselves wait in the fast path's deque)."""


@dataclass(frozen=True)
class DrainSubmissions:
    """Wake-up: new submissions are waiting in the manager's queue."""


@dataclass(frozen=True)
class CheckDeadlines:
    pass


@dataclass(frozen=True)
class GetTaskStats:
    """ask -> dict: pending, queued, per-instance load and counters."""


class Submission(NamedTuple):
    """One execute call waiting for an instance (not a message by itself: queued in bulk;
    a NamedTuple because one is built per call on the caller's thread)."""

    target: str
    method: str
    data: bytes
    timeout: float | None
    retries: int
    future: Future[bytes]
    submitted_at: float
