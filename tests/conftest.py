"""Suite-wide fixtures: every test must leave no child process behind; captured logs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from helpers import child_processes, spear_cgroup_dirs, wait_until


@pytest.fixture(autouse=True)
def no_child_processes_left() -> Iterator[None]:
    """Fail the test if it leaves a child (running or zombie) that was not there before."""
    before = set(child_processes())

    def leftovers() -> list[psutil.Process]:
        return [p for key, p in child_processes().items() if key not in before]

    yield
    try:
        wait_until(lambda: not leftovers(), timeout=5.0, message="child processes to go")
    except AssertionError:
        left = leftovers()
        described = []
        for p in left:
            described.append(_describe(p))  # before the kill: a zombie has no cmdline
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(left, timeout=3.0)
        for p in left:  # reap our own zombies
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)
        pytest.fail(f"test left child processes behind: {described}")


def _describe(p: psutil.Process) -> str:
    """pid, status, parent, name and command line: as much as can still be read."""
    parts = [str(p.pid)]
    for read in (p.status, p.ppid, p.name, p.cmdline):
        try:
            parts.append(str(read()))
        except psutil.Error as exc:
            parts.append(type(exc).__name__)
    return " ".join(parts)


@pytest.fixture(autouse=True)
def no_cgroups_left() -> Iterator[None]:
    """Fail the test if it leaves a ``spear*`` cgroup directory that was not there before
    (the cgroups of a spearlet go when it shuts down, or with its guardian if it is killed)."""
    before = spear_cgroup_dirs()  # it leaves out the live spearlets of other runs
    yield
    try:
        wait_until(lambda: not spear_cgroup_dirs() - before, timeout=5.0,
                   message="spear cgroups to be removed")
    except AssertionError:
        left = sorted(spear_cgroup_dirs() - before)
        for path in left:  # children first
            for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        pytest.fail(f"test left cgroups behind: {left}")


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
