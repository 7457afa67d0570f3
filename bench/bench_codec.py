"""Our codec per message beside bare msgpack (``baselines.raw_codec``), in one run.

- general path: ``pack(ExecuteRequest(...))`` + strict ``decode`` + ``decode_payload``;
- fast path: ``pack_execute_request`` + ``decode`` + ``decode_payload`` (the hot frame);
- response fast path: ``pack_execute_response`` + ``decode`` + ``decode_payload`` (the frame
  the pump decodes for every answer).

Each is nanoseconds per encode+decode of one 64-byte-payload message; the baseline packs and
unpacks the same shape with plain ``msgpack.packb``/``unpackb`` and no checks.
"""

from __future__ import annotations

import time

from bench import baselines as b
from bench.harness import BenchContext, Measurement, Row

GENERAL = "codec pack+decode+decode_payload, EXECUTE_REQUEST"
FAST = "codec fast path pack_execute_request+decode+decode_payload"
RESP = "codec fast path pack_execute_response+decode+decode_payload"
RAW = "msgpack pack+unpack, EXECUTE_REQUEST-shaped (codec floor)"


def general_path(n: int) -> float:
    from spear_actors.protocol.codec import decode, decode_payload, pack
    from spear_actors.protocol.types import ExecuteRequest

    data, ts = b.PAYLOAD, time.time()
    t0 = time.perf_counter_ns()
    for i in range(n):
        body = pack(ExecuteRequest("echo", data, None), i, ts)
        decode_payload(decode(body))
    return (time.perf_counter_ns() - t0) / n


def fast_path(n: int) -> float:
    from spear_actors.protocol.codec import decode, decode_payload, pack_execute_request

    data, ts = b.PAYLOAD, time.time()
    t0 = time.perf_counter_ns()
    for i in range(n):
        body = pack_execute_request(i, "echo", data, None, ts)
        decode_payload(decode(body))
    return (time.perf_counter_ns() - t0) / n


def response_path(n: int) -> float:
    from spear_actors.protocol.codec import decode, decode_payload, pack_execute_response

    data, ts = b.PAYLOAD, time.time()
    t0 = time.perf_counter_ns()
    for i in range(n):
        body = pack_execute_response(i, True, data, None, ts)
        decode_payload(decode(body))
    return (time.perf_counter_ns() - t0) / n


def _check() -> None:
    """The three paths really round-trip (a benchmark of a broken codec is worthless)."""
    from spear_actors.protocol.codec import (
        decode,
        decode_payload,
        pack,
        pack_execute_request,
        pack_execute_response,
    )
    from spear_actors.protocol.types import ExecuteRequest, ExecuteResponse

    ts = time.time()
    req = ExecuteRequest("echo", b.PAYLOAD, None)
    assert decode_payload(decode(pack(req, 7, ts))) == req
    assert decode_payload(decode(pack_execute_request(7, "echo", b.PAYLOAD, None, ts))) == req
    resp = decode_payload(decode(pack_execute_response(7, True, b.PAYLOAD, None, ts)))
    assert resp == ExecuteResponse(True, b.PAYLOAD, None)


def run(ctx: BenchContext) -> list[Row]:
    _check()
    n = ctx.scale(200_000, 20_000)
    paths = {GENERAL: general_path, FAST: fast_path, RESP: response_path}
    paths = {k: v for k, v in paths.items() if ctx.selected(k, RAW)}
    if not paths:
        return []
    ours: dict[str, list[float]] = {k: [] for k in paths}
    raw: list[float] = []
    for fn in paths.values():  # warm-up
        fn(n // 10)
    b.raw_codec(n // 10)
    for r in range(ctx.repeats):
        ctx.progress(f"{r + 1}/{ctx.repeats}: {n} messages per path")
        raw.append(b.raw_codec(n))
        for name, fn in paths.items():
            ours[name].append(fn(n))
    raw_m = Measurement(RAW, "ns", raw)
    return [Row(Measurement(name, "ns", ours[name]), raw_m,
                note=(f"{n} messages per repeat, 64-byte payload; per encode+decode"
                      if i == 0 else ""))
            for i, name in enumerate(paths)]
