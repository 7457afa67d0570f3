"""The whole request path through the actor system, beside raw pyzmq and ProcessPoolExecutor.

(a) Sequential ``SpearSystem.execute`` (64-byte payload, one echo instance, prefetch 0) —
    p50/p99 against the raw pyzmq+msgpack round trip (DESIGN §6: p50 ≤ 2 x raw) and against
    a ProcessPoolExecutor(1) round trip.
(b) Pipelined ``submit`` (64-byte payloads, two echo instances with prefetch 256: submit N,
    then wait for all) against raw pyzmq pipelining (≥ 0.5 x raw) and an unbatched
    ProcessPoolExecutor(2) (≥ 5 x PPE).

Ours and the baselines alternate repeat by repeat in one run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench import baselines as b
from bench._spear import (
    add_p50_p99,
    pipelined_rate,
    running_system,
    sequential_latencies,
    start_echo,
)
from bench.harness import BenchContext, Measurement, Row

if TYPE_CHECKING:
    from spear_actors import SpearSystem

LAT = "execute round trip"
LAT_RAW = "raw zmq+msgpack round trip"
LAT_PPE = "ProcessPoolExecutor(1) round trip"
PIPE = "pipelined submit, 2 instances, prefetch 256"
PIPE_RAW = "raw zmq+msgpack pipelined, window 1000"
PIPE_PPE = "ProcessPoolExecutor(2) unbatched submits"

LAT_TASK = "echo-lat"
PIPE_TASK = "echo-pipe"


def _latency(ctx: BenchContext, system: SpearSystem, server: b.EchoServer) -> list[Row]:
    n = ctx.scale(5_000, 1_000)
    ours: dict[int, list[float]] = {50: [], 99: []}
    raw: dict[int, list[float]] = {50: [], 99: []}
    ppe: dict[int, list[float]] = {50: [], 99: []}
    with b.make_pool(1) as pool:
        for r in range(ctx.repeats):
            ctx.progress(f"round trip {r + 1}/{ctx.repeats}: ours, {n} executes")
            add_p50_p99(ours, sequential_latencies(system, LAT_TASK, n))
            ctx.progress(f"round trip {r + 1}/{ctx.repeats}: raw zmq, {n} requests")
            add_p50_p99(raw, b.raw_zmq_roundtrip(n, server=server, warmup=200))
            ctx.progress(f"round trip {r + 1}/{ctx.repeats}: ProcessPoolExecutor, {n} calls")
            add_p50_p99(ppe, b.ppe_roundtrip(n, pool=pool, warmup=100))

    def m(name: str, values: dict[int, list[float]], q: int) -> Measurement:
        return Measurement(f"{name} p{q}", "µs", values[q])

    note = (f"{n} sequential execute() calls per repeat, 64-byte payload, 1 echo instance, "
            "prefetch 0; DESIGN §6 target p50 ≤ 2 x raw")
    return [
        Row(m(LAT, ours, 50), m(LAT_RAW, raw, 50), "ratio <= 2", note=note),
        Row(m(LAT, ours, 99), m(LAT_RAW, raw, 99)),
        Row(m(f"{LAT} (vs PPE)", ours, 50), m(LAT_PPE, ppe, 50)),
        Row(m(f"{LAT} (vs PPE)", ours, 99), m(LAT_PPE, ppe, 99)),
    ]


def _throughput(ctx: BenchContext, system: SpearSystem, server: b.EchoServer) -> list[Row]:
    n = ctx.scale(20_000, 5_000)
    n_raw = ctx.scale(100_000, 20_000)
    n_ppe = ctx.scale(10_000, 2_000)
    ours: list[float] = []
    raw: list[float] = []
    ppe: list[float] = []
    with b.make_pool(2) as pool:
        ctx.progress(f"warming up: {n // 5} submits")
        pipelined_rate(system, PIPE_TASK, n // 5)
        for r in range(ctx.repeats):
            ctx.progress(f"throughput {r + 1}/{ctx.repeats}: ours, {n} submits")
            ours.append(pipelined_rate(system, PIPE_TASK, n))
            ctx.progress(f"throughput {r + 1}/{ctx.repeats}: raw zmq pipelined, {n_raw} msgs")
            raw.append(b.raw_zmq_pipelined(n_raw, 1000, server=server))
            ctx.progress(f"throughput {r + 1}/{ctx.repeats}: ProcessPoolExecutor(2), "
                         f"{n_ppe} tasks")
            ppe.append(b.ppe_throughput(n_ppe, pool=pool))
    ours_m = Measurement(PIPE, "msg/s", ours, higher_is_better=True)
    return [
        Row(ours_m, Measurement(PIPE_RAW, "msg/s", raw, higher_is_better=True),
            "ratio >= 0.5",
            note=f"{n} submit() calls per repeat then wait for all, 64-byte payloads; "
                 "DESIGN §6 targets ≥ 0.5 x raw, ≥ 5 x PPE"),
        Row(Measurement(f"{PIPE} (vs PPE)", "msg/s", ours, higher_is_better=True),
            Measurement(PIPE_PPE, "msg/s", ppe, higher_is_better=True), "ratio >= 5"),
    ]


def run(ctx: BenchContext) -> list[Row]:
    rows: list[Row] = []
    latency = ctx.selected(LAT, LAT_RAW, LAT_PPE)
    throughput = ctx.selected(PIPE, PIPE_RAW, PIPE_PPE)
    if not (latency or throughput):
        return rows
    with b.EchoServer() as server, running_system() as system:
        if latency:
            ctx.progress("starting 1 echo instance (prefetch 0)")
            start_echo(system, LAT_TASK, 1, prefetch=0)
        if throughput:
            ctx.progress("starting 2 echo instances (prefetch 256)")
            start_echo(system, PIPE_TASK, 2, prefetch=256)
        if latency:
            rows += _latency(ctx, system, server)
        if throughput:
            rows += _throughput(ctx, system, server)
    return rows
