"""Shared helpers for the process tests: argv builders, an environment, a callback recorder."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil
from helpers import wait_until

from spear_actors.process import ManagedProcess, build_env

SECRET = "s3cr3t-" + "ab" * 32
MIB = 1 << 20


def py(code: str) -> list[str]:
    """argv running ``code`` in a fresh interpreter (-S: no site, faster start)."""
    return [sys.executable, "-S", "-c", code]


def env_for(iid: str = "i-1", **kw: Any) -> dict[str, str]:
    args: dict[str, Any] = {"instance_id": iid, "secret": SECRET, "port": 5555,
                            "endpoint": "tcp://127.0.0.1:5555", "transport": "tcp",
                            "extra": {}, "inherit_env": False}
    args.update(kw)
    return build_env(**args)


class Recorder:
    """Collects callbacks (they run in the watcher thread)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []
        self.codes: list[int] = []
        self.exit_time: float | None = None
        self.lines_at_exit: int | None = None

    def on_output(self, iid: str, stream: str, line: str) -> None:
        self.lines.append((iid, stream, line))

    def on_exit(self, code: int) -> None:
        self.lines_at_exit = len(self.lines)
        self.exit_time = time.monotonic()
        self.codes.append(code)

    def out(self, stream: str = "stdout") -> list[str]:
        return [line for _, s, line in self.lines if s == stream]

    def saw(self, text: str) -> Callable[[], bool]:
        return lambda: any(text in line for line in self.out())


def gone(pid: int, create_time: float) -> bool:
    """The process no longer exists, not even as a zombie (its pid may have been reused)."""
    try:
        return psutil.Process(pid).create_time() != create_time
    except psutil.NoSuchProcess:
        return True



Start = Callable[..., tuple[ManagedProcess, Recorder]]

SLEEPER = "import time; print('ready', flush=True); time.sleep(30)"


def dead(p: psutil.Process) -> bool:
    """``p`` runs no more: gone, its pid reused, or a zombie. A zombie that is our child (an
    orphan we adopted as subreaper, see the ``subreaper`` fixture) is reaped here."""
    try:
        if not p.is_running():
            return True
        if p.status() != psutil.STATUS_ZOMBIE:
            return False
        if p.ppid() == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)
        return True
    except psutil.NoSuchProcess:
        return True


def tree_of(pids: Iterable[int]) -> list[psutil.Process]:
    """The processes ``pids`` and all their descendants, as psutil handles (which check the
    create time, so a reused pid is never mistaken for them)."""
    found: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            p = psutil.Process(pid)
            found += [p, *p.children(recursive=True)]
    return found


def reaped(p: psutil.Process) -> bool:
    """``p`` is gone for good: not even a zombie. A zombie of ours is reaped here; one whose
    parent is dying is not done yet: it may be re-parented to us (the subreaper) only then."""
    try:
        if not p.is_running():
            return True
        if p.status() == psutil.STATUS_ZOMBIE and p.ppid() == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)
        return not p.is_running()
    except psutil.NoSuchProcess:
        return True


def kill_all(procs: Iterable[psutil.Process], timeout: float = 5.0) -> None:
    """Cleanup: SIGKILL whatever of ``procs`` still runs and wait (bounded) until every one is
    gone for good (:func:`reaped`), so that no zombie outlives the test."""
    procs = list(procs)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if not dead(p):
                p.kill()
    wait_until(lambda: all(reaped(p) for p in procs), timeout, message="cleanup kills")
