"""The baselines themselves, as rows: raw pyzmq+msgpack against ProcessPoolExecutor, the
process start + connect floor, and the codec floor. Other modules compare us with these.

Raw and PPE are measured alternately repeat by repeat, so drift in the machine's load hits
both sides alike.
"""

from __future__ import annotations

from bench import baselines as b
from bench.harness import BenchContext, Measurement, Row, percentiles

RT_RAW = "raw zmq+msgpack round trip"
RT_PPE = "ProcessPoolExecutor(1) round trip"
PIPE_RAW = "raw zmq+msgpack pipelined, window {w}"
PIPE_PPE = "ProcessPoolExecutor(2) unbatched submits"
SPAWN = "spawn python + import zmq, msgpack + connect + 1st frame"
CODEC = "msgpack pack+unpack, EXECUTE_REQUEST-shaped (codec floor)"


def _round_trips(ctx: BenchContext) -> list[Row]:
    n = ctx.scale(10_000, 2_000)
    raw: dict[int, list[float]] = {50: [], 99: []}
    ppe: dict[int, list[float]] = {50: [], 99: []}
    with b.EchoServer() as server, b.make_pool(1) as pool:
        for r in range(ctx.repeats):
            ctx.progress(f"round trip {r + 1}/{ctx.repeats}: raw zmq, {n} requests")
            p = percentiles(b.raw_zmq_roundtrip(n, server=server), [50, 99])
            for q, values in raw.items():
                values.append(p[q] * 1e6)
            ctx.progress(f"round trip {r + 1}/{ctx.repeats}: ProcessPoolExecutor, {n} requests")
            p = percentiles(b.ppe_roundtrip(n, pool=pool), [50, 99])
            for q, values in ppe.items():
                values.append(p[q] * 1e6)
    return [
        Row(Measurement(f"{RT_RAW} p{q}", "µs", raw[q]),
            Measurement(f"{RT_PPE} p{q}", "µs", ppe[q]),
            note=f"{n} sequential requests per repeat, 64-byte payload" if q == 50 else "")
        for q in (50, 99)
    ]


def _throughput(ctx: BenchContext) -> list[Row]:
    window = 1000
    n_raw = ctx.scale(200_000, 40_000)
    n_ppe = ctx.scale(20_000, 4_000)
    raw: list[float] = []
    ppe: list[float] = []
    with b.EchoServer() as server, b.make_pool(2) as pool:
        for r in range(ctx.repeats):
            ctx.progress(f"throughput {r + 1}/{ctx.repeats}: raw zmq pipelined, {n_raw} msgs")
            raw.append(b.raw_zmq_pipelined(n_raw, window, server=server))
            ctx.progress(f"throughput {r + 1}/{ctx.repeats}: ProcessPoolExecutor(2), "
                         f"{n_ppe} tasks")
            ppe.append(b.ppe_throughput(n_ppe, pool=pool))
    return [Row(Measurement(PIPE_RAW.format(w=window), "msg/s", raw, higher_is_better=True),
                Measurement(PIPE_PPE, "msg/s", ppe, higher_is_better=True))]


def _spawn(ctx: BenchContext) -> list[Row]:
    n = ctx.scale(10, 4)
    medians: list[float] = []
    for r in range(ctx.repeats):
        ctx.progress(f"spawn+connect {r + 1}/{ctx.repeats}: {n} processes")
        medians.append(percentiles(b.spawn_connect_floor(n), [50])[50] * 1e3)
    return [Row(Measurement(SPAWN, "ms", medians),
                note=f"median of {n} starts per repeat; the floor for create → READY "
                     "(DESIGN §6 quotes 31 ms)")]


def _codec(ctx: BenchContext) -> list[Row]:
    n = ctx.scale(200_000, 50_000)
    ctx.progress(f"codec: {ctx.repeats} repeats of {n} messages")
    values = [b.raw_codec(n) for _ in range(ctx.repeats)]
    return [Row(Measurement(CODEC, "ns", values))]


def run(ctx: BenchContext) -> list[Row]:
    rows: list[Row] = []
    if ctx.selected(f"{RT_RAW} p50", f"{RT_PPE} p50"):
        rows += _round_trips(ctx)
    if ctx.selected(PIPE_RAW, PIPE_PPE):
        rows += _throughput(ctx)
    if ctx.selected(SPAWN):
        rows += _spawn(ctx)
    if ctx.selected(CODEC):
        rows += _codec(ctx)
    return rows
