"""Fixtures for the process tests: a watcher that must stop, spawned children that are always
killed, a temporary subreaper, captured log records."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from spear_actors.config import ResourceLimits
from spear_actors.process import ManagedProcess, ProcessWatcher, set_child_subreaper, spawn

from .support import Recorder, Start, env_for, py


@pytest.fixture
def watcher() -> Iterator[ProcessWatcher]:
    w = ProcessWatcher(name="test-process-watcher")
    yield w
    assert w.stop(timeout=2.0)



@pytest.fixture
def start(watcher: ProcessWatcher) -> Iterator[Start]:
    """Spawn ``code`` on the test's watcher; every process is killed after the test."""
    procs: list[ManagedProcess] = []

    def _start(code: str, *, limits: ResourceLimits | None = None, iid: str = "i-1",
               env: dict[str, str] | None = None, on: ProcessWatcher | None = None,
               cwd: str | None = None, args: tuple[str, ...] = ()
               ) -> tuple[ManagedProcess, Recorder]:
        rec = Recorder()
        proc = spawn(argv=[*py(code), *args], env=env or env_for(iid), cwd=cwd, limits=limits,
                     instance_id=iid, on_exit=rec.on_exit, on_output=rec.on_output,
                     watcher=on or watcher)
        procs.append(proc)
        return proc, rec

    yield _start
    for proc in procs:
        proc.kill_tree()


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Orphans of the test's children come to the test process instead of PID 1."""
    if not set_child_subreaper(True):
        pytest.skip("PR_SET_CHILD_SUBREAPER not available")
    yield
    set_child_subreaper(False)


@pytest.fixture
def records() -> Iterator[list[Any]]:
    """Every loguru record emitted during the test."""
    got: list[Any] = []
    sink = logger.add(lambda m: got.append(m.record), level=0, format="{message}")
    logger.enable("spear_actors")
    try:
        yield got
    finally:
        logger.disable("spear_actors")  # the library's default (spear_actors._log)
        logger.remove(sink)
