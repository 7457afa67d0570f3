"""Fixtures for the actor-system tests: a started SpearSystem that is always shut down.

After the shutdown the ``make_system`` fixture checks that the system left nothing behind: no
child process, no live Pykka actor and no thread that was not there before (bounded waits).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest
from helpers import child_processes, wait_until

from spear_actors import SpearSystem, SystemConfig

from .support import CONNECTION

LEFTOVER_WAIT = 5.0


@pytest.fixture
def make_system() -> Iterator[Callable[..., SpearSystem]]:
    """``make_system(**SystemConfig fields)`` starts a system (short heartbeats unless a
    ``connection`` is given); every one is shut down at teardown, then checked for leftovers."""
    threads_before = set(threading.enumerate())
    children_before = set(child_processes())
    systems: list[SpearSystem] = []

    def make(**overrides: Any) -> SpearSystem:
        overrides.setdefault("connection", CONNECTION)
        system = SpearSystem.start(SystemConfig(**overrides))
        systems.append(system)
        return system

    yield make
    for system in systems:
        system.shutdown()

    wait_until(lambda: not set(child_processes()) - children_before, LEFTOVER_WAIT,
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
