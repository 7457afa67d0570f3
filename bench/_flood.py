"""Hostile local peers flooding a listener (DESIGN.md section 11), for ``bench_flood`` and the
security tests.

Run as a script, one process per flooder (``python bench/_flood.py --endpoint E --mode M
--seconds S``), each a plain pyzmq DEALER (only zmq and msgpack are imported):

- ``heartbeat``: well-formed HEARTBEAT frames without authenticating;
- ``auth``: AUTH_REQUEST frames naming ``--instance-id`` with a wrong token;
- ``spin``: no traffic at all, a busy loop: the CPU cost of a flooder alone (a control).

A flooder sends as fast as it can (non-blocking sends in bursts; when its pipe is full it
waits on the socket, at most a few ms). When the server cuts its connection (a muted peer,
DESIGN.md section 11) it opens a fresh DEALER at once, as a real attacker would, and carries
on under a new routing id. It prints ``ready`` once connected, floods when it reads ``go`` on
stdin, and stops by itself after ``--seconds`` or ``--max-frames`` (both capped by
:data:`MAX_SECONDS` and :data:`MAX_FRAMES`), when its stdin is closed, or when its parent goes
away; then prints one JSON line: frames sent, connections opened, answers read.

Only loopback is accepted: an endpoint that is not ``tcp://127.0.0.1:*``,
``tcp://localhost:*`` or ``ipc://*`` is refused (:func:`check_local`), here and in the child.

:class:`Flood` starts and always reaps a group of flooders from Python.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import msgpack
import zmq

MAX_SECONDS = 60.0
"""Hard bound on one flood, whatever is asked."""
MAX_FRAMES = 50_000_000
"""Hard bound on the frames one flooder sends, whatever is asked."""
MODES = ("heartbeat", "auth", "spin")
WRONG_TOKEN = "not-the-secret-" + "x" * 32
"""Long enough to pass the default token validator, so the secret itself is compared."""
BURST = 256
CHECK_EVERY = 0.05
"""Seconds between checks of stdin and of the parent."""
READY_TIMEOUT = 30.0
GO_TIMEOUT = 60.0
SCRIPT = os.path.abspath(__file__)


def check_local(endpoint: str) -> str:
    """``endpoint`` if it is loopback TCP (127.0.0.1 or localhost) or ipc; else ValueError."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return endpoint
    if endpoint.startswith("tcp://"):
        host, sep, port = endpoint[len("tcp://"):].rpartition(":")
        if sep and host in ("127.0.0.1", "localhost") and port.isdigit():
            return endpoint
    raise ValueError(f"refusing to flood {endpoint!r}: only tcp://127.0.0.1, "
                     "tcp://localhost or ipc:// endpoints")


def flood_body(mode: str, instance_id: str = "") -> bytes:
    """The frame a flooder repeats (protocol-shaped msgpack, DESIGN.md section 2)."""
    payload: dict[str, Any]
    if mode == "heartbeat":
        payload = {"sequence": 1}
        message_type = 6
    elif mode == "auth":
        if not instance_id:
            raise ValueError("an auth flood names an instance id")
        payload = {"instance_id": instance_id, "token": WRONG_TOKEN, "client_version": "1",
                   "client_type": "process", "extra_params": {}}
        message_type = 1
    else:
        raise ValueError(f"no frames in mode {mode!r}")
    body: bytes = msgpack.packb({
        "message_type": message_type, "request_id": 1, "timestamp": time.time(),
        "payload": msgpack.packb(payload, use_bin_type=True), "version": 1,
    }, use_bin_type=True)
    return body


