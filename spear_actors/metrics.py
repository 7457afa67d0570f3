"""Bounded metric structures owned by the MonitorActor (DESIGN.md section 5).

Standard library only. Nothing here is thread-safe and nothing reads a clock: the owning actor
calls every method from its own thread, and methods that need time take ``now`` (seconds, on
whichever clock the caller picks, used consistently). Memory is constant in the number of
messages, events and connections seen: fixed rings, fixed bucket arrays, key-bounded dicts.
"""

from __future__ import annotations

import bisect
import itertools
import math
import types
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .records import Event

if TYPE_CHECKING:
    from .breakdown import ConnectionTable, InstanceLatencies, TaskHistograms

__all__ = [
    "OTHER",
    "REDACTED",
    "Counters",
    "EventLog",
    "InstanceSamples",
    "LatencyHistogram",
    "MessageStats",
    "MetricsRegistry",
    "RateMeter",
    "redact",
]

REDACTED = "***"
"""What a secret-looking value is replaced with in event data."""
OTHER = "OTHER"
"""Key that collects counts for names beyond a table's bound."""

_SECRET_WORDS = ("token", "secret", "password", "passwd", "credential")
_NAME_MAX = 64
_NEVER = -(1 << 62)


def _is_secret(key: object) -> bool:
    return isinstance(key, str) and any(word in key.lower() for word in _SECRET_WORDS)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return redact(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(value)
    if isinstance(value, bytearray):
        return bytes(value)
    return value


def redact(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return a read-only deep copy of ``data`` with secret-looking values replaced by ``***``.

    A key is secret-looking if it contains ``token``, ``secret``, ``password``, ``passwd`` or
    ``credential`` in any case. Nested mappings are redacted and made read-only as well; lists
    and tuples become tuples, sets frozensets.
    """
    return types.MappingProxyType(
        {key: REDACTED if _is_secret(key) else _freeze(value) for key, value in data.items()})


def _bounded_key(table: Mapping[str, Any], name: str, limit: int) -> str:
    """``name`` (cut to 64 characters) if ``table`` holds it or has room, else ``OTHER``."""
    if name in table:
        return name
    name = str(name)[:_NAME_MAX]
    if name in table or name == OTHER or len(table) - (OTHER in table) < limit:
        return name
    return OTHER


class EventLog:
    """The most recent ``capacity`` events, oldest first, each with a never-reused ``seq``."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"EventLog capacity must be >= 1, got {capacity!r}")
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._last_seq = 0

    @property
    def capacity(self) -> int:
        return self._ring.maxlen or 0

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest event (0 before the first); also the total recorded."""
        return self._last_seq

    @property
    def dropped(self) -> int:
        """Events evicted from the ring to make room for newer ones."""
        return self._last_seq - len(self._ring)

    def __len__(self) -> int:
        return len(self._ring)

    def append(self, kind: str, data: Mapping[str, Any], now: float) -> Event:
        """Record one event at time ``now``; ``data`` is copied read-only with secrets redacted."""
        self._last_seq += 1
        event = Event(seq=self._last_seq, time=now, kind=kind, data=redact(data))
        self._ring.append(event)
        return event

    def extend(self, entries: Iterable[tuple[str, Mapping[str, Any]]], now: float) -> int:
        """Record a batch of ``(kind, data)`` events at time ``now``; return how many."""
        count = 0
        for kind, data in entries:
            self.append(kind, data, now)
            count += 1
        return count

    def recent(self, limit: int | None = 100, kinds: Collection[str] | None = None,
               since_seq: int | None = None) -> list[Event]:
        """The newest ``limit`` events (all if None), oldest first.

        ``kinds`` keeps only events of those kinds (a single string counts as one kind);
        ``since_seq`` keeps only events with a greater ``seq``.
        """
        if limit is not None and limit <= 0:
            return []
        wanted = None if kinds is None else frozenset((kinds,) if isinstance(kinds, str)
                                                      else kinds)
        found: list[Event] = []
        for event in reversed(self._ring):
            if since_seq is not None and event.seq <= since_seq:
                break
            if wanted is None or event.kind in wanted:
                found.append(event)
                if limit is not None and len(found) >= limit:
                    break
        found.reverse()
        return found


class LatencyHistogram:
    """Durations in seconds, in fixed logarithmic buckets: constant memory, bounded error.

    Buckets grow by ``(1 + precision) ** 2`` from ``lowest`` to ``highest``, and a percentile
    is reported as its bucket's geometric middle, so it lies within ``precision`` (relative) of
    the exact nearest-rank percentile. Values below ``lowest`` (negatives count as 0) share one
    bucket and are reported to within ``lowest`` (absolute); values at or above ``highest``
    share another and are reported as ``max``. ``min``, ``max`` and ``mean`` are exact.
    NaN and infinities are ignored. The defaults (1 µs .. 1000 s, 1 %) use 1 044 counters.
    """

    def __init__(self, lowest: float = 1e-6, highest: float = 1000.0,
                 precision: float = 0.01) -> None:
        if not 0 < lowest < highest or not 0 < precision < 1:
            raise ValueError("LatencyHistogram needs 0 < lowest < highest and 0 < precision < 1")
        self._lowest = lowest
        self._highest = highest
        self._precision = precision
        self._log_growth = 2 * math.log1p(precision)
        self._n = math.ceil(math.log(highest / lowest) / self._log_growth)
        self._counts = [0] * (self._n + 2)  # [below lowest, n log buckets, at/above highest]
        self.reset()

    def reset(self) -> None:
        """Forget every sample."""
        self._counts[:] = itertools.repeat(0, len(self._counts))
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf

    @property
    def bucket_count(self) -> int:
        """Number of counters held; fixed at construction."""
        return len(self._counts)

    @property
    def precision(self) -> float:
        return self._precision

    @property
    def count(self) -> int:
        return self._count

    @property
    def min(self) -> float | None:
        return self._min if self._count else None

    @property
    def max(self) -> float | None:
        return self._max if self._count else None

    @property
    def mean(self) -> float | None:
        return self._sum / self._count if self._count else None

    def record(self, seconds: float) -> None:
        """Add one sample."""
        self.record_many((seconds,))

    def record_many(self, samples: Iterable[float]) -> None:
        """Add every sample in ``samples``."""
        counts, lowest, highest, top = self._counts, self._lowest, self._highest, self._n
        log, scale = math.log, 1 / self._log_growth
        count, total, low, high = self._count, self._sum, self._min, self._max
        try:
            for sample in samples:
                if lowest <= sample < highest:
                    value, index = sample, min(top, int(log(sample / lowest) * scale) + 1)
                elif sample < lowest:
                    if sample == -math.inf:
                        continue
                    value, index = max(sample, 0.0), 0
                elif sample < math.inf:
                    value, index = sample, top + 1
                else:  # NaN or +inf
                    continue
                counts[index] += 1
                count += 1
                total += value
                low = min(low, value)
                high = max(high, value)
        finally:
            self._count, self._sum, self._min, self._max = count, total, low, high

    def percentile(self, p: float) -> float | None:
        """Nearest-rank ``p``-th percentile (``p`` in 0..100) in seconds; None if empty."""
        return self.percentiles(p)[0]

    def percentiles(self, *ps: float) -> list[float | None]:
        """:meth:`percentile` of each of ``ps``, summing the buckets once."""
        for p in ps:
            if not 0 <= p <= 100:
                raise ValueError(f"percentile must be within 0..100, got {p!r}")
        if not self._count:
            return [None] * len(ps)
        cumulative: list[int] | None = None
        result: list[float | None] = []
        for p in ps:
            rank = max(1, math.ceil(p * self._count / 100))
            if rank == 1:
                result.append(self._min)
                continue
            if rank == self._count:
                result.append(self._max)
                continue
            if cumulative is None:
                cumulative = list(itertools.accumulate(self._counts))
            index = bisect.bisect_left(cumulative, rank)
            if index == 0:
                value = self._lowest / 2
            elif index > self._n:
                result.append(self._max)
                continue
            else:
                value = self._lowest * math.exp((index - 0.5) * self._log_growth)
            result.append(min(max(value, self._min), self._max))
        return result

    def snapshot(self) -> dict[str, Any]:
        """``{count, p50, p90, p99, max, mean}``; times in seconds, None while empty."""
        p50, p90, p99 = self.percentiles(50, 90, 99)
        return {"count": self._count, "p50": p50, "p90": p90, "p99": p99, "max": self.max,
                "mean": self.mean}

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s samples to this one; both must have the same bucket layout."""
        if (other._lowest, other._highest, other._precision) != (
                self._lowest, self._highest, self._precision):
            raise ValueError("cannot merge LatencyHistograms with different bucket layouts")
        self._counts = [a + b for a, b in zip(self._counts, other._counts, strict=True)]
        self._count += other._count
        self._sum += other._sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)


class RateMeter:
    """Throughput over the last ``window`` seconds, kept in ``slots`` fixed time slices.

    ``rate(now)`` is the count in the slice holding ``now`` and the ``slots - 1`` before it,
    divided by ``window``; that slice is still filling, so the rate may read up to one slice
    (``1 / slots``) low.
    Adds dated before the oldest slice still held count toward ``total`` only.
    """

    def __init__(self, window: float, slots: int = 10) -> None:
        if not window > 0 or slots < 1:
            raise ValueError("RateMeter needs window > 0 and slots >= 1")
        self._window = window
        self._width = window / slots
        self._ids = [_NEVER] * slots
        self._counts = [0] * slots
        self._total = 0

    @property
    def window(self) -> float:
        return self._window

    @property
    def total(self) -> int:
        """Everything ever added."""
        return self._total

    def add(self, n: int, now: float) -> None:
        """Count ``n`` (>= 0) occurrences at time ``now``."""
        if n < 0:
            raise ValueError(f"RateMeter.add needs n >= 0, got {n!r}")
        self._total += n
        slice_id = math.floor(now / self._width)
        slot = slice_id % len(self._ids)
        if self._ids[slot] != slice_id:
            if self._ids[slot] > slice_id:
                return  # older than anything this slot remembers
            self._ids[slot] = slice_id
            self._counts[slot] = 0
        self._counts[slot] += n

    def rate(self, now: float) -> float:
        """Occurrences per second over the last ``window`` seconds before ``now``."""
        current = math.floor(now / self._width)
        oldest = current - len(self._ids)
        held = sum(count for slice_id, count in zip(self._ids, self._counts, strict=True)
                   if oldest < slice_id <= current)
        return held / self._window


class MessageStats:
    """Message counts and bytes per type name and direction (``"in"`` or ``"out"``).

    At most ``max_types`` names per direction are kept (names cut to 64 characters); later
    ones are counted under ``OTHER``, so hostile input cannot grow memory.
    """

    DIRECTIONS = ("in", "out")

    def __init__(self, max_types: int = 64) -> None:
        self._max_types = max_types
        self._tables: dict[str, dict[str, list[int]]] = {d: {} for d in self.DIRECTIONS}
        self._totals: dict[str, list[int]] = {d: [0, 0] for d in self.DIRECTIONS}

    def record(self, type_name: str, direction: str, size: int, n: int = 1) -> None:
        """Count ``n`` messages of ``type_name`` that took ``size`` bytes in all."""
        table = self._tables.get(direction)
        if table is None:
            raise ValueError(f"direction must be 'in' or 'out', got {direction!r}")
        key = _bounded_key(table, type_name, self._max_types)
        entry = table.get(key)
        if entry is None:
            entry = table[key] = [0, 0]
        entry[0] += n
        entry[1] += size
        total = self._totals[direction]
        total[0] += n
        total[1] += size

    def record_batch(self, batch: Iterable[tuple[str, str, int]]) -> tuple[int, int]:
        """Count one message per ``(type_name, direction, size)``; return ``(n_in, n_out)``."""
        summed: dict[tuple[str, str], list[int]] = {}
        for type_name, direction, size in batch:
            entry = summed.get((type_name, direction))
            if entry is None:
                summed[type_name, direction] = [1, size]
            else:
                entry[0] += 1
                entry[1] += size
        counted = {"in": 0, "out": 0}
        for (type_name, direction), (n, size) in summed.items():
            self.record(type_name, direction, size, n)
            counted[direction] += n
        return counted["in"], counted["out"]

    def snapshot(self) -> dict[str, Any]:
        """``{"in": {name: {count, bytes}}, "out": {...}, "total": {in_count, in_bytes,
        out_count, out_bytes}}``, names sorted."""
        result: dict[str, Any] = {
            d: {name: {"count": c, "bytes": b} for name, (c, b) in sorted(table.items())}
            for d, table in self._tables.items()}
        result["total"] = {f"{d}_{field}": value for d, (count, size) in self._totals.items()
                           for field, value in (("count", count), ("bytes", size))}
        return result


class Counters:
    """Named integer counters; at most ``max_keys`` names, later ones counted as ``OTHER``."""

    def __init__(self, max_keys: int = 256) -> None:
        self._max_keys = max_keys
        self._values: dict[str, int] = {}

    def incr(self, name: str, n: int = 1) -> None:
        key = _bounded_key(self._values, name, self._max_keys)
        self._values[key] = self._values.get(key, 0) + n

    def get(self, name: str) -> int:
        return self._values.get(name, 0)

    def __len__(self) -> int:
        return len(self._values)

    def snapshot(self) -> dict[str, int]:
        """A copy, names sorted."""
        return dict(sorted(self._values.items()))


class InstanceSamples:
    """Latest resource sample per live instance; the caller removes instances that end."""

    def __init__(self) -> None:
        self._samples: dict[str, dict[str, Any]] = {}

    def update(self, instance_id: str, cpu_percent: float, rss: int, num_fds: int,
               now: float, usage: Mapping[str, Any] | None = None) -> None:
        """Replace ``instance_id``'s sample with one taken at ``now``; ``usage`` adds
        ``cpu_seconds``, ``memory_bytes``, ``memory_peak_bytes``, ``pids`` and ``source``
        (``"cgroup"`` or ``"psutil"``)."""
        self._samples[instance_id] = {"cpu_percent": cpu_percent, "rss": rss,
                                      "num_fds": num_fds, "sampled_at": now,
                                      "cpu_seconds": None, **(usage or {})}

    def remove(self, instance_id: str) -> None:
        self._samples.pop(instance_id, None)

    def retain(self, live_ids: Collection[str]) -> None:
        """Drop the samples of every instance not in ``live_ids``."""
        for instance_id in [i for i in self._samples if i not in live_ids]:
            del self._samples[instance_id]

    def __len__(self) -> int:
        return len(self._samples)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``{instance_id: {cpu_percent, rss, num_fds, sampled_at, cpu_seconds}}`` (copies, ids
        sorted)."""
        return {i: dict(sample) for i, sample in sorted(self._samples.items())}


class MetricsRegistry:
    """Everything ``SpearSystem.metrics()`` reports, composed of the structures above.

    ``snapshot(now)`` returns::

        messages         MessageStats.snapshot(): per type and direction count and bytes,
                         and "total": {in_count, in_bytes, out_count, out_bytes}
        errors           {code: count} from error(code)
        connections      {connection_id: {instance_id, last_activity, messages: {in, out:
                         {TYPE: {count, bytes}}}, processing_time: {p50, p99, max}}}: every
                         live connection and the last 256 closed ones (breakdown.py)
        connection_totals {"active", "pending"}: gauges from set_connection_counts();
                         {"total_opened", "total_closed"}: counts since start
        auth_failures    failed authentications since start
        restarts         instance restarts since start
        execute_latency  {count, p50, p90, p99, max, mean}: seconds since start, None if empty
        throughput       {"messages_in_per_s", "messages_out_per_s", "executes_per_s"} over the
                         last "window_s" seconds before now
        instances        {instance_id: {cpu_percent, rss, num_fds, sampled_at, cpu_seconds,
                                        memory_bytes, memory_peak_bytes, pids, source}
                         (while sampled), "latency": {queue, transport, handler: {p50, p99,
                         max}} (once it answered)}
        execute_histogram {task: {buckets: [[le, cumulative count]...], sum, count}}
        counters         {name: count} from count(name), e.g. late_replies_dropped
        events           {"recorded": appended since start, "dropped": evicted from the ring}
    """

    def __init__(self, event_capacity: int = 10_000, rate_window: float = 10.0) -> None:
        self.events = EventLog(event_capacity)
        self.messages = MessageStats()
        self.errors = Counters()
        self.counters = Counters()
        self.execute_latency = LatencyHistogram()
        self.instances = InstanceSamples()
        self.messages_in = RateMeter(rate_window)
        self.messages_out = RateMeter(rate_window)
        self.executes = RateMeter(rate_window)
        from .breakdown import ConnectionTable, InstanceLatencies, TaskHistograms

        self.connection_table: ConnectionTable = ConnectionTable()
        self.instance_latency: InstanceLatencies = InstanceLatencies()
        self.task_histograms: TaskHistograms = TaskHistograms()
        self.connections_active = 0
        self.connections_pending = 0
        self.connections_opened = 0
        self.connections_closed = 0
        self.auth_failures = 0
        self.restarts = 0

    def record_event(self, kind: str, data: Mapping[str, Any], now: float) -> Event:
        """Append one event (secrets redacted) to the ring."""
        return self.events.append(kind, data, now)

    def record_messages(self, batch: Iterable[tuple[str, str, int]], now: float) -> None:
        """Count a batch of ``(type_name, direction, size)`` messages seen at ``now``."""
        n_in, n_out = self.messages.record_batch(batch)
        self.messages_in.add(n_in, now)
        self.messages_out.add(n_out, now)

    def record_execute_latencies(self, seconds: Iterable[float], now: float) -> None:
        """Record completed executes' round-trip times (seconds), finished by ``now``."""
        before = self.execute_latency.count
        self.execute_latency.record_many(seconds)
        self.executes.add(self.execute_latency.count - before, now)

    def connection_opened(self) -> None:
        self.connections_opened += 1

    def connection_closed(self) -> None:
        self.connections_closed += 1

    def set_connection_counts(self, active: int, pending: int) -> None:
        """Report how many connections are authenticated (active) and awaiting auth now."""
        self.connections_active = active
        self.connections_pending = pending

    def auth_failed(self) -> None:
        self.auth_failures += 1

    def restart(self) -> None:
        self.restarts += 1

    def error(self, code: str, n: int = 1) -> None:
        """Count an error by its code (ERROR codes of section 2, or internal ones)."""
        self.errors.incr(code, n)

    def count(self, name: str, n: int = 1) -> None:
        """Bump a miscellaneous named counter (e.g. ``late_replies_dropped``)."""
        self.counters.incr(name, n)

    def sample_instance(self, instance_id: str, cpu_percent: float, rss: int, num_fds: int,
                        now: float, usage: Mapping[str, Any] | None = None) -> None:
        self.instances.update(instance_id, cpu_percent, rss, num_fds, now, usage)

    def remove_instance(self, instance_id: str) -> None:
        self.instances.remove(instance_id)

    def _instances_snapshot(self) -> dict[str, dict[str, Any]]:
        result = self.instances.snapshot()
        for instance_id, latency in self.instance_latency.snapshot().items():
            result.setdefault(instance_id, {})["latency"] = latency
        return result

    def snapshot(self, now: float) -> dict[str, Any]:
        """The nested metrics dict described in the class docstring (fresh copies)."""
        return {
            "messages": self.messages.snapshot(),
            "errors": self.errors.snapshot(),
            "connections": self.connection_table.snapshot(),
            "connection_totals": {"active": self.connections_active,
                                  "pending": self.connections_pending,
                                  "total_opened": self.connections_opened,
                                  "total_closed": self.connections_closed},
            "auth_failures": self.auth_failures,
            "restarts": self.restarts,
            "execute_latency": self.execute_latency.snapshot(),
            "throughput": {"messages_in_per_s": self.messages_in.rate(now),
                           "messages_out_per_s": self.messages_out.rate(now),
                           "executes_per_s": self.executes.rate(now),
                           "window_s": self.executes.window},
            "instances": self._instances_snapshot(),
            "execute_histogram": self.task_histograms.snapshot(),
            "counters": self.counters.snapshot(),
            "events": {"recorded": self.events.last_seq, "dropped": self.events.dropped},
        }
