"""Small shared test helpers: bounded waiting instead of fixed sleeps, process checks."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

import psutil

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.01,
               message: str | None = None) -> T:
    """Call ``predicate`` every ``interval`` s until it returns something truthy; return that.

    Raises AssertionError (with ``message``, or the predicate's name) after ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        time.sleep(min(interval, remaining))


def holds_for(predicate: Callable[[], bool], duration: float, interval: float = 0.02) -> bool:
    """Bounded negative check: True if ``predicate`` stays true for all of ``duration`` s."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(interval)
    return predicate()


def child_processes() -> dict[tuple[int, float], psutil.Process]:
    """This process's descendants, keyed by (pid, create time) so a reused pid is new."""
    found = {}
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            found[(p.pid, p.create_time())] = p
    return found
