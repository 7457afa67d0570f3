"""Many authenticated, heartbeating connections on one listener: the server's CPU and its
memory per connection, beside a raw pyzmq ROUTER holding the same peers.

The server (ours: RouterPump + ServerProtocol + AuthPolicy, expecting every instance id with
its own secret; baseline: a bare ROUTER thread echoing each msgpack frame) runs in a fresh
interpreter (``run_in_child``) so that its RSS growth is not hidden by memory an earlier
benchmark freed. Helper processes (``bench/_conn_clients.py``) each hold a share of the
DEALERs, authenticate (ours) and heartbeat every second, spread over the second.

Figures: the server process's CPU % over the measuring interval (psutil ``cpu_percent``,
that process only; 100 % = one core) and (RSS once every peer is connected and heartbeating -
RSS before any connected) / n. DESIGN §6: 1 000 heartbeating peers < 10 % of a core; ~28 KB a
peer for a bare ROUTER, so we allow 64 KB.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import secrets
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import BenchContext, Measurement, Row, run_in_child, stop_process

CLIENTS_SCRIPT = Path(__file__).resolve().with_name("_conn_clients.py")
REPO_ROOT = CLIENTS_SCRIPT.parent.parent

CPU = "heartbeating connections, server CPU"
MEM = "heartbeating connections, server RSS per connection"
CPU_RAW = "raw ROUTER echo, same peers, CPU"
MEM_RAW = "raw ROUTER echo, same peers, RSS per connection"


class _RawRouter:
    """The baseline server: one thread owning a ROUTER that echoes every frame (msgpack
    unpack + pack, like bench/_echo_server.py) and remembers each routing id it has seen."""

    def __init__(self) -> None:
        import zmq

        self._zmq = zmq
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.sndhwm = self.sock.rcvhwm = 100_000
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.frames_in = 0
        self.peers: set[bytes] = set()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="raw-router", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def live(self) -> int:
        return len(self.peers)

    def start(self) -> str:
        self._thread.start()
        return self.endpoint

    def _run(self) -> None:
        import msgpack

        zmq, sock = self._zmq, self.sock
        packb, unpackb = msgpack.packb, msgpack.unpackb
        while not self._stop:
            if not sock.poll(100):
                continue
            for _ in range(2048):
                try:
                    rid, body = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except ValueError:
                    continue
                self.frames_in += 1
                self.peers.add(rid)
                try:
                    sock.send_multipart([rid, packb(unpackb(body))], zmq.NOBLOCK)
                except (zmq.ZMQError, ValueError):
                    pass

    def stop(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close(0)
        self.ctx.term()


class _OurServer:
    def __init__(self, n: int, interval: float) -> None:
        from bench._proto_server import ProtocolServer
        from spear_actors.config import ConnectionConfig

        limit = n + 64
        self.server = ProtocolServer(max_connections=limit, config=ConnectionConfig(
            max_connections=limit, heartbeat_interval=interval,
            heartbeat_timeout=3 * interval))

    def start(self) -> str:
        return self.server.start()

    @property
    def frames_in(self) -> int:
        return self.server.pump.counters["frames_in"]

    @property
    def live(self) -> int:
        return self.server.authenticated

    def stop(self) -> None:
        self.server.stop()


def serve_and_measure(mode: str, n: int, procs: int, interval: float, settle: float,
                      measure: float, timeout: float = 60.0) -> dict[str, Any]:
    """Run in a fresh interpreter: start the server (``spear`` or ``raw``), connect ``n``
    peers from ``procs`` helper processes, let them heartbeat, measure. Helpers are always
    killed."""
    import psutil

    me = psutil.Process()
    peers = [(f"conn-{i}", secrets.token_urlsafe(32)) for i in range(n)]
    server: Any = _OurServer(n, interval) if mode == "spear" else _RawRouter()
    endpoint = server.start()
    children: list[subprocess.Popen[bytes]] = []
    try:
        gc.collect()
        time.sleep(0.1)
        rss0 = me.memory_info().rss
        if mode == "spear":
            for iid, secret in peers:
                server.server.expect(iid, secret)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT),
                                                         env.get("PYTHONPATH")) if p)
        per = math.ceil(n / procs)
        for k in range(procs):
            share = peers[k * per:(k + 1) * per]
            if not share:
                continue
            p = subprocess.Popen([sys.executable, str(CLIENTS_SCRIPT)], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            children.append(p)
            assert p.stdin is not None
            p.stdin.write(json.dumps({"endpoint": endpoint, "mode": mode,
                                      "interval": interval, "peers": share}).encode())
            p.stdin.close()
            p.stdin = None
        pending = {p.stdout: p for p in children if p.stdout is not None}
        deadline = time.monotonic() + timeout
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(pending)} helper(s) not ready in {timeout} s; "
                                   f"{server.live}/{n} peers live")
            ready, _, _ = select.select(list(pending), [], [], min(remaining, 1.0))
            for out in ready:
                line = out.readline()
                if not line.startswith(b"ready"):
                    proc = pending[out]
                    raise RuntimeError(f"helper said {line!r} (exit code {proc.poll()})")
                del pending[out]
        while server.live < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {server.live}/{n} peers live in {timeout} s")
            time.sleep(0.01)
        time.sleep(settle)
        frames0 = server.frames_in
        me.cpu_percent(None)
        t0 = time.monotonic()
        time.sleep(measure)
        cpu = me.cpu_percent(None)
        elapsed = time.monotonic() - t0
        frames = server.frames_in - frames0
        rss1 = me.memory_info().rss
        return {"cpu": cpu, "rss_per_conn": (rss1 - rss0) / n, "frames_per_s": frames / elapsed,
                "live": server.live, "rss0": rss0, "rss1": rss1}
    finally:
        for p in children:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
            stop_process(p)
        server.stop()


def run(ctx: BenchContext) -> list[Row]:
    n = ctx.scale(1_000, 200)
    procs = ctx.scale(4, 2)
    interval = 1.0
    measure = 2.0 if ctx.quick else 5.0
    settle = 0.5 if ctx.quick else 1.5
    repeats = ctx.repeats if not ctx.quick else 1
    ours: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    for r in range(repeats):
        for mode, out in (("spear", ours), ("raw", raw)):
            ctx.progress(f"{r + 1}/{repeats}: {mode} server, {n} peers from {procs} helpers, "
                         f"measuring {measure} s")
            res = run_in_child(serve_and_measure, mode, n, procs, interval, settle, measure,
                               timeout=180.0)
            out.append(res)
            ctx.progress(f"   cpu {res['cpu']:.1f} %, {res['rss_per_conn'] / 1024:.1f} KB/peer, "
                         f"{res['frames_per_s']:.0f} frames/s in, {res['live']}/{n} live")
    lost = min(x["live"] for x in ours)
    fps = sorted(x["frames_per_s"] for x in ours)[len(ours) // 2]
    note = (f"{n} DEALERs from {procs} helper processes, heartbeat every {interval:g} s; "
            f"server in a fresh interpreter, CPU over {measure} s (100 % = one core); "
            f"ours saw {fps:.0f} frames/s, at least {lost}/{n} peers authenticated at the end"
            + ("; quick: 1 repeat" if ctx.quick else ""))
    return [
        Row(Measurement(f"{n} {CPU}", "%", [x["cpu"] for x in ours]),
            Measurement(f"{n} {CPU_RAW}", "%", [x["cpu"] for x in raw]),
            "value <= 10 %", note=note),
        Row(Measurement(f"{n} {MEM}", "KB", [x["rss_per_conn"] / 1024 for x in ours]),
            Measurement(f"{n} {MEM_RAW}", "KB", [x["rss_per_conn"] / 1024 for x in raw]),
            "value <= 64 KB"),
    ]
