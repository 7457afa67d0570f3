"""Fixtures for the actor-system tests: a started SpearSystem that is always shut down.

After the shutdown the ``make_system`` fixture checks that the system left nothing behind: no
child process, no live Pykka actor and no thread that was not there before (bounded waits).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pykka
import pytest
from helpers import wait_until

from spear_actors import SpearSystem, SystemConfig

from .support import CONNECTION

LEFTOVER_WAIT = 5.0


def _children() -> set[tuple[int, float]]:
    found = set()
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            found.add((p.pid, p.create_time()))
    return found


@pytest.fixture
def make_system() -> Iterator[Callable[..., SpearSystem]]:
    """``make_system(**SystemConfig fields)`` starts a system (short heartbeats unless a
    ``connection`` is given); every one is shut down at teardown, then checked for leftovers."""
    threads_before = set(threading.enumerate())
    children_before = _children()
    systems: list[SpearSystem] = []

    def make(**overrides: Any) -> SpearSystem:
        overrides.setdefault("connection", CONNECTION)
        system = SpearSystem.start(SystemConfig(**overrides))
        systems.append(system)
        return system

    yield make
    for system in systems:
        system.shutdown()

    wait_until(lambda: not _children() - children_before, LEFTOVER_WAIT,
               message="the system's child processes to go")
    wait_until(lambda: not pykka.ActorRegistry.get_all(), LEFTOVER_WAIT,
               message=f"every actor to stop (live: {pykka.ActorRegistry.get_all()})")

    def extra_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]

    try:
        wait_until(lambda: not extra_threads(), LEFTOVER_WAIT)
    except AssertionError:
        pytest.fail(f"threads left behind: {[t.name for t in extra_threads()]}")


@pytest.fixture
def system(make_system: Callable[..., SpearSystem]) -> SpearSystem:
    """A running system with short heartbeats (interval 0.2 s, timeout 0.6 s)."""
    return make_system()


@pytest.fixture
def captured_logs() -> Iterator[list[Any]]:
    """Enable the library's loguru logging for the test; yields the list of every record
    (``loguru`` Message objects: ``str()`` is the formatted line, ``.record`` the data)."""
    from loguru import logger

    records: list[Any] = []
    sink_id = logger.add(records.append, level="TRACE",
                         format="{level} {name} {message} | {extra}")
    logger.enable("spear_actors")
    try:
        yield records
    finally:
        logger.disable("spear_actors")
        logger.remove(sink_id)
