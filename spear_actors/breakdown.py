"""Per-connection, per-instance and per-task metric breakdowns (DESIGN.md section 12).

Standard library only, owned by the MonitorActor like :mod:`spear_actors.metrics` (same rules:
not thread-safe, no clock read, ``now`` passed in). Every table here is bounded whatever
peers do: connections (all live ones up to a hard cap, plus the last ``keep_closed`` closed
ones), instances and tasks (a cap each; the oldest entry, or ``OTHER``, takes the excess).
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Iterable
from typing import Any

from .metrics import OTHER, LatencyHistogram, MessageStats

__all__ = ["EXECUTE_BUCKETS", "ConnectionTable", "InstanceLatencies", "TaskHistograms",
           "percentiles"]

EXECUTE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of ``spear_execute_duration_seconds``; +Inf is implied."""
_COARSE = 0.05
"""Relative precision of the per-connection and per-instance histograms (~210 counters each,
against 1 044 for the system-wide one)."""


def _histogram() -> LatencyHistogram:
    return LatencyHistogram(precision=_COARSE)


def percentiles(histogram: LatencyHistogram | None) -> dict[str, float | None]:
    """``{"p50", "p99", "max"}`` in seconds (None while empty)."""
    if histogram is None or not histogram.count:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = histogram.percentiles(50, 99)
    return {"p50": p50, "p99": p99, "max": histogram.max}


class _Connection:
    __slots__ = ("instance_id", "last_activity", "messages", "processing_time")

    def __init__(self, now: float) -> None:
        self.instance_id: str | None = None
        self.last_activity = now
        self.messages = MessageStats(max_types=16)
        self.processing_time: LatencyHistogram | None = None  # made on the first execute

    def snapshot(self) -> dict[str, Any]:
        messages = self.messages.snapshot()
        return {"instance_id": self.instance_id, "last_activity": self.last_activity,
                "messages": {"in": messages["in"], "out": messages["out"]},
                "processing_time": percentiles(self.processing_time)}


