"""Small shared test helpers: bounded waiting instead of fixed sleeps, process checks."""

from __future__ import annotations

import contextlib
import os
import re
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


def spear_cgroup_dirs() -> set[str]:
    """Every ``spear*`` directory in this process's own cgroup, in every mounted hierarchy
    (cgroup v1 and v2): where a spearlet started by this process (or a child of it, which
    inherits the cgroups) makes its cgroups."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            parts = line.strip().split(":", 2)
            if len(parts) == 3:
                for controller in parts[1].split(",") if parts[1] else [""]:
                    own[controller] = parts[2]
    found: set[str] = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                continue
            keys = [""] if tail[0] == "cgroup2" else tail[2].split(",")
            path = next((own[k] for k in keys if k in own), None)
            if path is None:
                continue
            base = os.path.join(fields[4], path.lstrip("/"))
            with contextlib.suppress(OSError):
                found.update(os.path.join(base, name) for name in os.listdir(base)
                             if name.startswith("spear") and not _anothers(name))
    return found


def _anothers(name: str) -> bool:
    """``spear-<pid>-...`` made by a live spearlet that is neither this process nor one it
    started (another test run or a benchmark sharing the machine's cgroups)."""
    match = re.match(r"spear-(\d+)-", name)
    if match is None:
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return False
    try:
        proc = psutil.Process(pid)
        return not any(p.pid == os.getpid() for p in proc.parents())
    except psutil.Error:
        return False  # gone: if it was ours, what it left is ours
