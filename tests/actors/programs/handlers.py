"""Handlers for the zygote tests, found through ``PYTHONPATH`` (entry ``handlers:NAME``)."""

from __future__ import annotations

import json
import os
import re
import threading


def describe(method: str, data: bytes) -> bytes:
    """What the tests compare between a forked and a spawned instance."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = re.sub(r"\[\d+\]|:\d+$", "", os.readlink(f"/proc/self/fd/{name}"))
        except OSError:  # the directory's own descriptor, closed meanwhile
            continue
    return json.dumps({
        "pid": os.getpid(), "pgid": os.getpgid(0), "sid": os.getsid(0), "cwd": os.getcwd(),
        "env": dict(os.environ), "fds": fds, "threads": threading.active_count(),
        "tasks": len(os.listdir("/proc/self/task")),
    }).encode()


def flaky(method: str, data: bytes) -> bytes:
    """Echo; ``raise`` raises, ``exit`` ends the process with code 3,
    ``pid`` answers its pid."""
    if method == "raise":
        raise ValueError("the handler raised")
    if method == "exit":
        os._exit(3)
    if method == "pid":
        return str(os.getpid()).encode()
    return data
