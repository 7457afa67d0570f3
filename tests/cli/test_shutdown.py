"""The pieces that keep ``up``'s shutdown whole, in-process with stand-ins: every step runs
whatever an earlier one raised; a dead output stream never raises; a thread that will not end
cannot keep ``up`` alive."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from spear_actors.cli import shutdown
from spear_actors.logging_setup import GuardedStream


class _Steps:
    """Stand-ins for the system, control server, console and signals: each records its call;
    those named in ``failing`` raise."""

    def __init__(self, *failing: str) -> None:
        self.calls: list[str] = []
        self.failing = set(failing)
        self.failure = None
        self.in_repl = True
        self.received = "SIGTERM"

    def _do(self, name: str) -> None:
        self.calls.append(name)
        if name in self.failing:
            raise (OSError if name == "line" else RuntimeError)(f"{name} broke")

    def shutting_down(self) -> None: self._do("shutting_down")
    def clear(self) -> None: self._do("clear")
    def close(self, *args: Any) -> None: self._do("close")
    def remove_run_file(self) -> None: self._do("remove_run_file")
    def line(self, text: str) -> None: self._do("line")
    def shutdown(self, timeout: float) -> None: self._do("shutdown")


@pytest.mark.parametrize("failing", [(), ("shutting_down", "clear", "close", "line",
                                          "shutdown", "reap")])
def test_every_shutdown_step_runs(monkeypatch: pytest.MonkeyPatch,
                                  failing: tuple[str, ...]) -> None:
    steps = _Steps(*failing)
    monkeypatch.setattr(shutdown, "reap_leftovers", lambda: steps._do("reap"))
    monkeypatch.setattr(shutdown, "_no_thread_left", lambda: steps._do("threads"))
    clean = shutdown.shut_down(steps, steps, steps, steps, budget=1.0)  # type: ignore[arg-type]
    assert clean == (not failing)
    assert steps.calls == ["shutting_down", "clear", "close", "remove_run_file", "line",
                           "shutdown", "reap", "line", "close", "threads"]
    assert steps.in_repl is False


def test_guarded_stream_drops_and_remembers(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(read)
    dead = os.fdopen(write, "w")
    try:
        out = GuardedStream(dead)
        out.write("spear-actors stopped\n")  # buffered: fine so far
        assert not out.lost
        out.flush()  # EPIPE
        assert out.lost
    finally:
        with contextlib.suppress(OSError):
            dead.close()
    closed = open(tmp_path / "f", "w")  # noqa: SIM115
    closed.close()
    out = GuardedStream(closed)
    out.write("late\n")
    assert out.lost and not out.isatty()


STUCK = """
import threading, time
from spear_actors.cli import shutdown
shutdown.THREADS_GRACE = 0.2
threading.Thread(target=threading.Event().wait, name="stuck").start()  # non-daemon, forever
started = time.monotonic()
shutdown._no_thread_left()
raise SystemExit(f"returned after {time.monotonic() - started:.1f} s")
"""


def test_a_stuck_thread_cannot_keep_up_alive() -> None:
    result = subprocess.run([sys.executable, "-c", STUCK], capture_output=True, text=True,
                            timeout=20, check=False)
    assert result.returncode == 1, result.stderr
    assert "returned" not in result.stderr
