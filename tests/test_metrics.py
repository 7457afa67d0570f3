"""Tests for spear_actors.metrics: bounded rings, histograms, rates and the registry snapshot."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spear_actors.metrics import (
    OTHER,
    REDACTED,
    Counters,
    EventLog,
    InstanceSamples,
    LatencyHistogram,
    MessageStats,
    MetricsRegistry,
    RateMeter,
    redact,
)

# ---------------------------------------------------------------- EventLog


def test_eviction_keeps_seq_monotonic_and_counts_dropped() -> None:
    log = EventLog(3)
    events = [log.append("Connected", {"i": i}, now=100.0 + i) for i in range(5)]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert len(log) == 3 and log.dropped == 2 and log.last_seq == 5
    kept = log.recent(limit=None)
    assert [e.seq for e in kept] == [3, 4, 5]
    assert [e.data["i"] for e in kept] == [2, 3, 4]
    assert [e.time for e in kept] == [102.0, 103.0, 104.0]
    # seq is never reused after eviction
    assert log.append("Disconnected", {}, now=200.0).seq == 6
    assert log.dropped == 3


def test_extend_records_a_batch_at_one_time() -> None:
    log = EventLog(10)
    assert log.extend([("MessageReceived", {"n": 1}), ("MessageSent", {"n": 2})], now=5.0) == 2
    assert [(e.seq, e.kind, e.time) for e in log.recent()] == [
        (1, "MessageReceived", 5.0), (2, "MessageSent", 5.0)]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        EventLog(0)


def test_recent_filters_and_limits() -> None:
    log = EventLog(100)
    for i in range(10):
        log.append("Error" if i % 3 == 0 else "MessageSent", {"i": i}, now=float(i))
    # most recent `limit`, oldest first
    assert [e.seq for e in log.recent(limit=4)] == [7, 8, 9, 10]
    assert [e.seq for e in log.recent(kinds={"Error"})] == [1, 4, 7, 10]
    assert [e.seq for e in log.recent(limit=2, kinds=["Error"])] == [7, 10]
    assert [e.seq for e in log.recent(kinds="Error")] == [1, 4, 7, 10]  # a str is one kind
    assert [e.seq for e in log.recent(since_seq=7)] == [8, 9, 10]
    assert [e.seq for e in log.recent(since_seq=3, kinds={"Error"}, limit=1)] == [10]
    assert log.recent(limit=0) == []
    assert log.recent(kinds=set()) == []
    assert len(log.recent(limit=None)) == 10
    assert [e.seq for e in log.recent()] == list(range(1, 11))  # default limit 100


def test_event_data_is_an_immutable_copy() -> None:
    log = EventLog(10)
    data = {"instance_id": "i-1", "nested": {"code": 1}, "items": [1, 2]}
    event = log.append("InstanceExited", data, now=1.0)
    data["instance_id"] = "changed"
    data["nested"]["code"] = 99  # type: ignore[index]
    data["items"].append(3)  # type: ignore[attr-defined]
    assert event.data["instance_id"] == "i-1"
    assert event.data["nested"]["code"] == 1
    assert event.data["items"] == (1, 2)
    with pytest.raises(TypeError):
        event.data["instance_id"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        event.data["nested"]["code"] = 2
    assert log.recent()[0].data["instance_id"] == "i-1"


def test_secrets_are_redacted() -> None:
    log = EventLog(10)
    event = log.append("AuthenticationFailed", {
        "instance_id": "i-1", "token": "hunter2hunter2", "SPEAR_SECRET": "s3cr3t",
        "Password": "pw", "extra": {"curve_secret_key": "k", "ok": "v"},
        "list": [{"auth_token": "t"}], "reason": "bad"}, now=1.0)
    assert event.data["token"] == REDACTED
    assert event.data["SPEAR_SECRET"] == REDACTED
    assert event.data["Password"] == REDACTED
    assert event.data["extra"] == {"curve_secret_key": REDACTED, "ok": "v"}
    assert event.data["list"][0]["auth_token"] == REDACTED
    assert event.data["instance_id"] == "i-1" and event.data["reason"] == "bad"
    assert "hunter2" not in repr(log.recent())
    assert dict(redact({"session_token": None, "a": 1})) == {"session_token": REDACTED, "a": 1}


# ---------------------------------------------------------------- LatencyHistogram


def nearest_rank(sorted_values: list[float], p: float) -> float:
    rank = max(1, math.ceil(p * len(sorted_values) / 100))
    return sorted_values[rank - 1]


latencies = st.one_of(
    st.floats(min_value=1e-6, max_value=999.0),
    st.floats(min_value=0.0, max_value=1e-6),
    st.floats(min_value=1e-4, max_value=1e-2),  # where real round trips live
)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(latencies, min_size=1, max_size=400),
       ps=st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=5))
def test_percentiles_within_bucket_precision(values: list[float], ps: list[float]) -> None:
    hist = LatencyHistogram()
    hist.record_many(values)
    exact = sorted(values)
    for p in [*ps, 0, 50, 90, 99, 100]:
        got = hist.percentile(p)
        want = nearest_rank(exact, p)
        assert got is not None
        assert abs(got - want) <= want * (hist.precision + 1e-9) + 1e-6, (p, got, want)
    assert hist.count == len(values)
    assert hist.min == exact[0] and hist.max == exact[-1]
    assert hist.mean == pytest.approx(sum(values) / len(values))


def test_percentile_error_is_bucket_sized_not_range_sized() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(math.log(1e-4), 1.0) for _ in range(20_000)]
    hist = LatencyHistogram()
    hist.record_many(values)
    exact = sorted(values)
    for p in (1, 25, 50, 75, 90, 99, 99.9):
        want = nearest_rank(exact, p)
        assert hist.percentile(p) == pytest.approx(want, rel=0.01 + 1e-9)


def test_histogram_memory_is_constant() -> None:
    hist = LatencyHistogram()
    buckets = hist.bucket_count
    assert 200 <= buckets <= 2000
    rng = random.Random(1)
    hist.record_many(rng.expovariate(1000) for _ in range(100_000))
    hist.record_many([1e-9, 5000.0, 0.0])
    assert hist.count == 100_003
    assert hist.bucket_count == buckets
    assert len(hist._counts) == buckets
    assert sum(hist._counts) == hist.count


def test_histogram_empty_out_of_range_and_bad_input() -> None:
    hist = LatencyHistogram()
    assert hist.percentile(50) is None
    assert hist.snapshot() == {"count": 0, "p50": None, "p90": None, "p99": None,
                               "max": None, "mean": None}
    with pytest.raises(ValueError):
        hist.percentile(101)
    hist.record_many([math.nan, math.inf, -math.inf])
    assert hist.count == 0
    hist.record(-0.5)  # a clock that stepped back counts as 0
    assert hist.min == 0.0
    hist.record_many([2000.0, 3000.0, 4000.0])
    assert hist.percentile(50) == 4000.0  # overflow bucket reports max
    assert hist.percentile(100) == 4000.0


def test_histogram_snapshot_reset_and_merge() -> None:
    a, b, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    a.record_many([0.001] * 90 + [0.1] * 10)
    b.record_many([0.002] * 50)
    both.record_many([0.001] * 90 + [0.1] * 10 + [0.002] * 50)
    snap = a.snapshot()
    assert set(snap) == {"count", "p50", "p90", "p99", "max", "mean"}
    assert snap["count"] == 100 and snap["max"] == 0.1
    assert snap["p50"] == pytest.approx(0.001, rel=0.01)
    assert snap["p90"] == pytest.approx(0.001, rel=0.01)
    assert snap["p99"] == pytest.approx(0.1, rel=0.01)
    assert snap["mean"] == pytest.approx((0.09 + 1.0) / 100)
    a.merge(b)
    assert a.snapshot() == both.snapshot()
    assert a.min == 0.001
    with pytest.raises(ValueError):
        a.merge(LatencyHistogram(precision=0.02))
    a.reset()
    assert a.count == 0 and a.max is None and sum(a._counts) == 0


# ---------------------------------------------------------------- RateMeter


def test_rate_over_window_with_explicit_now() -> None:
    meter = RateMeter(window=10.0)  # ten 1-second slices
    assert meter.rate(0.0) == 0.0
    meter.add(10, now=100.2)
    meter.add(20, now=104.7)
    meter.add(30, now=109.9)
    assert meter.rate(109.9) == pytest.approx(6.0)
    assert meter.rate(110.5) == pytest.approx(5.0)  # slice [100, 101) left the window
    assert meter.rate(113.99) == pytest.approx(5.0)
    assert meter.rate(114.0) == pytest.approx(3.0)  # slice [104, 105) left the window
    assert meter.rate(118.99) == pytest.approx(3.0)
    assert meter.rate(119.0) == 0.0
    assert meter.total == 60


def test_rate_slot_reuse_and_stale_adds() -> None:
    meter = RateMeter(window=1.0, slots=4)
    for i in range(1000):  # constant memory: slots are reused
        meter.add(1, now=i * 0.25)
    assert len(meter._counts) == 4
    assert meter.rate(999 * 0.25) == pytest.approx(4.0)
    meter.add(100, now=0.0)  # far older than every slot: total only
    assert meter.rate(999 * 0.25) == pytest.approx(4.0)
    assert meter.total == 1100
    with pytest.raises(ValueError):
        meter.add(-1, now=1.0)
    with pytest.raises(ValueError):
        RateMeter(window=0)


# ---------------------------------------------------------------- MessageStats and Counters


def test_message_stats_counts_bytes_and_totals() -> None:
    stats = MessageStats()
    stats.record("HEARTBEAT", "in", 40)
    stats.record("HEARTBEAT", "in", 80, n=2)
    assert stats.record_batch([("EXECUTE_REQUEST", "out", 100), ("EXECUTE_RESPONSE", "in", 60),
                               ("HEARTBEAT", "out", 40)]) == (1, 2)
    assert stats.snapshot() == {
        "in": {"EXECUTE_RESPONSE": {"count": 1, "bytes": 60},
               "HEARTBEAT": {"count": 3, "bytes": 120}},
        "out": {"EXECUTE_REQUEST": {"count": 1, "bytes": 100},
                "HEARTBEAT": {"count": 1, "bytes": 40}},
        "total": {"in_count": 4, "in_bytes": 180, "out_count": 2, "out_bytes": 140}}
    with pytest.raises(ValueError):
        stats.record("HEARTBEAT", "sideways", 1)


def test_message_stats_key_bound() -> None:
    stats = MessageStats(max_types=64)
    for i in range(1000):
        stats.record(f"T{i}", "in", 10)
    stats.record("x" * 10_000, "out", 5)
    snap = stats.snapshot()
    assert len(snap["in"]) == 65  # 64 names + OTHER
    assert snap["in"][OTHER] == {"count": 1000 - 64, "bytes": (1000 - 64) * 10}
    assert sum(v["count"] for v in snap["in"].values()) == snap["total"]["in_count"] == 1000
    stats.record("T3", "in", 10)  # known names keep their own key
    assert stats.snapshot()["in"]["T3"]["count"] == 2
    assert all(len(name) <= 64 for name in snap["out"])


def test_counters_bound() -> None:
    counters = Counters(max_keys=3)
    for name in ["a", "b", "a", "c", "d", "e"]:
        counters.incr(name)
    counters.incr("b", 5)
    assert counters.snapshot() == {"a": 2, "b": 6, "c": 1, OTHER: 2}
    assert counters.get("a") == 2 and counters.get("zzz") == 0
    assert len(counters) == 4


def test_instance_samples() -> None:
    samples = InstanceSamples()
    samples.update("i-1", 12.5, 1 << 20, 9, now=1.0)
    samples.update("i-1", 20.0, 2 << 20, 10, now=2.0)
    samples.update("i-2", 1.0, 100, 5, now=2.0)
    snap = samples.snapshot()
    assert snap["i-1"] == {"cpu_percent": 20.0, "rss": 2 << 20, "num_fds": 10, "sampled_at": 2.0,
                           "cpu_seconds": None}
    snap["i-1"]["rss"] = 0
    assert samples.snapshot()["i-1"]["rss"] == 2 << 20
    samples.remove("i-1")
    samples.remove("missing")
    assert list(samples.snapshot()) == ["i-2"]
    samples.update("i-3", 0.0, 1, 1, now=3.0)
    samples.retain({"i-3"})
    assert list(samples.snapshot()) == ["i-3"] and len(samples) == 1


# ---------------------------------------------------------------- MetricsRegistry


def test_registry_snapshot_after_scripted_sequence() -> None:
    reg = MetricsRegistry(event_capacity=3, rate_window=10.0)
    for _ in range(3):
        reg.connection_opened()
    reg.connection_closed()
    reg.set_connection_counts(active=1, pending=1)
    reg.auth_failed()
    reg.auth_failed()
    reg.restart()
    reg.error("bad_message")
    reg.error("bad_message")
    reg.error("timeout")
    reg.count("late_replies_dropped")
    reg.record_messages([("AUTH_REQUEST", "in", 90), ("AUTH_RESPONSE", "out", 70),
                         ("HEARTBEAT", "in", 20), ("HEARTBEAT", "out", 20),
                         ("INVALID", "in", 5)], now=100.5)
    reg.record_messages([("EXECUTE_REQUEST", "out", 30)] * 10, now=101.5)
    reg.record_execute_latencies([0.001] * 9 + [0.01], now=101.5)
    reg.sample_instance("i-1", 3.5, 50_000_000, 12, now=101.0)
    reg.sample_instance("i-2", 0.0, 10, 3, now=101.0)
    reg.remove_instance("i-2")
    for i in range(5):
        reg.record_event("InstanceCreated", {"instance_id": f"i-{i}", "token": "x"}, now=100.0)

    snap = reg.snapshot(now=105.0)
    assert set(snap) == {"messages", "errors", "connections", "connection_totals",
                         "auth_failures", "restarts", "execute_latency", "throughput",
                         "instances", "execute_histogram", "counters", "events"}
    assert snap["messages"] == {
        "in": {"AUTH_REQUEST": {"count": 1, "bytes": 90}, "HEARTBEAT": {"count": 1, "bytes": 20},
               "INVALID": {"count": 1, "bytes": 5}},
        "out": {"AUTH_RESPONSE": {"count": 1, "bytes": 70},
                "EXECUTE_REQUEST": {"count": 10, "bytes": 300},
                "HEARTBEAT": {"count": 1, "bytes": 20}},
        "total": {"in_count": 3, "in_bytes": 115, "out_count": 12, "out_bytes": 390}}
    assert snap["errors"] == {"bad_message": 2, "timeout": 1}
    assert snap["connection_totals"] == {"active": 1, "pending": 1, "total_opened": 3,
                                         "total_closed": 1}
    assert snap["connections"] == {}
    assert snap["auth_failures"] == 2
    assert snap["restarts"] == 1
    lat = snap["execute_latency"]
    assert set(lat) == {"count", "p50", "p90", "p99", "max", "mean"}
    assert lat["count"] == 10 and lat["max"] == 0.01
    assert lat["p50"] == pytest.approx(0.001, rel=0.01)
    assert lat["p90"] == pytest.approx(0.001, rel=0.01)
    assert lat["p99"] == 0.01
    assert lat["mean"] == pytest.approx(0.0019)
    assert snap["throughput"] == {"messages_in_per_s": pytest.approx(0.3),
                                  "messages_out_per_s": pytest.approx(1.2),
                                  "executes_per_s": pytest.approx(1.0), "window_s": 10.0}
    assert snap["instances"] == {"i-1": {"cpu_percent": 3.5, "rss": 50_000_000, "num_fds": 12,
                                         "sampled_at": 101.0, "cpu_seconds": None}}
    assert snap["counters"] == {"late_replies_dropped": 1}
    assert snap["events"] == {"recorded": 5, "dropped": 2}
    assert [e.data["instance_id"] for e in reg.events.recent()] == ["i-2", "i-3", "i-4"]
    assert all(e.data["token"] == REDACTED for e in reg.events.recent())

    # throughput is over the last window only
    later = reg.snapshot(now=110.0)["throughput"]
    assert later["messages_in_per_s"] == 0.0
    assert later["messages_out_per_s"] == pytest.approx(1.0)
    assert reg.snapshot(now=200.0)["throughput"]["executes_per_s"] == 0.0
    # snapshots are copies
    snap["errors"]["bad_message"] = 0
    snap["messages"]["in"]["HEARTBEAT"]["count"] = 0
    again = reg.snapshot(now=105.0)
    assert again["errors"]["bad_message"] == 2
    assert again["messages"]["in"]["HEARTBEAT"]["count"] == 1


def test_registry_memory_bounded_by_churn() -> None:
    reg = MetricsRegistry(event_capacity=100)
    for i in range(5000):
        reg.connection_opened()
        reg.record_event("Connected", {"connection_id": f"c{i}"}, now=float(i))
        reg.record_messages([(f"junk{i}", "in", 1)], now=float(i))
        reg.error(f"code{i}")
        reg.sample_instance(f"i{i}", 0.0, 0, 0, now=float(i))
        reg.remove_instance(f"i{i}")
        reg.connection_closed()
    snap = reg.snapshot(now=5000.0)
    assert len(reg.events) == 100 and snap["events"] == {"recorded": 5000, "dropped": 4900}
    assert len(snap["messages"]["in"]) <= 65
    assert len(snap["errors"]) <= 257
    assert snap["instances"] == {}
    totals = snap["connection_totals"]
    assert totals["total_opened"] == totals["total_closed"] == 5000
