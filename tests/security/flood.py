"""A flood of peers that connect, send one frame that is not an AUTH_REQUEST, and never
authenticate (programs/flood.py in a child process, so their sockets are not ours).

Used by ``test_connections.py`` (2 000 peers) and by ``scripts/soak`` (10 000); no pytest
here. :func:`run_flood` checks that every frame is counted, that the pending sessions stay
within ``max_pending`` and are reclaimed by the auth timeout although the peers stay
connected, and that our memory stays bounded.
"""

from __future__ import annotations

import selectors
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from spear_actors import SpearSystem

FLOOD = Path(__file__).parent / "programs" / "flood.py"
RSS_PER_PEER = 64 << 10
"""Memory a never-authenticated peer may cost us while it stays connected (libzmq's pipe and
buffers are ~28 KB); the protocol session itself is gone after auth_timeout."""
RSS_BASE = 64 << 20
PER_PROCESS = 4_000
RECLAIM_SLACK = 5.0
"""Beyond auth_timeout: the 100 ms tick, and a loaded machine."""


NOT_REFUSALS = frozenset({"send_failed", "peers_cut", "heartbeat_flood"})
"""Counted in ``errors`` but not a refused frame: a failed send, a muted peer's connection
cut, a heartbeat accepted but not answered (answers are rate limited)."""


def refusals(system: SpearSystem) -> int:
    """Frames refused and counted so far: errors by code (but NOT_REFUSALS) plus failed
    authentications (counted apart)."""
    metrics = system.metrics()
    return metrics["auth_failures"] + sum(n for code, n in metrics["errors"].items()
                                          if code not in NOT_REFUSALS)


@dataclass
class FloodResult:
    peers: int
    sent: int = 0
    counted: int = 0
    opened: int = 0
    too_many_pending: int = 0
    peak_pending: int = 0
    max_pending: int = 0
    answers: int = -1
    rss_growth: int = 0
    arrived_after: float | None = None
    """Seconds from starting the flood until every frame had come in and been counted."""
    reclaimed_after: float | None = None
    """Seconds from then until no unauthenticated session was left."""
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        arrived = ("not all" if self.arrived_after is None
                   else f"all in {self.arrived_after:.1f} s after the start")
        reclaimed = ("never" if self.reclaimed_after is None
                     else f"{self.reclaimed_after:.1f} s after that")
        return (f"{self.peers} peers: {self.sent} frames sent, {self.counted} counted, "
                f"{self.opened} sessions opened, {self.too_many_pending} over max_pending, "
                f"peak pending {self.peak_pending}/{self.max_pending}, {arrived}, reclaimed "
                f"{reclaimed}, "
                f"{self.answers} answers, RSS +{self.rss_growth >> 20} MiB")


class _Sampler:
    def __init__(self, system: SpearSystem, result: FloodResult) -> None:
        self.system = system
        self.result = result
        self.me = psutil.Process()
        self.rss_before = self.me.memory_info().rss

    def sample(self) -> dict[str, int]:
        metrics = self.system.metrics()
        connections: dict[str, int] = metrics["connection_totals"]
        r = self.result
        r.peak_pending = max(r.peak_pending, connections["pending"])
        r.rss_growth = max(r.rss_growth, self.me.memory_info().rss - self.rss_before)
        return connections


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline().strip()


def run_flood(system: SpearSystem, peers: int, *, auth_timeout: float, max_pending: int,
              wait: float = 30.0) -> FloodResult:
    """Flood ``system`` with ``peers`` unauthenticated peers and check what it did."""
    result = FloodResult(peers, max_pending=max_pending)
    sampler = _Sampler(system, result)
    refused_before = refusals(system)
    start = sampler.sample()
    errors_before = system.metrics()["errors"].get("too_many_pending", 0)
    authenticated = start["active"]
    started = time.monotonic()
    # a zmq socket costs its process two descriptors: at most PER_PROCESS peers in each
    chunks = [min(PER_PROCESS, peers - start) for start in range(0, peers, PER_PROCESS)]
    procs = [subprocess.Popen([sys.executable, str(FLOOD), system.endpoint, str(n)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for n in chunks]
    try:
        for proc, n in zip(procs, chunks, strict=True):
            line = _read_line(proc, wait)
            if line != f"sent {n}":
                result.violations.append(f"the flood program said {line!r}")
                return result
        result.sent = peers
        deadline = time.monotonic() + wait
        # every frame counted (a burst of connects overflows the listen backlog: the last
        # ones arrive after TCP's SYN retries, up to ~30 s later); then every
        # unauthenticated session reclaimed, within auth_timeout of the last arrival
        all_in: float | None = None
        while time.monotonic() < deadline:
            connections = sampler.sample()
            result.counted = refusals(system) - refused_before
            if result.counted >= peers and all_in is None:
                all_in = time.monotonic()
                result.arrived_after = all_in - started
            if all_in is not None and connections["pending"] == 0:
                result.reclaimed_after = time.monotonic() - all_in
                break
            time.sleep(0.05)
        connections = sampler.sample()
        metrics = system.metrics()
        result.opened = connections["total_opened"] - start["total_opened"]
        result.too_many_pending = metrics["errors"].get("too_many_pending", 0) - errors_before
        if result.counted != peers:
            result.violations.append(f"{result.counted} of {peers} frames counted")
        if result.reclaimed_after is None:
            result.violations.append(f"{connections['pending']} unauthenticated sessions "
                                     f"still open {wait} s after the flood")
        elif result.reclaimed_after > auth_timeout + RECLAIM_SLACK:
            result.violations.append(f"reclaimed only {result.reclaimed_after:.1f} s after "
                                     f"the last frame came in (auth_timeout {auth_timeout} s)")
        if result.opened + result.too_many_pending != peers:
            result.violations.append(f"{result.opened} sessions and {result.too_many_pending}"
                                     f" refused for {peers} peers")
        if result.peak_pending > max_pending:
            result.violations.append(f"{result.peak_pending} pending sessions, more than "
                                     f"max_pending {max_pending}")
        if connections["active"] != authenticated:
            result.violations.append(f"{connections['active']} authenticated connections, "
                                     f"{authenticated} before")
        bound = RSS_BASE + RSS_PER_PEER * peers
        if result.rss_growth > bound:
            result.violations.append(f"RSS grew by {result.rss_growth >> 20} MiB, more than "
                                     f"{bound >> 20} MiB")
        # let the peers go
        result.answers = 0
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            answer = _read_line(proc, wait)
            if answer.startswith("answers "):
                result.answers += int(answer.split()[1])
        return result
    finally:
        for proc in procs:
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(wait)
            if proc.stdout is not None:
                proc.stdout.close()
