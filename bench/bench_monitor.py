"""What monitoring costs: pipelined ``submit`` throughput with monitoring on (the default)
beside the same with ``MonitoringConfig(enabled=False)``, in one run.

Two systems run side by side, each with two echo instances (prefetch 256); each repeat
measures both, alternating which goes first. Target: monitoring costs at most 10 %
(ratio on/off ≥ 0.9).
"""

from __future__ import annotations

import contextlib

from bench._spear import pipelined_rate, running_system, start_echo
from bench.harness import BenchContext, Measurement, Row

ON = "pipelined submit, monitoring on"
OFF = "pipelined submit, monitoring off"
TASK = "echo-mon"


def run(ctx: BenchContext) -> list[Row]:
    from spear_actors import MonitoringConfig, SystemConfig

    n = ctx.scale(20_000, 5_000)
    results: dict[str, list[float]] = {ON: [], OFF: []}
    with contextlib.ExitStack() as stack:
        systems = {
            ON: stack.enter_context(running_system(SystemConfig())),
            OFF: stack.enter_context(running_system(
                SystemConfig(monitoring=MonitoringConfig(enabled=False)))),
        }
        ctx.progress("starting 2 echo instances (prefetch 256) in each system")
        for system in systems.values():
            start_echo(system, TASK, 2, prefetch=256)
        for system in systems.values():
            pipelined_rate(system, TASK, n // 5)  # warm-up
        for r in range(ctx.repeats):
            order = [ON, OFF] if r % 2 == 0 else [OFF, ON]
            for name in order:
                ctx.progress(f"{r + 1}/{ctx.repeats}: {name}, {n} submits")
                results[name].append(pipelined_rate(systems[name], TASK, n))
    return [Row(Measurement(ON, "msg/s", results[ON], higher_is_better=True),
                Measurement(OFF, "msg/s", results[OFF], higher_is_better=True),
                "ratio >= 0.9",
                note=f"{n} submit() calls per repeat then wait for all, 64-byte payloads, "
                     "2 echo instances with prefetch 256 per system; target: monitoring "
                     "costs ≤ 10 %")]
