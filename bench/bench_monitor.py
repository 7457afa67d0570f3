"""What monitoring costs: pipelined ``submit`` throughput with monitoring fully on (the
default: every MonitoringConfig flag, per-connection data, the latency split) beside the same
with ``MonitoringConfig(enabled=False)``, in one run; plus, for the cost of each part, the
same load with one flag off at a time (DESIGN.md section 12).

Every system runs two echo instances (prefetch 256); each repeat measures all of them,
rotating which goes first. Target: monitoring costs at most 10 % (ratio on/off ≥ 0.9). The
per-flag rows are informational: ratio = (that flag off) / (all on), so 1.05 means that part
costs about 5 %.
"""

from __future__ import annotations

import contextlib

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


def run(ctx: BenchContext) -> list[Row]:
    from spear_actors import MonitoringConfig, SystemConfig

    n = ctx.scale(20_000, 5_000)
    configs = {ON: SystemConfig(), OFF: SystemConfig(monitoring=MonitoringConfig(enabled=False))}
    configs.update({name: SystemConfig(monitoring=MonitoringConfig(**{flag: False}))
                    for name, flag in FLAGS.items()})
    results: dict[str, list[float]] = {name: [] for name in configs}
    with contextlib.ExitStack() as stack:
        systems = {name: stack.enter_context(running_system(config))
                   for name, config in configs.items()}
        ctx.progress(f"starting 2 echo instances (prefetch 256) in each of {len(systems)} "
                     "systems")
        for system in systems.values():
            start_echo(system, TASK, 2, prefetch=256)
        for system in systems.values():
            pipelined_rate(system, TASK, n // 5)  # warm-up
        names = list(systems)
        for r in range(ctx.repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                ctx.progress(f"{r + 1}/{ctx.repeats}: {name}, {n} submits")
                results[name].append(pipelined_rate(systems[name], TASK, n))

    def measured(name: str) -> Measurement:
        return Measurement(name, "msg/s", results[name], higher_is_better=True)

    rows = [Row(measured(ON), measured(OFF), "ratio >= 0.9",
                note=f"{n} submit() calls per repeat then wait for all, 64-byte payloads, "
                     "2 echo instances with prefetch 256 per system; target: monitoring "
                     "costs ≤ 10 %")]
    rows += [Row(measured(name), measured(ON),
                 note=f"cost of {flag}: this ratio - 1 (informational)")
             for name, flag in FLAGS.items()]
    return rows
