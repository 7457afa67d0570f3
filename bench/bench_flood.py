"""Hostile local peers (DESIGN.md section 11): sequential ``execute`` on one echo instance,
quiet and then while 4 local processes flood the listener as fast as they can.

Variants (each flooder a plain pyzmq DEALER on loopback, ``bench/_flood.py``; when the
server cuts it, it opens a fresh DEALER at once and carries on under a new routing id):

- ``heartbeat flood``: unauthenticated HEARTBEAT frames;
- ``auth flood``: AUTH_REQUEST frames naming the echo instance's real id with a wrong token;
- ``cpu control``: 4 busy-looping processes that send nothing (no target): what the
  flooders' CPU use alone costs the execute path on this machine.

Per repeat (at most 3) and variant: a quiet run of sequential executes just before (the
baseline), then executes one after another for as long as the flood lasts (10 s; 2.5 s with
``--quick``).
Targets (DESIGN.md section 11): execute p50 <= 2 x its quiet value, p99 <= 20 ms, and the echo
instance never restarted (its restarts count and pid are checked around every flood: the
``echo restarted`` row fails otherwise). Also reported: frames the flooders sent, frames that
were decoded at all, ``muted_dropped`` and ``peers_cut`` (``metrics()["errors"]``).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from bench._flood import Flood
from bench._spear import add_p50_p99, running_system, sequential_latencies, start_echo
from bench.baselines import PAYLOAD
from bench.harness import BenchContext, Measurement, Row

if TYPE_CHECKING:
    from spear_actors import SpearSystem

TASK = "flood-echo"
PROCESSES = 4
VARIANTS: dict[str, tuple[str, str]] = {
    # name -> (flood mode, message type whose decoding the flood causes)
    "heartbeat flood": ("heartbeat", "HEARTBEAT"),
    "auth flood": ("auth", "AUTH_REQUEST"),
    "cpu control": ("spin", ""),
    "gated heartbeat flood": ("heartbeat", "HEARTBEAT"),
    "gated auth flood": ("auth", "AUTH_REQUEST"),
}
GATED = frozenset({"gated heartbeat flood", "gated auth flood"})
"""Run against a listener with ConnectionConfig(gate="plain") (ZeroMQ's own gate): the
heartbeat flooders come without credentials, the auth flooders with the instance's id and a
wrong secret as PLAIN credentials (so every connection they make costs a ZAP answer)."""
COUNTERS = ("muted_dropped", "peers_cut", "over_budget", "not_authenticated",
            "auth_throttled", "auth_failed", "gate_denied")
CALL_TIMEOUT = 10.0
SETTLE = 90.0
"""Bound on the wait for the pump to finish reading what the flooders left in the ROUTER's
pipes (it goes on after the flood: tens of seconds after a 10 s flood have been seen)."""
MAX_REPEATS = 3
"""Each repeat floods twice for 10 s and waits for the backlog: 3 repeats at most."""


def _counters(system: SpearSystem, decoded_type: str) -> dict[str, int]:
    metrics = system.metrics()
    errors: dict[str, int] = metrics["errors"]
    out = {name: int(errors.get(name, 0)) for name in COUNTERS}
    out["auth_failures"] = int(metrics["auth_failures"])
    inbound: dict[str, Any] = metrics["messages"]["in"]
    out["decoded"] = int(inbound.get(decoded_type, {}).get("count", 0)) if decoded_type else 0
    return out


def _settled(system: SpearSystem, decoded_type: str) -> tuple[dict[str, int], float]:
    """The counters once they stop moving (the pump may still be reading the flood's
    backlog, and the monitor hears of the counts asynchronously), and how long that took."""
    started = time.monotonic()
    deadline = started + SETTLE
    last = _counters(system, decoded_type)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = _counters(system, decoded_type)
        if now == last:
            break
        last = now
    return last, max(0.0, time.monotonic() - started - 0.3)


def _latencies_until(system: SpearSystem, end: float) -> tuple[list[float], int]:
    """Sequential executes until ``end`` (monotonic); their latencies (s) and failures."""
    execute, clock = system.execute, time.perf_counter_ns
    samples: list[float] = []
    failures = 0
    while time.monotonic() < end:
        t0 = clock()
        try:
            out = execute(TASK, PAYLOAD, timeout=CALL_TIMEOUT)
        except Exception:
            failures += 1
            continue
        t1 = clock()
        if out != PAYLOAD:
            failures += 1
        samples.append((t1 - t0) / 1e9)
    return samples, failures


class _Figures:
    def __init__(self) -> None:
        self.quiet: dict[int, list[float]] = {50: [], 99: []}
        self.flood: dict[int, list[float]] = {50: [], 99: []}
        self.sent: list[float] = []
        self.rate: list[float] = []
        self.connections: list[float] = []
        self.calls: list[float] = []
        self.failures: list[float] = []
        self.restarted: list[float] = []
        self.drained: list[float] = []
        self.deltas: dict[str, list[float]] = {}


def _one_flood(ctx: BenchContext, system: SpearSystem, iid: str, variant: str,
               seconds: float, n_quiet: int, figures: _Figures) -> None:
    mode, decoded_type = VARIANTS[variant]
    add_p50_p99(figures.quiet, sequential_latencies(system, TASK, n_quiet, warmup=100))
    before_info = system.instance(iid)
    before, _ = _settled(system, decoded_type)
    with Flood(system.endpoint, mode, PROCESSES, seconds=seconds, instance_id=iid,
               plain=variant == "gated auth flood") as flood:
        flood.go()
        assert flood.started is not None
        samples, failures = _latencies_until(system, flood.started + seconds)
        result = flood.wait()
    after, drained = _settled(system, decoded_type)
    after_info = system.instance(iid)
    if not samples:
        raise RuntimeError(f"no execute completed during the {variant}")
    add_p50_p99(figures.flood, samples)
    figures.sent.append(result.sent)
    figures.rate.append(result.rate)
    figures.connections.append(result.connections)
    figures.calls.append(len(samples))
    figures.failures.append(failures)
    restarted = after_info.restarts - before_info.restarts + \
        (after_info.pid != before_info.pid) + (not after_info.state.is_serving)
    figures.restarted.append(restarted)
    figures.drained.append(drained)
    for name, value in after.items():
        figures.deltas.setdefault(name, []).append(value - before[name])
    ctx.progress(f"{variant}: {result.describe()}; {len(samples)} executes, p50 "
                 f"{figures.flood[50][-1]:.0f} µs (quiet {figures.quiet[50][-1]:.0f} µs), "
                 f"p99 {figures.flood[99][-1]:.0f} µs, {failures} failed; counters "
                 f"settled {drained:.1f} s after the flood; "
                 + ", ".join(f"{k} +{after[k] - before[k]}" for k in after))
    if restarted:
        ctx.progress(f"{variant}: the echo instance was restarted: {before_info} -> "
                     f"{after_info}")


def _rows(variant: str, f: _Figures, seconds: float, load: str) -> list[Row]:
    mode, decoded_type = VARIANTS[variant]

    def lat(name: str, values: dict[int, list[float]], q: int) -> Measurement:
        return Measurement(f"{name} p{q}", "µs", values[q])

    what = {"heartbeat": "unauthenticated HEARTBEAT frames",
            "auth": "AUTH_REQUEST frames naming the echo instance with a wrong token",
            "spin": "nothing (busy loops: the CPU cost alone)"}[mode]
    how = "" if mode == "spin" else " as fast as they can (a fresh DEALER whenever cut)"
    if variant in GATED:
        what += (" over PLAIN connections with the instance's id and a wrong secret"
                 if mode == "auth" else ", without credentials")
        how += "; listener gated (ConnectionConfig(gate='plain'))"
    note = (f"{PROCESSES} local processes sending {what}{how} for {seconds} s, sequential "
            f"execute() on 1 echo instance throughout; baseline: sequential executes just "
            f"before; {load}")
    quiet = f"execute quiet (before the {variant})"
    name = f"{variant}: execute"
    if mode == "spin":
        return [Row(lat(name, f.flood, 50), lat(quiet, f.quiet, 50), note=note),
                Row(lat(name, f.flood, 99), lat(quiet, f.quiet, 99))]
    rows = [
        Row(lat(name, f.flood, 50), lat(quiet, f.quiet, 50), "ratio <= 2",
            note=note + "; DESIGN §11 target p50 ≤ 2 x quiet"),
        Row(lat(name, f.flood, 99), lat(quiet, f.quiet, 99), "value <= 20 ms",
            note="DESIGN §11 target: execute p99 ≤ 20 ms (absolute) under the flood"),
        Row(Measurement(f"{variant}: echo restarted", "restarts", f.restarted),
            target="value <= 0",
            note="restarts count, pid change or not serving, checked around every flood; "
                 "DESIGN §11: no healthy instance is restarted"),
        Row(Measurement(f"{variant}: execute failures", "calls", f.failures),
            target="value <= 0"),
        Row(Measurement(f"{variant}: executes served", "calls", f.calls,
                        higher_is_better=True)),
        Row(Measurement(f"{variant}: frames sent", "frames", f.sent, higher_is_better=True),
            note=f"rate {min(f.rate):.0f}{'-'}{max(f.rate):.0f} frames/s; connections "
                 f"opened by the flooders {min(f.connections):.0f}-{max(f.connections):.0f}"),
        Row(Measurement(f"{variant}: {decoded_type} frames decoded", "frames",
                        f.deltas["decoded"]),
            note="metrics()['messages']['in'] from before the flood until the counters "
                 "settled; for HEARTBEAT this includes the echo's own (one a second)"),
        Row(Measurement(f"{variant}: muted_dropped", "frames", f.deltas["muted_dropped"])),
        Row(Measurement(f"{variant}: peers_cut", "connections", f.deltas["peers_cut"])),
        Row(Measurement(f"{variant}: gate_denied", "connections", f.deltas["gate_denied"]),
            note="connections refused by the ZAP handler (gate='plain' only)"),
        Row(Measurement(f"{variant}: backlog read after the flood", "s", f.drained),
            note="from the flood's end until muted_dropped stopped growing (sampled every "
                 "0.3 s): the pump reads, one by one, what muted peers left in the ROUTER's "
                 "pipes"),
    ]
    if mode == "auth":
        rows += [
            Row(Measurement(f"{variant}: auth failures answered", "frames",
                            f.deltas["auth_failures"])),
            Row(Measurement(f"{variant}: auth_throttled", "frames",
                            f.deltas["auth_throttled"])),
        ]
    else:
        rows.append(Row(Measurement(f"{variant}: not_authenticated", "frames",
                                    f.deltas["not_authenticated"])))
    return rows


def run(ctx: BenchContext) -> list[Row]:
    variants = [v for v in VARIANTS if ctx.selected(f"{v}: execute")]
    if not variants:
        return []
    seconds = 2.5 if ctx.quick else 10.0
    n_quiet = ctx.scale(2_000, 500)
    figures = {v: _Figures() for v in variants}
    load_start = os.getloadavg()
    from spear_actors import ConnectionConfig, SystemConfig

    for gated in (False, True):
        chosen = [v for v in variants if (v in GATED) == gated]
        if not chosen:
            continue
        config = SystemConfig(connection=ConnectionConfig(gate="plain")) if gated else None
        with running_system(config) as system:
            ctx.progress(f"starting 1 echo instance (prefetch 0{', gate=plain' * gated})")
            [iid] = start_echo(system, TASK, 1, prefetch=0)
            sequential_latencies(system, TASK, 200)  # warm up
            repeats = min(ctx.repeats, MAX_REPEATS)
            for r in range(repeats):
                for variant in chosen:
                    ctx.progress(f"repeat {r + 1}/{repeats}: quiet, then {variant} "
                                 f"for {seconds} s")
                    _one_flood(ctx, system, iid, variant, seconds, n_quiet,
                               figures[variant])
    load_end = os.getloadavg()
    load = (f"load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end "
            f"(the flooders themselves add ~4; {os.cpu_count()} cores)")
    rows: list[Row] = []
    for variant in variants:
        rows += _rows(variant, figures[variant], seconds, load)
    return rows
