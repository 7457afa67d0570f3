"""Fixtures for the execution tests: a real SpearSystem with real instance processes.

``system`` starts a SpearSystem with short timings (heartbeats every 0.2 s, restarts after
0.05-0.3 s) and always shuts it down; ``no_leftovers`` then checks that no pykka actor and no
thread started during the test is still alive (the suite-wide fixture checks processes).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pykka
import pytest
from helpers import wait_until

from spear_actors import (
    ConnectionConfig,
    InstanceConfig,
    RestartPolicy,
    SpearSystem,
    SystemConfig,
)

PROGRAMS = Path(__file__).parent / "programs"
ECHO = (sys.executable, "-m", "spear_actors.examples.echo")
CRASH = (sys.executable, "-m", "spear_actors.examples.crash")
HANG = (sys.executable, "-m", "spear_actors.examples.hang")
PID_ECHO = (sys.executable, str(PROGRAMS / "pid_echo.py"))
ROGUE = (sys.executable, str(PROGRAMS / "rogue.py"))

WAIT = 15.0
"""Bound for waits that normally take well under a second (instance start on a loaded
2-core machine included)."""

SHORT_CONNECTION = ConnectionConfig(heartbeat_interval=0.2, heartbeat_timeout=0.6)
SHORT_RESTART = RestartPolicy(backoff_min=0.05, backoff_max=0.3)


def instance_config(command: Sequence[str], **overrides: Any) -> InstanceConfig:
    """An InstanceConfig with the short restart policy and a short stop timeout."""
    values: dict[str, Any] = {"command": list(command), "restart": SHORT_RESTART,
                              "stop_timeout": 2.0}
    values.update(overrides)
    return InstanceConfig(**values)


def launch(system: SpearSystem, task_id: str, command: Sequence[str], count: int = 1,
           **overrides: Any) -> list[str]:
    """Create ``count`` instances of ``task_id`` and wait until all are READY; their ids."""
    ids = [system.create_instance(task_id, instance_config(command, **overrides))
           for _ in range(count)]
    for iid in ids:
        system.wait_ready(iid, timeout=WAIT)
    return ids


def _live_threads() -> dict[int, threading.Thread]:
    return {t.ident or 0: t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """After the test: no live pykka actor and no thread the test started is left."""
    before = set(_live_threads())
    yield

    def new_threads() -> list[threading.Thread]:
        return [t for ident, t in _live_threads().items() if ident not in before]

    try:
        wait_until(lambda: not pykka.ActorRegistry.get_all(), timeout=WAIT,
                   message="every pykka actor to stop")
    except AssertionError:
        actors = pykka.ActorRegistry.get_all()
        pykka.ActorRegistry.stop_all(timeout=5)
        pytest.fail(f"test left live actors: {actors}")
    try:
        wait_until(lambda: not new_threads(), timeout=WAIT, message="test threads to end")
    except AssertionError:
        pytest.fail(f"test left threads running: {[t.name for t in new_threads()]}")


def _run(connection: ConnectionConfig) -> Iterator[SpearSystem]:
    spear = SpearSystem.start(SystemConfig(connection=connection))
    try:
        yield spear
    finally:
        spear.shutdown(timeout=WAIT)


@pytest.fixture
def system(no_leftovers: None) -> Iterator[SpearSystem]:
    """A running SpearSystem with short heartbeat and restart timings; always shut down."""
    yield from _run(SHORT_CONNECTION)


@pytest.fixture
def busy_system(no_leftovers: None) -> Iterator[SpearSystem]:
    """Like ``system`` but with a 2 s heartbeat timeout, for tests that saturate the machine.

    With 0.6 s, an instance answering thousands of requests on a loaded 2-core machine
    (other test runs beside this one) was seen to miss its heartbeats (client-side gaps of
    0.67 s measured) and get killed for ``heartbeat_timeout`` mid-test.
    """
    yield from _run(ConnectionConfig(heartbeat_interval=0.2, heartbeat_timeout=2.0))