# -- the flooder (child process) -------------------------------------------------------------
class _Peer:
    """One DEALER and the monitor that tells when the server cut it."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str,
                 plain_user: str = "") -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if plain_user:  # a gated listener (ConnectionConfig.gate="plain"): wrong credentials
            self.sock.setsockopt(zmq.PLAIN_USERNAME, plain_user.encode())
            self.sock.setsockopt(zmq.PLAIN_PASSWORD, WRONG_TOKEN.encode())
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.sock.connect(endpoint)

    def cut(self) -> bool:
        """Did the server close this connection?"""
        cut = False
        while True:
            try:
                event = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return cut
            cut = cut or int.from_bytes(event[0][:2], "little") == zmq.EVENT_DISCONNECTED

    def drain(self) -> int:
        answers = 0
        while True:
            try:
                self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return answers
            answers += 1

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)


def _stdin_closed() -> bool:
    if select.select([sys.stdin], [], [], 0)[0]:
        return not sys.stdin.readline()
    return False


def _spin(end: float, parent: int) -> dict[str, Any]:
    loops = 0
    next_check = 0.0
    while (now := time.monotonic()) < end:
        for _ in range(10_000):
            loops += 1
        if now >= next_check:
            next_check = now + CHECK_EVERY
            if os.getppid() != parent or _stdin_closed():
                break
    return {"sent": 0, "connections": 0, "answers": 0, "loops": loops}


def run_flooder(endpoint: str, mode: str, seconds: float, max_frames: int,
                instance_id: str = "", plain: bool = False) -> dict[str, Any]:
    """The flooder's body: wait for ``go``, flood, return the tallies."""
    check_local(endpoint)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    seconds = min(max(0.0, seconds), MAX_SECONDS)
    max_frames = min(max(0, max_frames), MAX_FRAMES)
    parent = os.getppid()
    body = flood_body(mode, instance_id) if mode != "spin" else b""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    peer = _Peer(ctx, endpoint, instance_id if plain else "") if mode != "spin" else None
    try:
        print("ready", flush=True)
        if not select.select([sys.stdin], [], [], GO_TIMEOUT)[0] or \
                sys.stdin.readline().strip() != "go":
            return {"sent": 0, "connections": 0, "answers": 0, "aborted": True}
        started = time.monotonic()
        end = started + seconds
        if peer is None:
            result = _spin(end, parent)
            result["seconds"] = time.monotonic() - started
            return result
        sent = answers = stalls = 0
        connections = 1
        next_check = started + CHECK_EVERY
        poller = zmq.Poller()
        poller.register(peer.sock, zmq.POLLOUT)
        poller.register(peer.monitor, zmq.POLLIN)
        while sent < max_frames:
            send = peer.sock.send
            stalled = False
            for _ in range(min(BURST, max_frames - sent)):
                try:
                    send(body, zmq.NOBLOCK)
                except zmq.Again:
                    stalled = True
                    break
                sent += 1
            now = time.monotonic()
            if now >= end:
                break
            if peer.cut():  # muted and cut: a fresh DEALER, a new routing id
                answers += peer.drain()
                peer.close()
                peer = _Peer(ctx, endpoint, instance_id if plain else "")
                connections += 1
                poller = zmq.Poller()
                poller.register(peer.sock, zmq.POLLOUT)
                poller.register(peer.monitor, zmq.POLLIN)
                continue
            if stalled:
                stalls += 1
                poller.poll(5)
            if now >= next_check:
                next_check = now + CHECK_EVERY
                answers += peer.drain()
                if os.getppid() != parent or _stdin_closed():
                    break
        answers += peer.drain()
        return {"sent": sent, "connections": connections, "answers": answers,
                "stalls": stalls, "seconds": time.monotonic() - started}
    finally:
        if peer is not None:
            peer.close()
        ctx.term()


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--max-frames", type=int, default=MAX_FRAMES)
    p.add_argument("--instance-id", default="")
    p.add_argument("--plain", action="store_true",
                   help="present the instance id and a wrong secret as PLAIN credentials")
    args = p.parse_args(argv)
    result = run_flooder(args.endpoint, args.mode, args.seconds, args.max_frames,
                         args.instance_id, args.plain)
    print(json.dumps(result), flush=True)
    return 0