class ConnectionTable:
    """Counts and bytes by type and direction, last activity and execute processing time,
    per connection id: every live connection (at most ``max_live``; beyond it the oldest is
    retired) and the last ``keep_closed`` closed ones."""

    def __init__(self, keep_closed: int = 256, max_live: int = 8192) -> None:
        self._live: dict[str, _Connection] = {}
        self._closed: collections.OrderedDict[str, _Connection] = collections.OrderedDict()
        self._keep_closed = keep_closed
        self._max_live = max_live
        self._by_instance: dict[str, str] = {}
        """instance id -> its authenticated live connection (where its executes count)."""

    def __len__(self) -> int:
        return len(self._live) + len(self._closed)

    def _get(self, connection_id: str, now: float) -> _Connection:
        entry = self._live.get(connection_id) or self._closed.get(connection_id)
        if entry is None:
            if len(self._live) >= self._max_live:
                self.closed(next(iter(self._live)))
            entry = self._live[connection_id] = _Connection(now)
        return entry

    def opened(self, connection_id: str, now: float) -> None:
        self._get(connection_id, now)

    def authenticated(self, connection_id: str, instance_id: str, now: float) -> None:
        """``instance_id`` is now served on ``connection_id``; a connection it had before is
        retired (superseded, or lost without a word when the connection service restarted)."""
        previous = self._by_instance.get(instance_id)
        if previous is not None and previous != connection_id:
            self.closed(previous)
        entry = self._get(connection_id, now)
        entry.instance_id = instance_id
        entry.last_activity = max(entry.last_activity, now)
        if connection_id in self._live:
            self._by_instance[instance_id] = connection_id

    def closed(self, connection_id: str) -> None:
        entry = self._live.pop(connection_id, None)
        if entry is None:
            return
        if entry.instance_id is not None and \
                self._by_instance.get(entry.instance_id) == connection_id:
            del self._by_instance[entry.instance_id]
        self._closed[connection_id] = entry
        while len(self._closed) > self._keep_closed:
            self._closed.popitem(last=False)

    def record(self, connection_id: str, type_name: str, direction: str, size: int, n: int,
               now: float) -> None:
        entry = self._get(connection_id, now)
        entry.messages.record(type_name, direction, size, n)
        entry.last_activity = max(entry.last_activity, now)

    def connection_of(self, instance_id: str) -> str | None:
        return self._by_instance.get(instance_id)

    def record_executes(self, instance_id: str, sent: int, sent_bytes: int, answered: int,
                        answered_bytes: int, processing: Iterable[float],
                        now: float) -> None:
        """An instance's execute traffic since the last report, on its live connection (if
        this table knows it: after a monitor restart it learns it at the next auth)."""
        connection_id = self._by_instance.get(instance_id)
        entry = self._live.get(connection_id) if connection_id is not None else None
        if entry is None:
            return
        if sent:
            entry.messages.record("EXECUTE_REQUEST", "out", sent_bytes, sent)
        if answered:
            entry.messages.record("EXECUTE_RESPONSE", "in", answered_bytes, answered)
            entry.last_activity = max(entry.last_activity, now)
        samples = list(processing)
        if samples:
            if entry.processing_time is None:
                entry.processing_time = _histogram()
            entry.processing_time.record_many(samples)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``{connection_id: {instance_id, last_activity, messages: {in, out}, processing_time:
        {p50, p99, max}}}``: closed ones (oldest first), then live ones."""
        result = {cid: entry.snapshot() for cid, entry in self._closed.items()}
        result.update((cid, entry.snapshot()) for cid, entry in self._live.items())
        return result


class InstanceLatencies:
    """Execute latency per instance split into ``queue`` (submit until sent), ``transport``
    (round trip minus the handler's own time) and ``handler`` (what the instance reported);
    at most ``max_instances`` ids (the oldest recorded is forgotten first)."""

    PARTS = ("queue", "transport", "handler")

    def __init__(self, max_instances: int = 1024) -> None:
        self._max = max_instances
        self._table: dict[str, tuple[LatencyHistogram, LatencyHistogram, LatencyHistogram]] = {}

    def __len__(self) -> int:
        return len(self._table)

    def record(self, instance_id: str, queue: Iterable[float], transport: Iterable[float],
               handler: Iterable[float]) -> None:
        entry = self._table.get(instance_id)
        if entry is None:
            if len(self._table) >= self._max:
                del self._table[next(iter(self._table))]
            entry = self._table[instance_id] = (_histogram(), _histogram(), _histogram())
        for histogram, samples in zip(entry, (queue, transport, handler), strict=True):
            histogram.record_many(samples)

    def snapshot(self) -> dict[str, dict[str, dict[str, float | None]]]:
        """``{instance_id: {queue|transport|handler: {p50, p99, max}}}``."""
        return {iid: {part: percentiles(h) for part, h in zip(self.PARTS, entry, strict=True)}
                for iid, entry in self._table.items()}


class TaskHistograms:
    """Cumulative execute round-trip histograms per task with fixed Prometheus buckets
    (:data:`EXECUTE_BUCKETS`); at most ``max_tasks`` task names, the rest under ``OTHER``."""

    def __init__(self, max_tasks: int = 256) -> None:
        self._max = max_tasks
        self._tasks: dict[str, list[float]] = {}
        """task -> [count per bucket..., count above the last bucket, sum, count]"""

    def record(self, task_id: str, seconds: Iterable[float]) -> None:
        if task_id not in self._tasks and len(self._tasks) >= self._max:
            task_id = OTHER
        row = self._tasks.get(task_id)
        if row is None:
            row = self._tasks[task_id] = [0.0] * (len(EXECUTE_BUCKETS) + 3)
        where = bisect.bisect_left
        for value in seconds:
            if not math.isfinite(value):
                continue
            row[where(EXECUTE_BUCKETS, value)] += 1  # the first bound >= value ("le")
            row[-2] += value
            row[-1] += 1

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``{task: {"buckets": [[upper bound, cumulative count], ...], "sum", "count"}}``
        for the finite bounds of :data:`EXECUTE_BUCKETS` (``+Inf`` is ``count``: no infinity
        in a snapshot, so ``metrics --json`` stays strict JSON)."""
        result: dict[str, dict[str, Any]] = {}
        for task, row in self._tasks.items():
            running = 0
            buckets = []
            for bound, n in zip(EXECUTE_BUCKETS, row, strict=False):
                running += int(n)
                buckets.append([bound, running])
            result[task] = {"buckets": buckets, "sum": row[-2], "count": int(row[-1])}
        return result
