"""Fixtures for the reliability tests: SpearSystems that are always shut down and then
checked for leftovers (child processes, actors, threads), and captured library logs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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


@pytest.fixture
def captured_logs() -> Iterator[list[Any]]:
    """Every loguru record of the library (TRACE and up) while the test runs."""
    from loguru import logger

    records: list[Any] = []
    sink = logger.add(records.append, level="TRACE",
                      format="{level} {name} {message} | {extra}")
    logger.enable("spear_actors")
    try:
        yield records
    finally:
        logger.disable("spear_actors")
        logger.remove(sink)
