"""Baselines every benchmark is compared with, measured in the same run (plain numbers).

- :func:`raw_zmq_roundtrip` — DEALER → ROUTER echo in another process, msgpack both ways:
  the floor for one request/response over our protocol (seconds per round trip).
- :func:`raw_zmq_pipelined` — same server, up to ``window`` requests in flight (msg/s).
- :func:`ppe_roundtrip`, :func:`ppe_throughput` — ``concurrent.futures.ProcessPoolExecutor``,
  what a user would reach for instead of us.
- :func:`spawn_connect_floor` — start Python, ``import zmq, msgpack``, connect a DEALER and
  send one frame: the floor for create → READY (seconds).
- :func:`raw_codec` — ns per msgpack pack+unpack of a protocol-shaped message: the codec floor.

Each function cleans up everything it starts (processes reaped, sockets closed with linger 0,
contexts terminated). Functions that need a server or a pool take an optional one
(``server=``/``pool=``) so a benchmark can interleave ours and the baseline repeat by repeat.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import zmq

from bench.harness import stop_process

ECHO_SERVER_SCRIPT = Path(__file__).resolve().with_name("_echo_server.py")
PAYLOAD = bytes(range(64))  # 64-byte bin payload
RECV_TIMEOUT_MS = 10_000

# Environment an instance gets by default (DESIGN §3 InstanceConfig.inherit_env=False).
_PASS_ENV = ("PATH", "HOME", "LANG", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


def protocol_message(request_id: int, payload: bytes = PAYLOAD, message_type: int = 3,
                     timestamp: float | None = None) -> dict[str, Any]:
    """A body map shaped like the wire protocol (DESIGN §2)."""
    return {
        "message_type": message_type,
        "request_id": request_id,
        "timestamp": time.time() if timestamp is None else timestamp,
        "payload": payload,
        "version": 1,
    }


# --------------------------------------------------------------------------------------------
# The echo server (another process)
# --------------------------------------------------------------------------------------------


class EchoServer:
    """The raw ROUTER echo server in a child process (``bench/_echo_server.py``).

    Use as a context manager; ``endpoint`` is ``tcp://127.0.0.1:<port>``.
    """

    def __init__(self, startup_timeout: float = 15.0) -> None:
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int = 0

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> EchoServer:
        self.proc = subprocess.Popen(
            [sys.executable, str(ECHO_SERVER_SCRIPT)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        )
        try:
            assert self.proc.stdout is not None
            ready, _, _ = select.select([self.proc.stdout], [], [], self.startup_timeout)
            line = self.proc.stdout.readline() if ready else b""
            if not line.strip().isdigit():
                raise RuntimeError(
                    f"echo server did not report its port (exit code {self.proc.poll()}, "
                    f"output {line!r})"
                )
            self.port = int(line)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> EchoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _server(server: EchoServer | None) -> Iterator[EchoServer]:
    if server is not None:
        yield server
        return
    with EchoServer() as s:
        yield s


@contextlib.contextmanager
def _dealer(endpoint: str) -> Iterator[zmq.Socket[bytes]]:
    ctx = zmq.Context()
    sock: zmq.Socket[bytes] | None = None
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = 0
        sock.rcvhwm = 0
        sock.rcvtimeo = RECV_TIMEOUT_MS
        sock.connect(endpoint)
        yield sock
    finally:
        if sock is not None:
            sock.close(0)
        ctx.term()


def _recv(sock: zmq.Socket[bytes], flags: int = 0) -> bytes:
    try:
        return sock.recv(flags)
    except zmq.Again:
        if flags & zmq.NOBLOCK:
            raise
        raise TimeoutError(f"echo server silent for {RECV_TIMEOUT_MS} ms") from None


# --------------------------------------------------------------------------------------------
# Raw pyzmq + msgpack
# --------------------------------------------------------------------------------------------


def raw_zmq_roundtrip(n: int, *, server: EchoServer | None = None,
                      warmup: int = 500) -> list[float]:
    """``n`` round trip times (seconds): pack a protocol map, DEALER send, ROUTER echo in
    another process, recv, unpack. ``warmup`` untimed round trips go first."""
    samples: list[float] = []
    packb, unpackb, clock = msgpack.packb, msgpack.unpackb, time.perf_counter_ns
    with _server(server) as srv, _dealer(srv.endpoint) as sock:
        for i in range(warmup + n):
            rid = i + 1
            t0 = clock()
            sock.send(packb(protocol_message(rid)))
            reply = unpackb(_recv(sock))
            t1 = clock()
            if reply["request_id"] != rid:
                raise RuntimeError(f"echo mismatch: sent {rid}, got {reply['request_id']}")
            if i >= warmup:
                samples.append((t1 - t0) / 1e9)
    return samples


def raw_zmq_pipelined(n: int, window: int = 1000, *, server: EchoServer | None = None,
                      warmup: int | None = None) -> float:
    """Messages per second with up to ``window`` requests in flight (send while in flight <
    window, else receive), each request packed and each reply unpacked."""
    packb, unpackb = msgpack.packb, msgpack.unpackb
    if warmup is None:
        warmup = min(max(n // 10, window), 20_000)

    def burst(sock: zmq.Socket[bytes], count: int, first_id: int) -> float:
        sent = done = 0
        t0 = time.perf_counter()
        while done < count:
            while sent < count and sent - done < window:
                sock.send(packb(protocol_message(first_id + sent)))
                sent += 1
            unpackb(_recv(sock))
            done += 1
            while done < sent:  # drain what is already there without blocking
                try:
                    body = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                unpackb(body)
                done += 1
        return time.perf_counter() - t0

    with _server(server) as srv, _dealer(srv.endpoint) as sock:
        if warmup:
            burst(sock, warmup, 1)
        elapsed = burst(sock, n, warmup + 1)
    return n / elapsed


# --------------------------------------------------------------------------------------------
# ProcessPoolExecutor
# --------------------------------------------------------------------------------------------


def echo_fn(data: bytes) -> bytes:
    """The PPE round trip task."""
    return data


def tiny_task(i: int) -> int:
    """The PPE throughput task."""
    return i


def make_pool(workers: int) -> cf.ProcessPoolExecutor:
    """A ProcessPoolExecutor whose workers start with "spawn" (no fork of a process holding
    zmq contexts and threads)."""
    return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


@contextlib.contextmanager
def _pool(pool: cf.ProcessPoolExecutor | None, workers: int) -> Iterator[cf.ProcessPoolExecutor]:
    if pool is not None:
        yield pool
        return
    p = make_pool(workers)
    try:
        yield p
    finally:
        p.shutdown(wait=True, cancel_futures=True)


def _warm(pool: cf.ProcessPoolExecutor, count: int) -> None:
    for f in [pool.submit(tiny_task, i) for i in range(count)]:
        f.result(timeout=60)


def ppe_roundtrip(n: int, *, pool: cf.ProcessPoolExecutor | None = None,
                  warmup: int = 200) -> list[float]:
    """``n`` latencies (seconds) of ``pool.submit(echo_fn, 64 bytes).result()`` on a warmed
    ProcessPoolExecutor(1)."""
    samples: list[float] = []
    data = PAYLOAD
    clock = time.perf_counter_ns
    with _pool(pool, 1) as p:
        for i in range(warmup + n):
            t0 = clock()
            out = p.submit(echo_fn, data).result(timeout=60)
            t1 = clock()
            if out != data:
                raise RuntimeError("PPE echo returned something else")
            if i >= warmup:
                samples.append((t1 - t0) / 1e9)
    return samples


def ppe_throughput(n: int, *, pool: cf.ProcessPoolExecutor | None = None,
                   workers: int = 2) -> float:
    """Tasks per second: ``n`` unbatched ``submit(tiny_task, i)`` on a warmed
    ProcessPoolExecutor(``workers``), then wait for all."""
    with _pool(pool, workers) as p:
        _warm(p, 50 * workers)
        t0 = time.perf_counter()
        futures = [p.submit(tiny_task, i) for i in range(n)]
        done, not_done = cf.wait(futures, timeout=max(60.0, n / 1000))
        elapsed = time.perf_counter() - t0
        if not_done:
            raise TimeoutError(f"{len(not_done)} PPE tasks unfinished")
        for f in done:
            f.result()
    return n / elapsed


# --------------------------------------------------------------------------------------------
# Process start + connect floor
# --------------------------------------------------------------------------------------------

SPAWN_CHILD = (
    "import zmq, msgpack, os\n"
    "c = zmq.Context()\n"
    "s = c.socket(zmq.DEALER)\n"
    "s.linger = 0\n"
    "s.rcvtimeo = 10000\n"
    "s.connect(os.environ['EP'])\n"
    "s.send(msgpack.packb({'hi': 1}))\n"
    "try:\n"
    "    s.recv()\n"
    "finally:\n"
    "    s.close(0)\n"
    "    c.term()\n"
)


def _instance_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _PASS_ENV or k.startswith("LC_")}
    env["EP"] = endpoint
    return env


def spawn_connect_floor(n: int, *, warmup: int = 1, timeout: float = 15.0) -> list[float]:
    """``n`` times (seconds) from just before ``Popen([python, -c, ...])`` to the arrival at
    our ROUTER of the first frame the child sends after ``import zmq, msgpack`` and connect.
    The child gets the minimal environment an instance gets; it is answered and reaped."""
    samples: list[float] = []
    ctx = zmq.Context()
    router: zmq.Socket[bytes] | None = None
    try:
        router = ctx.socket(zmq.ROUTER)
        router.linger = 0
        port = router.bind_to_random_port("tcp://127.0.0.1")
        env = _instance_env(f"tcp://127.0.0.1:{port}")
        cmd = [sys.executable, "-c", SPAWN_CHILD]
        for i in range(warmup + n):
            t0 = time.perf_counter_ns()
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                if not router.poll(int(timeout * 1000)):
                    raise TimeoutError(
                        f"spawned child sent nothing in {timeout} s (exit code {proc.poll()})")
                rid, _body = router.recv_multipart()
                t1 = time.perf_counter_ns()
                router.send_multipart([rid, b"bye"])
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            finally:
                stop_process(proc)
            if i >= warmup:
                samples.append((t1 - t0) / 1e9)
    finally:
        if router is not None:
            router.close(0)
        ctx.term()
    return samples


# --------------------------------------------------------------------------------------------
# Codec floor
# --------------------------------------------------------------------------------------------


def raw_codec(n: int) -> float:
    """Nanoseconds per encode+decode of an EXECUTE_REQUEST-shaped message with plain msgpack:
    packb(inner payload map), packb(body map), unpackb(body), unpackb(payload)."""
    packb, unpackb = msgpack.packb, msgpack.unpackb
    data = PAYLOAD
    ts = time.time()
    t0 = time.perf_counter_ns()
    for i in range(n):
        inner = packb({"method": "echo", "data": data, "deadline": None})
        body = packb({"message_type": 3, "request_id": i, "timestamp": ts, "payload": inner,
                      "version": 1})
        msg = unpackb(body)
        unpackb(msg["payload"])
    return (time.perf_counter_ns() - t0) / n
