"""Suite-wide fixtures: every test must leave no child process behind."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psutil
import pytest
from helpers import wait_until


def _children() -> dict[tuple[int, float], psutil.Process]:
    found = {}
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            found[(p.pid, p.create_time())] = p
    return found


@pytest.fixture(autouse=True)
def no_child_processes_left() -> Iterator[None]:
    """Fail the test if it leaves a child (running or zombie) that was not there before."""
    before = set(_children())

    def leftovers() -> list[psutil.Process]:
        return [p for key, p in _children().items() if key not in before]

    yield
    try:
        wait_until(lambda: not leftovers(), timeout=5.0, message="child processes to go")
    except AssertionError:
        left = leftovers()
        described = []
        for p in left:
            with contextlib.suppress(psutil.Error):
                described.append(f"{p.pid} {p.status()} {p.cmdline()}")
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(left, timeout=3.0)
        for p in left:  # reap our own zombies
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)
        pytest.fail(f"test left child processes behind: {described}")
