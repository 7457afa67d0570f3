"""Shared helpers for the CLI tests: run ``python -m spear_actors.cli`` as a real subprocess.

Every wait is bounded; :class:`UpProcess` always ends the process it started (SIGTERM, then
SIGKILL) and its output goes to a file so a full pipe can never stall it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil
from helpers import wait_until

CLI = [sys.executable, "-m", "spear_actors.cli"]
ECHO_TOML = """
[connection]
heartbeat_interval = 0.5
heartbeat_timeout = 1.5

[[tasks]]
name = "echo"
command = ["{python}", "-m", "spear_actors.examples.echo"]
instances = 2
stop_timeout = 2.0

[tasks.restart]
backoff_min = 0.01
"""


def run_cli(*args: str, timeout: float = 20.0, stdin: str | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run one ``spear-actors`` command to completion (bounded)."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          input=stdin, cwd=cwd, check=False)


class UpProcess:
    """``spear-actors up`` in the background; use as a context manager."""

    def __init__(self, config: Path, run_dir: Path, extra: Sequence[str] = ()) -> None:
        self.run_dir = run_dir
        self.log_path = run_dir.parent / f"{run_dir.name}-up.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*CLI, "up", "--config", str(config), "--run-dir", str(run_dir), *extra],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def wait_run_file(self, timeout: float = 20.0) -> Path:
        path = self.run_dir / "control.json"

        def ready() -> bool:
            assert self.proc.poll() is None, f"up exited early:\n{self.output}"
            return path.exists()

        wait_until(ready, timeout, message=f"run file {path}")
        return path

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGINT)  # second signal: forced
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        self._log.close()

    def __enter__(self) -> UpProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def up_args(config: Path, run_dir: Path, *extra: str) -> list[str]:
    """The command line of ``spear-actors up`` on ``config`` with its own run directory."""
    return [*CLI, "up", "--config", str(config), "--run-dir", str(run_dir), *extra]


def read_until(fd: int, needle: bytes | None, timeout: float) -> bytes:
    """Read ``fd`` (a pipe or a pty master) until ``needle`` shows up, or to its end if
    ``needle`` is None; bounded."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle is None or needle not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{needle or 'EOF'!r} not seen within {timeout}s; got:\n"
                                 f"{seen.decode(errors='replace')}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk and needle is None:
                break
            if not chunk:
                raise AssertionError(f"EOF before {needle!r}; got:\n"
                                     f"{seen.decode(errors='replace')}")
            seen += chunk
    return seen


def instance_processes(run_dir: Path, count: int, timeout: float = 20.0
                       ) -> dict[int, float]:
    """pid -> create time of the ``count`` serving instances of the ``up`` on ``run_dir``."""
    from spear_actors import attach

    with attach(run_dir, timeout=5) as spear:
        infos = wait_until(lambda: (i := spear.instances()) and len(i) == count and all(
            x.state.is_serving and x.pid for x in i) and i, timeout,
            message=f"{count} serving instances")
    return {i.pid: psutil.Process(i.pid).create_time() for i in infos if i.pid}


def gone(pid: int, created: float) -> bool:
    """The process ``pid`` started at ``created`` no longer exists (or is a zombie)."""
    try:
        proc = psutil.Process(pid)
        return proc.create_time() != created or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_all(proc: subprocess.Popen[bytes], processes: Mapping[int, float] = {}) -> None:
    """Test cleanup whatever happened: SIGKILL ``proc`` (then reap it) and every process of
    ``processes`` (pid -> create time) still there."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    for pid, created in processes.items():
        with contextlib.suppress(psutil.Error):
            if not gone(pid, created):
                psutil.Process(pid).kill()
