"""Prometheus text exposition of a running system (DESIGN.md section 12), with the optional
``prometheus-client`` package (``pip install 'spear-actors[prometheus]'``).

:class:`SpearCollector` is a custom collector: nothing is counted per request for Prometheus.
At each scrape it reads one ``metrics()`` snapshot and the instance list (two asks) and turns
them into metric families, so the hot path is untouched and every label set is bounded (task
ids, instance ids, states, message types and directions; never a request or connection id).

Threads: :func:`start_exporter` serves HTTP from a daemon thread of prometheus-client's
``start_http_server``; each scrape runs :meth:`SpearCollector.collect` in that thread, which
only talks to the system through its thread-safe facade.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ConfigError
from .records import InstanceInfo, InstanceState

if TYPE_CHECKING:
    import threading

__all__ = ["INSTALL_HINT", "Exporter", "SpearCollector", "require_prometheus",
           "start_exporter"]

INSTALL_HINT = "pip install 'spear-actors[prometheus]' (or: pip install prometheus-client)"


class MetricsSource(Protocol):
    """What the collector reads: a SpearSystem, or an attached handle."""

    def metrics(self) -> dict[str, Any]: ...

    def instances(self) -> list[InstanceInfo]: ...


def require_prometheus() -> None:
    """Raise ConfigError saying what to install if prometheus-client is missing."""
    try:
        found = importlib.util.find_spec("prometheus_client") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(f"--metrics-port needs the prometheus-client package: {INSTALL_HINT}")
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--metrics-port needs the prometheus-client package, which cannot "
                          f"be imported ({exc}): {INSTALL_HINT}") from exc


def _le(bound: float) -> str:
    return repr(float(bound))


class SpearCollector:
    """A prometheus-client collector reading ``source`` at scrape time."""

    def __init__(self, source: MetricsSource) -> None:
        self._source = source

    def describe(self) -> list[Any]:
        return []  # families are only known at scrape time; registering must not scrape

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        m = self._source.metrics()
        infos = self._source.instances()

        states = GaugeMetricFamily("spear_instances", "Instances by state.", labels=["state"])
        by_state = dict.fromkeys((s.value for s in InstanceState), 0)
        for info in infos:
            by_state[info.state.value] += 1
        for state, n in by_state.items():
            states.add_metric([state], n)
        yield states

        restarts = CounterMetricFamily("spear_instance_restarts",
                                       "Restarts of each instance by its supervisor.",
                                       labels=["instance", "task"])
        for info in infos:
            restarts.add_metric([info.id, info.task_id], info.restarts)
        yield restarts

        durations = HistogramMetricFamily(
            "spear_execute_duration_seconds",
            "Execute round trip, from sending the request to taking its answer.",
            labels=["task"])
        for task, h in sorted(m.get("execute_histogram", {}).items()):
            buckets = [(_le(bound), n) for bound, n in h["buckets"]]
            durations.add_metric([task], [*buckets, ("+Inf", h["count"])], sum_value=h["sum"])
        yield durations

        messages = CounterMetricFamily("spear_messages", "Protocol messages by type and "
                                       "direction.", labels=["type", "direction"])
        for direction in ("in", "out"):
            for kind, v in sorted(m["messages"].get(direction, {}).items()):
                messages.add_metric([kind, direction], v["count"])
        yield messages

        totals = m.get("connection_totals", {})
        yield GaugeMetricFamily("spear_connections_active", "Authenticated connections.",
                                value=totals.get("active", 0))
        yield CounterMetricFamily("spear_auth_failures", "Failed authentications.",
                                  value=m.get("auth_failures", 0))

        memory = GaugeMetricFamily("spear_instance_memory_bytes",
                                   "Resident memory of each instance process.",
                                   labels=["instance"])
        cpu = CounterMetricFamily("spear_instance_cpu_seconds",
                                  "CPU time (user + system) of each instance process.",
                                  labels=["instance"])
        for iid, sample in sorted(m.get("instances", {}).items()):
            if sample.get("rss") is not None:
                memory.add_metric([iid], sample["rss"])
            if sample.get("cpu_seconds") is not None:
                cpu.add_metric([iid], sample["cpu_seconds"])
        yield memory
        yield cpu


@dataclass
class Exporter:
    """A running HTTP endpoint; :meth:`close` stops it."""

    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def start_exporter(source: MetricsSource, port: int, host: str = "127.0.0.1") -> Exporter:
    """Serve ``source``'s metrics on ``host:port`` (0: any free port); loopback by default.
    Raises ConfigError if prometheus-client is missing or the port cannot be bound."""
    require_prometheus()
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SpearCollector(source))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    return Exporter(host, int(server.server_address[1]), server, thread)
