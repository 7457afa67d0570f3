"""``spear-actors metrics`` without --json: a table a person reads (MiB, %, ms, rates)."""

from __future__ import annotations

from spear_actors.cli.metrics_table import render_metrics
from spear_actors.metrics import MetricsRegistry


def test_table_shows_units_rates_and_every_section() -> None:
    reg = MetricsRegistry()
    reg.record_messages([("HEARTBEAT", "in", 20), ("EXECUTE_REQUEST", "out", 3 << 20)],
                        now=100.0)
    reg.record_execute_latencies([0.0012, 0.0034], now=100.0)
    reg.sample_instance("echo-1", 12.345, 48 << 20, 9, now=100.0,
                        usage={"cpu_seconds": 1.5})
    reg.instance_latency.record("echo-1", [0.0001], [0.0011], [0.00002])
    reg.connection_table.opened("conn-1", 99.0)
    reg.connection_table.authenticated("conn-1", "echo-1", 99.0)
    reg.set_connection_counts(1, 0)
    text = render_metrics(reg.snapshot(now=100.5), now=101.0)

    assert "2 executed, 0.2 req/s over the last 10 s" in text
    assert "p50 1.20" in text and "max 3.40" in text
    assert "1 active, 0 pending" in text
    lines = text.splitlines()
    row = next(line for line in lines if line.strip().startswith("echo-1")
               and "12.3" in line)
    assert row.split()[1:5] == ["12.3", "48.0", "9", "1.50"]  # cpu %, rss MiB, fds, cpu s
    assert "1.10/1.10" in row  # transport p50/p99 in ms
    assert any("EXECUTE_REQUEST" in line and "3.0 MiB" in line for line in lines)
    conn = next(line for line in lines if line.strip().startswith("conn-1"))
    assert "echo-1" in conn and "2.0 s" in conn  # idle since its last activity
    assert "{" not in text  # no raw JSON
