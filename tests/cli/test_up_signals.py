"""``up`` under SIGHUP and with its output gone (DESIGN.md section 7): SIGHUP never kills it;
a closed stdout/stderr (``up ... | head``, a terminal that hangs up) never stops its
shutdown from completing: no instance, no run file, no ``up`` process is left, and ``up``
exits 1 since some of what it had to say was lost.

Each test runs a real ``up`` (one echo-like instance) and cleans up whatever happens.
"""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import holds_for, wait_until

from .support import (
    UpProcess,
    gone,
    instance_processes,
    kill_all,
    read_until,
    run_cli,
    up_args,
)

ONE_ECHO = """
[connection]
heartbeat_interval = 0.5
heartbeat_timeout = 1.5

[[tasks]]
name = "echo"
command = ["{python}", "-m", "spear_actors.examples.echo"]
stop_timeout = 2.0
"""

CHATTER = """
import sys, threading, time
from spear_actors.client import InstanceClient

def chat():
    n = 0
    while True:  # output for up to relay, whether anyone reads it or not
        n += 1
        print(f"chatter out {n}", flush=True)
        print(f"chatter err {n}", file=sys.stderr, flush=True)
        time.sleep(0.01)

client = InstanceClient.from_env()
client.connect(timeout=10)
threading.Thread(target=chat, daemon=True).start()
client.serve(lambda method, data: data)
client.close()
"""

READY = b"1/1 instances ready"

CONTROLLING_TTY = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                   "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
"""Run as ``python -c CONTROLLING_TTY -m ...`` in a new session whose stdin is a pty slave:
makes that pty the controlling terminal, then becomes the real command (same pid)."""


def _config(tmp_path: Path, chatty: bool = False) -> Path:
    config = tmp_path / "spear.toml"
    if chatty:
        (tmp_path / "chatter.py").write_text(CHATTER)
        config.write_text(ONE_ECHO.replace('"-m", "spear_actors.examples.echo"',
                                           '"chatter.py"]\nworking_dir = "."\n#'))
    else:
        config.write_text(ONE_ECHO)
    return config


def test_sighup_does_not_stop_up(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with UpProcess(_config(tmp_path), run_dir) as up:
        up.wait_run_file()
        before = instance_processes(run_dir, 1)
        for n in (1, 2):  # once per signal

            def reported(n: int = n) -> bool:
                assert up.proc.poll() is None, f"SIGHUP killed up:\n{up.output}"
                return up.output.count("received SIGHUP") == n

            up.proc.send_signal(signal.SIGHUP)
            wait_until(reported, 10, message=f"SIGHUP {n} reported")
        assert up.proc.poll() is None, up.output
        status = run_cli("status", "--run-dir", str(run_dir))
        assert status.returncode == 0, status.stderr
        assert instance_processes(run_dir, 1) == before  # same instance, not restarted
        assert "received SIGHUP: reloaded" in up.output and "no change" in up.output

        assert up.terminate() == 0, up.output
        for pid, created in before.items():
            wait_until(lambda p=pid, c=created: gone(p, c), 5, message=f"instance {pid} gone")
        assert not (run_dir / "control.json").exists()
        assert "spear-actors stopped" in up.output


@pytest.mark.parametrize("output_after_close", [False, True],
                         ids=["closed-then-sigterm", "closed-output-then-sigterm"])
def test_closed_pipe_never_stops_the_shutdown(tmp_path: Path, output_after_close: bool) -> None:
    """``up ... 2>&1 | head``: the reader goes away, then SIGTERM."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(up_args(_config(tmp_path, chatty=output_after_close), run_dir),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    procs: dict[int, float] = {}
    try:
        assert proc.stdout is not None
        read_until(proc.stdout.fileno(), READY, 20)
        procs = instance_processes(run_dir, 1)
        proc.stdout.close()  # `head` exits
        if output_after_close:  # up relays the chatter and logs the restart: into EPIPE
            from spear_actors import attach

            with attach(run_dir, timeout=5) as spear:
                old = spear.instance("echo-1").pid
                spear.restart_instance("echo-1")
                new = wait_until(lambda: (i := spear.instance("echo-1")).state.is_serving
                                 and i.pid != old and i.pid, 15, message="echo-1 replaced")
            procs.update(instance_processes(run_dir, 1))
            assert new in procs
        # the shutdown completed, but its output was lost
        assert_stops_completely(proc, procs, run_dir, "with its output closed", code=1)
    finally:
        kill_all(proc, procs)


def assert_stops_completely(proc: subprocess.Popen[bytes], procs: dict[int, float],
                            run_dir: Path, where: str, code: int) -> None:
    """SIGTERM ``up``: it exits with ``code`` (bounded), its instances and run file gone."""
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(15) == code
    except subprocess.TimeoutExpired:
        raise AssertionError(f"up did not exit after SIGTERM {where}") from None
    for pid, created in procs.items():
        wait_until(lambda p=pid, c=created: gone(p, c), 5, message=f"instance {pid} gone")
    assert not (run_dir / "control.json").exists()


def test_terminal_hangup_keeps_up_running(tmp_path: Path) -> None:
    """``up`` on a terminal that closes: the kernel sends SIGHUP, later writes fail (EIO).
    ``up`` keeps serving; SIGTERM then stops it completely (exit 1: output was lost)."""
    run_dir = tmp_path / "run"
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", CONTROLLING_TTY,
                             *up_args(_config(tmp_path), run_dir)[1:]],
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    procs: dict[int, float] = {}
    master_open = True
    try:
        read_until(master, READY, 20)
        procs = instance_processes(run_dir, 1)
        os.close(master)  # the terminal goes away: SIGHUP to up, its session leader
        master_open = False
        assert holds_for(lambda: proc.poll() is None, 1.0), "up died with its terminal"
        status = run_cli("status", "--run-dir", str(run_dir))
        assert status.returncode == 0, status.stderr
        assert instance_processes(run_dir, 1) == procs

        # stopped completely; what it said on the way was lost (EIO)
        assert_stops_completely(proc, procs, run_dir, "on a hung-up terminal", code=1)
    finally:
        if master_open:
            os.close(master)
        kill_all(proc, procs)
