"""Per-connection, per-instance and per-task breakdowns stay bounded and add up."""

from __future__ import annotations

import math

import pytest

from spear_actors.breakdown import (
    EXECUTE_BUCKETS,
    ConnectionTable,
    InstanceLatencies,
    TaskHistograms,
)
from spear_actors.metrics import OTHER


def test_connection_table_keeps_live_ones_and_the_last_closed_ones() -> None:
    table = ConnectionTable(keep_closed=3, max_live=50)
    for i in range(1000):  # churn: connections come and go
        cid = f"c{i}"
        table.opened(cid, float(i))
        table.authenticated(cid, f"i{i % 7}", float(i))
        table.record(cid, "HEARTBEAT", "in", 20, 2, float(i))
        table.closed(cid)
    table.opened("live", 5.0)
    table.authenticated("live", "i-live", 5.0)
    assert len(table) == 4
    snap = table.snapshot()
    assert list(snap) == ["c997", "c998", "c999", "live"]
    assert snap["c999"]["messages"]["in"] == {"HEARTBEAT": {"count": 2, "bytes": 20}}
    assert table.connection_of("i-live") == "live" and table.connection_of("i0") is None
    for i in range(200):  # even live ones are capped
        table.opened(f"x{i}", 0.0)
    assert len(table) <= 53


def test_executes_count_on_the_instance_connection() -> None:
    table = ConnectionTable()
    table.opened("c1", 1.0)
    table.authenticated("c1", "inst", 1.0)
    table.record_executes("inst", 3, 300, 2, 200, [0.001, 0.002], 9.0)
    table.record_executes("nobody", 1, 1, 1, 1, [1.0], 9.0)  # unknown: ignored
    c1 = table.snapshot()["c1"]
    assert c1["instance_id"] == "inst" and c1["last_activity"] == 9.0
    assert c1["messages"] == {"in": {"EXECUTE_RESPONSE": {"count": 2, "bytes": 200}},
                              "out": {"EXECUTE_REQUEST": {"count": 3, "bytes": 300}}}
    assert c1["processing_time"]["max"] == 0.002
    assert c1["processing_time"]["p50"] == pytest.approx(0.001, rel=0.06)


def test_instance_latencies_split_and_bound() -> None:
    lat = InstanceLatencies(max_instances=2)
    lat.record("a", [0.01], [0.002], [0.0005])
    lat.record("b", [], [], [])
    lat.record("c", [0.1], [], [])
    snap = lat.snapshot()
    assert list(snap) == ["b", "c"]
    assert snap["c"]["queue"]["max"] == 0.1 and snap["c"]["handler"]["p50"] is None


def test_task_histograms_are_cumulative_with_inf_and_bounded() -> None:
    h = TaskHistograms(max_tasks=1)
    h.record("echo", [0.0005, 0.0007, 0.3, 100.0, math.nan])
    h.record("other", [0.01])
    snap = h.snapshot()
    assert set(snap) == {"echo", OTHER}
    echo = snap["echo"]
    assert echo["count"] == 4 and echo["sum"] == pytest.approx(100.3012)
    bounds = [b for b, _ in echo["buckets"]]
    assert bounds == list(EXECUTE_BUCKETS)  # +Inf is the count
    counts = dict((b, n) for b, n in echo["buckets"])
    assert counts[0.0005] == 1 and counts[0.001] == 2 and counts[0.25] == 2
    assert counts[0.5] == 3 and counts[30.0] == 3


def test_a_new_connection_of_an_instance_retires_its_old_one() -> None:
    """Superseded, or lost without a Disconnected when the connection service restarted."""
    table = ConnectionTable()
    table.opened("c1", 1.0)
    table.authenticated("c1", "inst", 1.0)
    table.opened("c2", 2.0)
    table.authenticated("c2", "inst", 2.0)
    assert table.connection_of("inst") == "c2"
    assert list(table.snapshot()) == ["c1", "c2"]  # c1 closed (listed first), c2 live
    table.record_executes("inst", 1, 10, 1, 10, [], 3.0)
    assert "EXECUTE_REQUEST" not in table.snapshot()["c1"]["messages"]["out"]
    assert table.snapshot()["c2"]["messages"]["out"]["EXECUTE_REQUEST"]["count"] == 1
