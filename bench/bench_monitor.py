"""What monitoring costs: pipelined ``submit`` throughput with monitoring fully on (the
default: every MonitoringConfig flag, per-connection data, the latency split) beside the same
with ``MonitoringConfig(enabled=False)``, in one run; plus, for the cost of each part, the
same load with one flag off at a time (DESIGN.md section 12).

Every system runs two echo instances (prefetch 256); only two systems are alive at a time
(all on beside all off, then all on beside each one-flag-off system), and each repeat
measures both, alternating which goes first. Target: monitoring costs at most 10 % (ratio
on/off ≥ 0.9). The per-flag rows are informational: ratio = (that flag off) / (all on), so
1.05 means that part costs about 5 %.
"""

from __future__ import annotations

from typing import Any

from bench._spear import pipelined_rate, running_system, start_echo
from bench.harness import BenchContext, Measurement, Row

ON = "pipelined submit, monitoring on"
OFF = "pipelined submit, monitoring off"
FLAGS = {  # measurement name -> the MonitoringConfig / ConnectionConfig field turned off
    "pipelined submit, message tracking off": "enable_message_tracking",
    "pipelined submit, connection tracking off": "enable_connection_tracking",
    "pipelined submit, performance tracking off": "enable_performance_tracking",
}
TASK = "echo-mon"


def _measure(ctx: BenchContext, systems: dict[str, Any], n: int,
             results: dict[str, list[float]]) -> None:
    """Warm up, then each repeat measures every system, rotating which goes first."""
    for system in systems.values():
        pipelined_rate(system, TASK, n // 5)
    names = list(systems)
    for r in range(ctx.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            ctx.progress(f"{r + 1}/{ctx.repeats}: {name}, {n} submits")
            results.setdefault(name, []).append(pipelined_rate(systems[name], TASK, n))


def run(ctx: BenchContext) -> list[Row]:
    from spear_actors import MonitoringConfig, SystemConfig

    n = ctx.scale(20_000, 5_000)
    results: dict[str, list[float]] = {}
    flag_results: dict[str, dict[str, list[float]]] = {}
    with running_system(SystemConfig()) as on:
        start_echo(on, TASK, 2, prefetch=256)
        # the target: all on beside all off, only these two systems alive
        with running_system(SystemConfig(monitoring=MonitoringConfig(enabled=False))) as off:
            ctx.progress("starting 2 echo instances (prefetch 256) in each system")
            start_echo(off, TASK, 2, prefetch=256)
            _measure(ctx, {ON: on, OFF: off}, n, results)
        # the cost of each part: one flag off beside all on, one pair at a time
        for name, flag in FLAGS.items():
            with running_system(SystemConfig(monitoring=MonitoringConfig(
                    **{flag: False}))) as partial:
                start_echo(partial, TASK, 2, prefetch=256)
                _measure(ctx, {ON: on, name: partial}, n, flag_results.setdefault(name, {}))

    def measured(name: str, source: dict[str, list[float]]) -> Measurement:
        return Measurement(name, "msg/s", source[name], higher_is_better=True)

    rows = [Row(measured(ON, results), measured(OFF, results), "ratio >= 0.9",
                note=f"{n} submit() calls per repeat then wait for all, 64-byte payloads, "
                     "2 echo instances with prefetch 256 per system; target: monitoring "
                     "costs ≤ 10 %")]
    rows += [Row(measured(name, flag_results[name]), measured(ON, flag_results[name]),
                 note=f"cost of {flag}: this ratio - 1, measured beside all on "
                      "(informational)")
             for name, flag in FLAGS.items()]
    return rows