# -- the parent's side ---------------------------------------------------------------------------
@dataclass
class FloodResult:
    mode: str
    processes: int
    sent: int = 0
    connections: int = 0
    answers: int = 0
    seconds: float = 0.0
    """From ``go`` to the last flooder's end, as the parent saw it."""
    per_process: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        return (f"{self.processes} {self.mode} flooders: {self.sent} frames in "
                f"{self.seconds:.1f} s ({self.rate:.0f}/s), {self.connections} connections, "
                f"{self.answers} answers")


def _read_line(stream: IO[str], timeout: float) -> str:
    if not select.select([stream], [], [], max(0.0, timeout))[0]:
        return ""
    return stream.readline().strip()


class Flood:
    """``processes`` flooders against ``endpoint``; every one is killed and reaped on exit.

    ``with Flood(endpoint, "heartbeat", seconds=10) as flood: flood.go(); ...;
    result = flood.wait()``. ``__enter__`` returns once every flooder is connected and ready;
    :meth:`go` starts them all at once; :meth:`stop` ends them early.
    """

    def __init__(self, endpoint: str, mode: str, processes: int = 4, seconds: float = 10.0,
                 max_frames: int = MAX_FRAMES, instance_id: str = "", plain: bool = False
                 ) -> None:
        self.endpoint = check_local(endpoint)
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "auth" and not instance_id:
            raise ValueError("an auth flood names an instance id")
        self.mode = mode
        self.processes = processes
        self.seconds = min(seconds, MAX_SECONDS)
        self.max_frames = min(max_frames, MAX_FRAMES)
        self.instance_id = instance_id
        self.plain = plain
        self.procs: list[subprocess.Popen[str]] = []
        self.started: float | None = None

    def __enter__(self) -> Flood:
        try:
            args = [sys.executable, SCRIPT, "--endpoint", self.endpoint, "--mode", self.mode,
                    "--seconds", str(self.seconds), "--max-frames", str(self.max_frames),
                    "--instance-id", self.instance_id, *(["--plain"] if self.plain else [])]
            for _ in range(self.processes):
                self.procs.append(subprocess.Popen(args, stdin=subprocess.PIPE,
                                                   stdout=subprocess.PIPE, text=True))
            deadline = time.monotonic() + READY_TIMEOUT
            for proc in self.procs:
                assert proc.stdout is not None
                line = _read_line(proc.stdout, deadline - time.monotonic())
                if line != "ready":
                    raise RuntimeError(f"a flooder said {line!r} instead of 'ready' "
                                       f"(exit code {proc.poll()})")
        except BaseException:
            self.close()
            raise
        return self

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        self.started = time.monotonic()

    def stop(self) -> None:
        """Ask every flooder to stop now (they notice within :data:`CHECK_EVERY`)."""
        for proc in self.procs:
            if proc.stdin is not None and not proc.stdin.closed:
                with contextlib.suppress(OSError):
                    proc.stdin.close()

    def wait(self, timeout: float | None = None) -> FloodResult:
        """Wait for every flooder to finish and report (TimeoutError past ``timeout``,
        default the flood's length plus 30 s)."""
        deadline = time.monotonic() + (self.seconds + 30.0 if timeout is None else timeout)
        result = FloodResult(self.mode, self.processes)
        for proc in self.procs:
            assert proc.stdout is not None
            line = _read_line(proc.stdout, deadline - time.monotonic())
            if not line:
                raise TimeoutError(f"a {self.mode} flooder did not report in time")
            report = json.loads(line)
            result.per_process.append(report)
            result.sent += int(report.get("sent", 0))
            result.connections += int(report.get("connections", 0))
            result.answers += int(report.get("answers", 0))
        if self.started is not None:
            result.seconds = time.monotonic() - self.started
        for proc in self.procs:
            proc.wait(max(0.1, deadline - time.monotonic()))
        return result

    def close(self) -> None:
        self.stop()
        for proc in self.procs:
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5.0)
            if proc.stdout is not None:
                proc.stdout.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
