"""MonitorActor (the seed's MonitoringService): events ring, metrics, resource sampling.

Each tracked instance is sampled every ``collection_interval``: cpu %, rss and open fds from
psutil, and ``cpu_seconds``, ``memory_bytes``, ``memory_peak_bytes``, ``pids`` from its cgroup
where it has one (DESIGN.md section 9), else from psutil (``source`` says which).

Runs in its own Pykka thread; every other actor ``tell``s it what happened, in batches where
traffic is heavy. Memory stays bounded: the event ring, histograms and counters are fixed
size, and per-instance samples are dropped when an instance stops being tracked.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import psutil

from .._log import logger
from ..config import MonitoringConfig
from ..messages import (
    ConnectionCounts,
    CountMetric,
    GetEvents,
    GetMetrics,
    RecordEvent,
    RecordLatencies,
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
        enabled = self.config.enabled
        match message:
            case RecordEvent(kind, data, at):
                if enabled and self._wanted(kind):
                    self._metrics.record_event(kind, data, at)
                if kind == "InstanceRestarting":
                    self._metrics.restart()
                elif kind == "AuthenticationFailed":
                    self._metrics.auth_failed()
            case RecordMessages(stats, at):
                if enabled:
                    self._record_messages(stats, at)
            case RecordLatencies(seconds, at):
                if enabled:
                    self._metrics.record_execute_latencies(seconds, at)
            case CountMetric(name, n):
                self._metrics.count(name, n)
            case ConnectionCounts(active, pending, opened, closed, _failures, errors):
                self._metrics.set_connection_counts(active, pending)
                self._metrics.connections_opened += opened
                self._metrics.connections_closed += closed
                for code, n in errors.items():
                    self._metrics.error(code, n)
            case TrackProcess(instance_id, pid, cgroup):
                self._track(instance_id, pid, cgroup)
            case SampleProcesses():
                self._sample()
            case GetMetrics():
                return self._metrics.snapshot(time.time())
            case GetEvents(limit, kinds, since_seq):
                return self._metrics.events.recent(limit, kinds, since_seq)
            case _:
                self._log.warning("unexpected message {!r}", type(message).__name__)
        return None

    def _wanted(self, kind: str) -> bool:
        if kind in MESSAGE_EVENTS:
            return self.config.enable_message_tracking
        if kind in CONNECTION_EVENTS:
            return self.config.enable_connection_tracking
        return True

    def _record_messages(self, stats: Any, at: float) -> None:
        n_in = n_out = 0
        for type_name, direction, size, n in stats:
            self._metrics.messages.record(type_name, direction, size, n)
            if direction == "in":
                n_in += n
            else:
                n_out += n
        self._metrics.messages_in.add(n_in, at)
        self._metrics.messages_out.add(n_out, at)
        if self.config.enable_message_tracking:
            # message events are recorded per batch, not per message (bounded ring)
            if n_in:
                self._metrics.record_event("MessageReceived", {"count": n_in}, at)
            if n_out:
                self._metrics.record_event("MessageSent", {"count": n_out}, at)

    def _track(self, instance_id: str, pid: int | None, cgroup: InstanceCgroup | None) -> None:
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
