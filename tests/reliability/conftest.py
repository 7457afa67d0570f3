"""Fixtures for the reliability tests: SpearSystems that are always shut down and then
checked for leftovers (child processes, actors, threads); captured_logs is suite-wide."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spear_actors import SpearSystem

from .support import Systems, leftover_check


@pytest.fixture
def systems() -> Iterator[Systems]:
    with leftover_check():
        started = Systems()
        try:
            yield started
        finally:
            started.shutdown_all()


@pytest.fixture
def system(systems: Systems) -> SpearSystem:
    """A running system with heartbeats every 0.2 s and a 0.6 s heartbeat timeout."""
    return systems.start()
