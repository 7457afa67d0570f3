"""``spear-actors metrics`` as a person reads it: sizes in MiB, shares in %, times in ms,
rates per second, one table per kind of thing. Pure formatting of a ``metrics()`` dict."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["render_metrics"]

MAX_CONNECTION_ROWS = 20
"""Live connections listed (the most recently active first); the rest are counted."""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f}"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / (1 << 20):.1f}"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned first column, right-aligned numbers."""
    widths = [max(len(str(row[i])) for row in (headers, *rows)) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        cells = [str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        return "  " + "  ".join(cells).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def _latency(latency: dict[str, Any] | None, part: str) -> str:
    if not latency:
        return "-"
    values = latency.get(part) or {}
    return f"{_ms(values.get('p50'))}/{_ms(values.get('p99'))}"


def render_metrics(m: dict[str, Any], now: float) -> str:
    """The text ``spear-actors metrics`` prints for the snapshot ``m`` taken around ``now``."""
    out: list[str] = []
    lat, tp = m["execute_latency"], m["throughput"]
    totals = m.get("connection_totals", {})
    out.append(f"requests     {lat['count']:,} executed, {tp['executes_per_s']:,.1f} req/s "
               f"over the last {tp['window_s']:.0f} s")
    out.append(f"messages     {tp['messages_in_per_s']:,.1f}/s in, "
               f"{tp['messages_out_per_s']:,.1f}/s out")
    out.append(f"latency ms   p50 {_ms(lat['p50'])}  p90 {_ms(lat['p90'])}  "
               f"p99 {_ms(lat['p99'])}  max {_ms(lat['max'])}  (send to answer)")
    out.append(f"restarts     {m['restarts']}")
    out.append(f"connections  {totals.get('active', 0)} active, {totals.get('pending', 0)} "
               f"pending, {totals.get('total_opened', 0)} opened, "
               f"{totals.get('total_closed', 0)} closed; {m['auth_failures']} auth failures")
    errors = m.get("errors") or {}
    out.append("errors       " + (", ".join(f"{code} {n}" for code, n in sorted(errors.items()))
                                  or "none"))

    instances = m.get("instances") or {}
    if instances:
        out.append("")
        out.append("instances (latency p50/p99 in ms)")
        rows = []
        for iid, s in sorted(instances.items()):
            cpu = s.get("cpu_percent")
            latency = s.get("latency")
            rows.append([iid, "-" if cpu is None else f"{cpu:.1f}", _mib(s.get("rss")),
                         str(s.get("num_fds", "-")),
                         "-" if s.get("cpu_seconds") is None else f"{s['cpu_seconds']:.2f}",
                         _latency(latency, "queue"), _latency(latency, "transport"),
                         _latency(latency, "handler")])
        out.extend(_table(["instance", "cpu %", "rss MiB", "fds", "cpu s", "queue",
                           "transport", "handler"], rows))

    messages = m.get("messages") or {}
    kinds = sorted(set(messages.get("in", {})) | set(messages.get("out", {})))
    if kinds:
        out.append("")
        out.append("messages")
        rows = []
        for kind in kinds:
            i = messages.get("in", {}).get(kind, {"count": 0, "bytes": 0})
            o = messages.get("out", {}).get(kind, {"count": 0, "bytes": 0})
            rows.append([kind, f"{i['count']:,}", _size(i["bytes"]), f"{o['count']:,}",
                         _size(o["bytes"])])
        out.extend(_table(["type", "in", "in bytes", "out", "out bytes"], rows))

    connections = m.get("connections") or {}
    if connections:
        out.append("")
        live = sorted(connections.items(), key=lambda kv: -(kv[1].get("last_activity") or 0))
        shown = live[:MAX_CONNECTION_ROWS]
        out.append("connections (most recently active first; processing p50/p99 in ms)")
        rows = []
        for cid, c in shown:
            msgs = c.get("messages", {})
            n_in = sum(v["count"] for v in msgs.get("in", {}).values())
            n_out = sum(v["count"] for v in msgs.get("out", {}).values())
            pt = c.get("processing_time") or {}
            idle = now - c["last_activity"] if c.get("last_activity") else None
            rows.append([cid, c.get("instance_id") or "-", f"{n_in:,}", f"{n_out:,}",
                         "-" if idle is None else f"{max(0.0, idle):.1f} s",
                         f"{_ms(pt.get('p50'))}/{_ms(pt.get('p99'))}"])
        out.extend(_table(["connection", "instance", "in", "out", "idle", "processing"],
                          rows))
        if len(live) > len(shown):
            out.append(f"  ... {len(live) - len(shown)} more (--json shows all)")
    return "\n".join(out) + "\n"
