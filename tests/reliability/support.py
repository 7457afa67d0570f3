"""Shared helpers for the reliability and security tests (``tests/security`` imports them too).

Real SpearSystems with real instance processes, short timings (heartbeats every 0.2 s, a
0.6 s heartbeat timeout, restarts after 0.05 s), bounded waits everywhere. :func:`leftover_check`
is what every test ends with: no child process, no live Pykka actor, no thread it started.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pykka
from helpers import child_processes, wait_until

from spear_actors import (
    ConnectionConfig,
    InstanceConfig,
    RestartPolicy,
    SpearError,
    SpearSystem,
    SystemConfig,
)

HERE = Path(__file__).parent
PROGRAMS = HERE / "programs"
ECHO = (sys.executable, "-m", "spear_actors.examples.echo")
CRASH = (sys.executable, "-m", "spear_actors.examples.crash")
HANG = (sys.executable, "-m", "spear_actors.examples.hang")

HEARTBEAT_INTERVAL = 0.2
HEARTBEAT_TIMEOUT = 0.6
SHORT = ConnectionConfig(heartbeat_interval=HEARTBEAT_INTERVAL,
                         heartbeat_timeout=HEARTBEAT_TIMEOUT)
FAST_RESTART = RestartPolicy(backoff_min=0.05, backoff_max=0.5)
WAIT = 15.0
"""Bound for waits that normally end well within a second: a Python start with ``import zmq``
on a shared 2-core machine at load 8-10 has been seen to take over 2 s."""
LEFTOVER_WAIT = 10.0

ECHO_LATENCY_MAX = 2.5
"""Worst echo round trip tolerated on a healthy instance while something else misbehaves.
Generous (a loaded 2-core machine shared with other test runs stalls us for hundreds of ms),
but a pump blocked on a slow peer or an actor stuck behind a flood would blow it."""
ECHO_LATENCY_MEDIAN = 0.25


def program(name: str) -> tuple[str, ...]:
    return (sys.executable, str(PROGRAMS / f"{name}.py"))


def instance_config(command: Sequence[str], **overrides: Any) -> InstanceConfig:
    values: dict[str, Any] = {"command": list(command), "restart": FAST_RESTART,
                              "stop_timeout": 2.0}
    values.update(overrides)
    return InstanceConfig(**values)


def launch(system: SpearSystem, task_id: str, command: Sequence[str], count: int = 1,
           **overrides: Any) -> list[str]:
    """Create ``count`` instances and wait until every one is READY; their ids."""
    ids = [system.create_instance(task_id, instance_config(command, **overrides))
           for _ in range(count)]
    for iid in ids:
        system.wait_ready(iid, timeout=WAIT)
    return ids


# -- leftovers ---------------------------------------------------------------------------------
@contextlib.contextmanager
def leftover_check() -> Iterator[None]:
    """Around a test body: afterwards no new child process, no live actor, no new thread."""
    threads_before = {t.ident for t in threading.enumerate()}
    children_before = set(child_processes())
    yield
    wait_until(lambda: not set(child_processes()) - children_before, LEFTOVER_WAIT,
               message="the system's child processes to go")
    try:
        wait_until(lambda: not pykka.ActorRegistry.get_all(), LEFTOVER_WAIT,
                   message="every pykka actor to stop")
    except AssertionError:
        live = pykka.ActorRegistry.get_all()
        pykka.ActorRegistry.stop_all(timeout=5)
        raise AssertionError(f"live actors left behind: {live}") from None

    def new_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate()
                if t.ident not in threads_before and t.is_alive()]
    try:
        wait_until(lambda: not new_threads(), LEFTOVER_WAIT)
    except AssertionError:
        raise AssertionError(
            f"threads left behind: {[t.name for t in new_threads()]}") from None


class Systems:
    """Starts SpearSystems (short timings by default) and always shuts them all down."""

    def __init__(self) -> None:
        self.started: list[SpearSystem] = []

    def start(self, connection: ConnectionConfig = SHORT, **overrides: Any) -> SpearSystem:
        system = SpearSystem.start(SystemConfig(connection=connection, **overrides))
        self.started.append(system)
        return system

    def shutdown_all(self) -> None:
        for system in self.started:
            system.shutdown(timeout=WAIT)


# -- logs --------------------------------------------------------------------------------------
CRASH_WORDS = ("Traceback", "crashed", "raised")


def crash_reports(records: list[Any]) -> list[str]:
    """Captured loguru records at ERROR or above that tell of an unhandled exception."""
    return [str(r) for r in records if r.record["level"].no >= 40
            and any(word in str(r) for word in CRASH_WORDS)]


# -- a healthy instance under observation ------------------------------------------------------
@dataclass
class ProbeResult:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)

    @property
    def median(self) -> float:
        return statistics.median(self.latencies) if self.latencies else 0.0

    def describe(self) -> str:
        return (f"{self.count} echoes, median {self.median * 1000:.1f} ms, "
                f"worst {self.worst * 1000:.1f} ms, {len(self.errors)} errors "
                f"{self.errors[:3]}")

    def assert_healthy(self, minimum: int = 20, median: float = ECHO_LATENCY_MEDIAN) -> None:
        assert not self.errors, f"the healthy instance failed requests: {self.describe()}"
        assert self.count >= minimum, f"the healthy instance barely served: {self.describe()}"
        assert self.worst <= ECHO_LATENCY_MAX, f"echo latency not bounded: {self.describe()}"
        assert self.median <= median, f"echo latency degraded: {self.describe()}"


class EchoProbe:
    """A thread sending one echo request after another to ``target``, timing each.

    Paced with ``Event.wait(pause)`` between requests so it does not hog a loaded machine.
    """

    def __init__(self, system: SpearSystem, target: str, pause: float = 0.005,
                 timeout: float = 10.0) -> None:
        self.system = system
        self.target = target
        self.pause = pause
        self.timeout = timeout
        self.result = ProbeResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="echo-probe", daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            data = f"probe-{n}".encode()
            started = time.monotonic()
            try:
                answer = self.system.execute(self.target, data, timeout=self.timeout)
            except SpearError as exc:
                self.result.errors.append(repr(exc))
            else:
                if answer != data:
                    self.result.errors.append(f"wrong answer {answer[:40]!r} to {data!r}")
                self.result.latencies.append(time.monotonic() - started)
            self._stop.wait(self.pause)

    def __enter__(self) -> EchoProbe:
        self._thread.start()
        return self

    def stop(self) -> ProbeResult:
        self._stop.set()
        self._thread.join(self.timeout + 5)
        assert not self._thread.is_alive(), "the echo probe is stuck"
        return self.result

    def __exit__(self, *exc: object) -> None:
        self.stop()


def process_gone(pid: int) -> bool:
    """Neither running nor a zombie."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_DEAD
    except psutil.NoSuchProcess:
        return True

