"""Shared helpers for the process tests: argv builders, an environment, a callback recorder."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

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
