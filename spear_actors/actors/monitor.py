"""MonitorActor (the seed's MonitoringService): events ring, metrics, resource sampling.

Each tracked instance is sampled every ``collection_interval``: cpu %, rss and open fds from
psutil, and ``cpu_seconds``, ``memory_bytes``, ``memory_peak_bytes``, ``pids`` from its cgroup
where it has one (DESIGN.md section 9), else from psutil (``source`` says which).

Runs in its own Pykka thread; every other actor ``tell``s it what happened, in batches where
traffic is heavy. Memory stays bounded: the event ring, histograms and counters are fixed
size, per-instance samples are dropped when an instance stops being tracked, and the
per-connection table keeps the live connections and the last 256 closed ones.

Flags (DESIGN.md section 12) turn off the data they name, not only its events:
``enabled=False`` records nothing at all; ``enable_connection_tracking`` the connection
events and the per-connection table; ``enable_message_tracking`` message counts, bytes, rates
and events; ``enable_performance_tracking`` latencies and psutil samples. The senders (the
ConnectionActor and the TaskExecutionManager) read the same flags and leave out what would
be dropped here, so turning a flag off also saves the work of collecting it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

import psutil

from .._log import logger
from ..config import MonitoringConfig
from ..messages import (
    ConnectionCounts,
    CountMetric,
    ExecuteTally,
    GetEvents,
    GetMetrics,
    RecordEvent,
    RecordExecutes,
    RecordMessages,
    SampleProcesses,
    TrackProcess,
)
from ..metrics import MetricsRegistry
from ..process import InstanceCgroup
from ..scheduler import Scheduler, TimerHandle
from .deps import ServiceLink, safe_tell
from .service import ServiceActor

__all__ = ["MESSAGE_EVENTS", "MonitorActor"]

MESSAGE_EVENTS = frozenset({"MessageReceived", "MessageSent"})
CONNECTION_LIFECYCLE = frozenset({"Connected", "Authenticated", "Disconnected"})
CONNECTION_EVENTS = frozenset({"Connected", "Authenticated", "AuthenticationFailed",
                               "Disconnected", "HeartbeatTimeout"})


class MonitorActor(ServiceActor):
    """Owns a :class:`MetricsRegistry`; answers GetMetrics/GetEvents asks."""

    def __init__(self, config: MonitoringConfig, scheduler: Scheduler,
                 link: ServiceLink | None = None) -> None:
        super().__init__(link)
        self.config = config
        self._scheduler = scheduler
        self._metrics = MetricsRegistry(event_capacity=config.metrics_buffer_size)
        self._processes: dict[str, psutil.Process] = {}
        self._cgroups: dict[str, InstanceCgroup] = {}
        self._sampler: TimerHandle | None = None
        self._log = logger.bind(actor="monitor")

    @property
    def _connections_on(self) -> bool:
        return self.config.enable_connection_tracking

    def on_start(self) -> None:
        if self.config.enabled and self.config.enable_performance_tracking:
            ref = self.actor_ref
            self._sampler = self._scheduler.call_every(
                self.config.collection_interval, lambda: safe_tell(ref, SampleProcesses()))

    def release(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None

    def handle(self, message: Any) -> Any:
        match message:
            case GetMetrics():
                return self._metrics.snapshot(time.time())
            case GetEvents(limit, kinds, since_seq):
                return self._metrics.events.recent(limit, kinds, since_seq)
            case SampleProcesses():
                self._sample()
                return None
        if not self.config.enabled:
            return None  # records nothing (the busy senders, connections and tasks, send none)
        match message:
            case RecordEvent(kind, data, at):
                if self._wanted(kind):
                    self._metrics.record_event(kind, data, at)
                if kind == "InstanceRestarting":
                    self._metrics.restart()
                elif kind in CONNECTION_LIFECYCLE and self._connections_on:
                    self._connection_event(kind, data, at)
            case RecordMessages(stats, at):
                self._record_messages(stats, at)
            case RecordExecutes(tallies, at):
                self._record_executes(tallies, at)
            case CountMetric(name, n):
                self._metrics.count(name, n)
            case ConnectionCounts(active, pending, opened, closed, failures, errors):
                self._metrics.set_connection_counts(active, pending)
                self._metrics.connections_opened += opened
                self._metrics.connections_closed += closed
                self._metrics.auth_failures += failures
                for code, n in errors.items():
                    self._metrics.error(code, n)
            case TrackProcess(instance_id, pid, cgroup):
                if self.config.enable_performance_tracking:
                    self._track(instance_id, pid, cgroup)
            case _:
                self._log.warning("unexpected message {!r}", type(message).__name__)
        return None

    def _wanted(self, kind: str) -> bool:
        if kind in MESSAGE_EVENTS:
            return self.config.enable_message_tracking
        if kind in CONNECTION_EVENTS:
            return self.config.enable_connection_tracking
        return True

    def _connection_event(self, kind: str, data: Any, at: float) -> None:
        connection_id = data.get("connection_id")
        if not isinstance(connection_id, str):
            return
        table = self._metrics.connection_table
        if kind == "Connected":
            table.opened(connection_id, at)
        elif kind == "Authenticated":
            instance_id = data.get("instance_id")
            if isinstance(instance_id, str):
                table.authenticated(connection_id, instance_id, at)
        else:  # Disconnected
            table.closed(connection_id)

    def _record_messages(self, stats: Any, at: float) -> None:
        if not self.config.enable_message_tracking:
            return
        per_connection = self._connections_on
        table = self._metrics.connection_table
        n_in = n_out = 0
        for type_name, direction, size, n, connection_id in stats:
            self._metrics.messages.record(type_name, direction, size, n)
            if per_connection:
                table.record(connection_id, type_name, direction, size, n, at)
            if direction == "in":
                n_in += n
            else:
                n_out += n
        self._count_messages(n_in, n_out, at)

    def _count_messages(self, n_in: int, n_out: int, at: float) -> None:
        self._metrics.messages_in.add(n_in, at)
        self._metrics.messages_out.add(n_out, at)
        if self.config.enable_message_tracking:
            # message events are recorded per batch, not per message (bounded ring)
            if n_in:
                self._metrics.record_event("MessageReceived", {"count": n_in}, at)
            if n_out:
                self._metrics.record_event("MessageSent", {"count": n_out}, at)

    def _record_executes(self, tallies: Mapping[str, ExecuteTally], at: float) -> None:
        """The manager's per-instance execute batch: system-wide, per connection (the
        instance's live one), per instance (latency split) and per task (histogram)."""
        m = self._metrics
        messages = self.config.enable_message_tracking
        timing = self.config.enable_performance_tracking
        per_connection = self._connections_on
        answered = n_in = n_out = 0
        for instance_id, t in tallies.items():
            answered += t.answered
            if messages:
                if t.sent:
                    m.messages.record("EXECUTE_REQUEST", "out", t.sent_bytes, t.sent)
                if t.bypassed:
                    m.messages.record("EXECUTE_RESPONSE", "in", t.bypassed_bytes, t.bypassed)
                n_out += t.sent
                n_in += t.bypassed
            if per_connection:
                m.connection_table.record_executes(
                    instance_id, t.sent if messages else 0, t.sent_bytes,
                    t.bypassed if messages else 0, t.bypassed_bytes,
                    t.handler if timing else (), at)
            if timing and t.round_trip:
                m.execute_latency.record_many(t.round_trip)
                m.instance_latency.record(instance_id, t.queue, t.transport, t.handler)
                m.task_histograms.record(t.task_id or "?", t.round_trip)
        m.executes.add(answered, at)
        if messages:
            self._count_messages(n_in, n_out, at)

    def _track(self, instance_id: str, pid: int | None, cgroup: InstanceCgroup | None
               ) -> None:
        self._processes.pop(instance_id, None)
        self._cgroups.pop(instance_id, None)
        self._metrics.remove_instance(instance_id)
        if pid is None:
            return
        if cgroup is not None:
            self._cgroups[instance_id] = cgroup
        try:
            proc = psutil.Process(pid)
            proc.cpu_percent(None)  # prime the counter
            self._processes[instance_id] = proc
        except psutil.Error:
            pass

    def _sample(self) -> None:
        now = time.time()
        for instance_id, proc in list(self._processes.items()):
            try:
                with proc.oneshot():
                    cpu = proc.cpu_percent(None)
                    rss = proc.memory_info().rss
                    fds = proc.num_fds()
                    cgroup = self._cgroups.get(instance_id)
                    usage = (dict(cgroup.usage(), source="cgroup") if cgroup is not None
                             else _psutil_usage(proc, rss))
                    if usage["cpu_seconds"] is None:  # no CPU group of its own (no quota)
                        times = proc.cpu_times()
                        usage["cpu_seconds"] = times.user + times.system
            except psutil.Error:
                self._processes.pop(instance_id, None)
                continue
            self._metrics.sample_instance(instance_id, cpu, rss, fds, now, usage)


def _psutil_usage(proc: psutil.Process, rss: int) -> dict[str, Any]:
    """The cgroup's figures as far as psutil has them (peak: VmHWM of the main process)."""
    times = proc.cpu_times()
    peak = None
    with contextlib.suppress(OSError, ValueError, IndexError), \
            open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return {"cpu_seconds": times.user + times.system, "memory_bytes": rss,
            "memory_peak_bytes": peak, "pids": 1 + len(proc.children(recursive=True)),
            "source": "psutil"}
