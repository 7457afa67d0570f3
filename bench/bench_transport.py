"""The transport alone: RouterPump + sans-IO ServerProtocol in this process, the echo example
(InstanceClient) in a child — no actors. Round trip p50/p99 and pipelined throughput, beside
raw pyzmq+msgpack measured in the same run.

The server sends EXECUTE_REQUESTs (``pack_execute_request``) from the caller's thread (round
trip: wait for the answer on an Event set in the pump thread) or from the pump thread itself
(pipelined: each answer sends the next request, up to 1 000 in flight, as the raw baseline).
The same targets as the full path apply: the transport must meet them with room to spare.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator

from bench import baselines as b
from bench._spear import ECHO_COMMAND, add_p50_p99, instance_env
from bench.harness import BenchContext, Measurement, Row, child_process

RT = "pump+InstanceClient round trip"
RT_RAW = "raw zmq+msgpack round trip"
PIPE = "pump+InstanceClient pipelined, window 1000"
PIPE_RAW = "raw zmq+msgpack pipelined, window 1000"

WINDOW = 1000
TIMEOUT = 60.0


class _Driver:
    """Sends requests to one instance over a ProtocolServer and collects the answers."""

    def __init__(self) -> None:
        from bench._proto_server import ProtocolServer
        from spear_actors.protocol.codec import pack_execute_request

        self._pack = pack_execute_request
        self.server = ProtocolServer(self._on_delivered)
        self.routing_id = b""
        self._next_id = 0
        # round trip
        self._waiting = 0
        self._answer: bytes | None = None
        self._answered = threading.Event()
        # pipelined
        self._pipe_total = 0
        self._pipe_sent = 0
        self._pipe_done = 0
        self._pipe_finished = threading.Event()
        self._pipelining = False
        self.bad = 0

    def _request(self, rid: int) -> bytes:
        return self._pack(rid, "echo", b.PAYLOAD, None, time.time())

    def _on_delivered(self, delivered: list) -> None:  # type: ignore[type-arg]
        if self._pipelining:
            for d in delivered:
                if not d.payload.ok or d.payload.data != b.PAYLOAD:
                    self.bad += 1
            self._pipe_done += len(delivered)
            more = min(len(delivered), self._pipe_total - self._pipe_sent)
            if more > 0:
                first = self._next_id + 1
                self._next_id += more
                self._pipe_sent += more
                rid_ = self.routing_id
                self.server.pump.send_many([(rid_, self._request(i))
                                            for i in range(first, first + more)])
            if self._pipe_done >= self._pipe_total:
                self._pipe_finished.set()
            return
        for d in delivered:
            if d.message.request_id == self._waiting:
                self._answer = d.payload.data
                self._answered.set()

    def round_trips(self, n: int, warmup: int = 200) -> list[float]:
        samples: list[float] = []
        clock = time.perf_counter_ns
        send = self.server.pump.send
        answered = self._answered
        for i in range(warmup + n):
            self._next_id += 1
            rid = self._waiting = self._next_id
            answered.clear()
            t0 = clock()
            send(self.routing_id, self._request(rid))
            if not answered.wait(TIMEOUT):
                raise TimeoutError(f"no answer to request {rid} within {TIMEOUT} s")
            t1 = clock()
            if self._answer != b.PAYLOAD:
                raise RuntimeError("echo answered something else")
            if i >= warmup:
                samples.append((t1 - t0) / 1e9)
        return samples

    def pipelined(self, n: int, window: int = WINDOW) -> float:
        self._pipe_total, self._pipe_done, self.bad = n, 0, 0
        first_burst = min(window, n)
        self._pipe_sent = first_burst
        self._pipe_finished.clear()
        self._pipelining = True
        try:
            t0 = time.perf_counter()
            first = self._next_id + 1
            self._next_id += first_burst
            self.server.pump.send_many([(self.routing_id, self._request(i))
                                        for i in range(first, first + first_burst)])
            if not self._pipe_finished.wait(max(TIMEOUT, n / 1000)):
                raise TimeoutError(f"{self._pipe_done}/{n} pipelined answers arrived")
            elapsed = time.perf_counter() - t0
        finally:
            self._pipelining = False
        if self.bad:
            raise RuntimeError(f"{self.bad} pipelined answers were wrong")
        return n / elapsed


@contextlib.contextmanager
def _echo_over_pump() -> Iterator[_Driver]:
    """A started ProtocolServer with one authenticated echo instance (a child process)."""
    driver = _Driver()
    endpoint = driver.server.start()
    try:
        iid, secret = "bench-echo-1", secrets.token_urlsafe(32)
        driver.server.expect(iid, secret)
        env = instance_env(endpoint, iid, secret, {"SPEAR_MAX_CONCURRENCY": "1"})
        with child_process(list(ECHO_COMMAND), timeout=5.0, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
            try:
                driver.server.wait_authenticated(1, TIMEOUT, alive=lambda: proc.poll() is None)
                rid = driver.server.routing_id_of(iid)
                assert rid is not None
                driver.routing_id = rid
                yield driver
            finally:
                driver.server.close_instance(iid, "stop")  # the instance exits by itself
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
    finally:
        driver.server.stop()


def run(ctx: BenchContext) -> list[Row]:
    latency = ctx.selected(RT, RT_RAW)
    throughput = ctx.selected(PIPE, PIPE_RAW)
    n_rt = ctx.scale(5_000, 500)
    n_ours = ctx.scale(50_000, 5_000)
    n_raw = ctx.scale(100_000, 10_000)
    ours_rt: dict[int, list[float]] = {50: [], 99: []}
    raw_rt: dict[int, list[float]] = {50: [], 99: []}
    ours_tp: list[float] = []
    raw_tp: list[float] = []
    rows: list[Row] = []
    if not (latency or throughput):
        return rows
    with b.EchoServer() as server, _echo_over_pump() as driver:
        if throughput:
            driver.pipelined(n_ours // 5)  # warm-up
        for r in range(ctx.repeats):
            if latency:
                ctx.progress(f"round trip {r + 1}/{ctx.repeats}: ours, {n_rt} requests")
                add_p50_p99(ours_rt, driver.round_trips(n_rt))
                ctx.progress(f"round trip {r + 1}/{ctx.repeats}: raw zmq, {n_rt} requests")
                add_p50_p99(raw_rt, b.raw_zmq_roundtrip(n_rt, server=server, warmup=200))
            if throughput:
                ctx.progress(f"throughput {r + 1}/{ctx.repeats}: ours, {n_ours} requests")
                ours_tp.append(driver.pipelined(n_ours))
                ctx.progress(f"throughput {r + 1}/{ctx.repeats}: raw zmq, {n_raw} requests")
                raw_tp.append(b.raw_zmq_pipelined(n_raw, WINDOW, server=server))
    if latency:
        rows += [
            Row(Measurement(f"{RT} p50", "µs", ours_rt[50]),
                Measurement(f"{RT_RAW} p50", "µs", raw_rt[50]), "ratio <= 2",
                note=f"{n_rt} sequential requests per repeat, 64-byte payload; RouterPump + "
                     "ServerProtocol here, echo example (InstanceClient, max_concurrency 1) "
                     "in a child; no actors"),
            Row(Measurement(f"{RT} p99", "µs", ours_rt[99]),
                Measurement(f"{RT_RAW} p99", "µs", raw_rt[99])),
        ]
    if throughput:
        rows.append(Row(Measurement(PIPE, "msg/s", ours_tp, higher_is_better=True),
                        Measurement(PIPE_RAW, "msg/s", raw_tp, higher_is_better=True),
                        "ratio >= 0.5",
                        note=f"{n_ours} requests per repeat, each answer sends the next "
                             "(pump thread), 64-byte payloads"))
    return rows
