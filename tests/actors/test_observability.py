"""DESIGN.md section 12 through a real system: per-connection metrics, the execute latency
split (queue, transport, handler), and MonitoringConfig flags that turn off the data they
name (ConnectionConfig.enable_monitoring too)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers import wait_until

from spear_actors import ConnectionConfig, MonitoringConfig, SpearSystem

from .conftest import CONNECTION
from .support import WAIT, echo

N = 25
PERCENTILES = {"p50", "p99", "max"}


def run_load(system: SpearSystem) -> str:
    iid = system.create_instance("echo", echo())
    system.wait_ready(iid, WAIT)
    for i in range(N):
        assert system.execute("echo", b"%d" % i, timeout=5) == b"%d" % i
    return iid


def settled(system: SpearSystem) -> dict[str, Any]:
    """metrics() after everything the manager tallied so far reached the monitor: the first
    call's GetTaskStats makes the manager report before it answers; the second reads it."""
    system.metrics()
    return system.metrics()


def connection_of(m: dict[str, Any], iid: str) -> dict[str, Any] | None:
    found = [c for c in m["connections"].values() if c["instance_id"] == iid]
    return found[-1] if found else None


def test_per_connection_counts_processing_time_and_latency_split(
        make_system: Callable[..., SpearSystem]) -> None:
    system = make_system()
    before = time.time()
    iid = run_load(system)

    def ready() -> bool:
        conn = connection_of(settled(system), iid)
        return conn is not None and conn["messages"]["in"].get(
            "EXECUTE_RESPONSE", {}).get("count", 0) >= N

    wait_until(ready, WAIT, message="the executes counted on the instance's connection")
    m = settled(system)
    conn = connection_of(m, iid)
    assert conn is not None and set(conn) == {"instance_id", "last_activity", "messages",
                                              "processing_time"}
    msgs = conn["messages"]
    assert msgs["out"]["EXECUTE_REQUEST"]["count"] == N
    assert msgs["in"]["EXECUTE_RESPONSE"]["count"] == N
    assert msgs["in"]["EXECUTE_RESPONSE"]["bytes"] > 0
    assert msgs["in"]["AUTH_REQUEST"] == {"count": 1, "bytes": msgs["in"]["AUTH_REQUEST"]["bytes"]}
    assert msgs["out"]["AUTH_RESPONSE"]["count"] == 1
    assert before <= conn["last_activity"] <= time.time()
    pt = conn["processing_time"]
    assert set(pt) == PERCENTILES and 0 <= pt["p50"] <= pt["p99"] <= pt["max"] < 1.0

    latency = m["instances"][iid]["latency"]
    assert set(latency) == {"queue", "transport", "handler"}
    for part in latency.values():
        assert set(part) == PERCENTILES and 0 <= part["p50"] <= part["p99"] <= part["max"]
    # the echo handler is far quicker than a round trip through two processes
    assert latency["handler"]["p50"] < latency["transport"]["p50"]
    histogram = m["execute_histogram"]["echo"]
    assert histogram["count"] == N and histogram["buckets"][-1] == [30.0, N]
    assert m["connection_totals"]["active"] == 1

    # a closed connection stays listed (bounded: the last 256 closed ones)
    connection_id = next(cid for cid, c in m["connections"].items()
                         if c["instance_id"] == iid)
    system.stop_instance(iid)
    wait_until(lambda: system.metrics()["connection_totals"]["active"] == 0, WAIT)
    assert connection_id in system.metrics()["connections"]


def totals(m: dict[str, Any]) -> int:
    t = m["messages"]["total"]
    return int(t["in_count"] + t["out_count"])


@pytest.mark.parametrize("flag", ["enabled", "enable_connection_tracking",
                                  "enable_message_tracking", "enable_performance_tracking",
                                  "connection.enable_monitoring"])
def test_each_flag_turns_off_the_data_it_names(make_system: Callable[..., SpearSystem],
                                               flag: str) -> None:
    if flag.startswith("connection."):
        system = make_system(connection=ConnectionConfig(
            heartbeat_interval=CONNECTION.heartbeat_interval,
            heartbeat_timeout=CONNECTION.heartbeat_timeout, enable_monitoring=False))
    else:
        system = make_system(monitoring=MonitoringConfig(collection_interval=0.1,
                                                         **{flag: False}))
    iid = run_load(system)
    if flag != "enabled":  # something is still recorded: wait for it
        wait_until(lambda: settled(system)["throughput"]["executes_per_s"] > 0, WAIT)
    m = settled(system)
    kinds = {e.kind for e in system.events(limit=None)}

    if flag == "enabled":  # records nothing at all
        assert totals(m) == 0 and m["connections"] == {} and m["instances"] == {}
        assert m["execute_latency"]["count"] == 0 and m["execute_histogram"] == {}
        assert m["events"]["recorded"] == 0 and not kinds
        assert m["connection_totals"]["total_opened"] == 0
        assert m["throughput"]["executes_per_s"] == 0
        return
    if flag == "enable_connection_tracking":
        assert m["connections"] == {}
        assert not kinds & {"Connected", "Authenticated"}
        assert totals(m) >= 2 * N and m["execute_latency"]["count"] == N
    elif flag == "enable_message_tracking":
        assert totals(m) == 0 and not kinds & {"MessageReceived", "MessageSent"}
        conn = connection_of(m, iid)
        assert conn is not None and conn["messages"] == {"in": {}, "out": {}}
        assert conn["processing_time"]["p50"] is not None
        assert m["execute_latency"]["count"] == N
    elif flag == "enable_performance_tracking":
        assert m["execute_latency"]["count"] == 0 and m["execute_histogram"] == {}
        assert m["instances"] == {}  # no psutil samples, no latency split
        conn = connection_of(m, iid)
        assert conn is not None and conn["processing_time"]["p50"] is None
        assert conn["messages"]["in"]["EXECUTE_RESPONSE"]["count"] == N
    else:  # ConnectionConfig.enable_monitoring=False: the connection service says nothing
        assert m["connections"] == {} and not kinds & {"Connected", "Authenticated"}
        assert "AUTH_REQUEST" not in m["messages"]["in"]
        assert m["messages"]["in"]["EXECUTE_RESPONSE"]["count"] == N  # the manager's count
        assert m["connection_totals"]["total_opened"] >= 1  # totals are still kept
