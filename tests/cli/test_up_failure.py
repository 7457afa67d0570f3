"""``up`` when the system escalates (DESIGN.md section 7): it prints the reason, stops every
instance and exits 1, whether the failure comes while it launches, watches, or runs the
``--repl`` console.

The escalation itself is stood in for: the ``up`` subprocess runs with
:attr:`SpearSystem.failure` and :meth:`SpearSystem.wait_failed` driven by a file the test
creates (the rest of the system is real).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import wait_until

from .support import CLI, gone, instance_processes, kill_all, read_until, up_args

UP_THAT_FAILS = """
import os, sys, threading, time
from spear_actors.cli import main
from spear_actors.errors import SystemFailed
from spear_actors.system import SpearSystem

TRIGGER = sys.argv.pop(1)
ERROR = SystemFailed("service 'connection' failed 6 times in 60 s (test escalation)")
failed = threading.Event()

def trigger():  # stands in for the root giving up
    while not os.path.exists(TRIGGER):
        time.sleep(0.01)
    failed.set()

threading.Thread(target=trigger, daemon=True).start()
SpearSystem.failure = property(lambda self: ERROR if failed.is_set() else None)
SpearSystem.wait_failed = lambda self, timeout=None: ERROR if failed.wait(timeout) else None
sys.exit(main(sys.argv[1:]))
"""

ONE_ECHO = """
[[tasks]]
name = "echo"
command = ["{python}", "-m", "spear_actors.examples.echo"]
stop_timeout = 2.0
"""


@pytest.mark.parametrize("when", ["launching", "watching", "in-repl"])
def test_system_failure_stops_up_with_exit_1(tmp_path: Path, when: str) -> None:
    config, run_dir, trigger = tmp_path / "spear.toml", tmp_path / "run", tmp_path / "fail"
    config.write_text(ONE_ECHO)
    if when == "launching":
        trigger.touch()
    extra = ["--repl", "--log-level", "INFO"] if when == "in-repl" else []
    args = up_args(config, run_dir, *extra)[len(CLI):]
    proc = subprocess.Popen([sys.executable, "-c", UP_THAT_FAILS, str(trigger), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    procs: dict[int, float] = {}
    try:
        assert proc.stdout is not None
        out = b""
        if when != "launching":
            out = read_until(proc.stdout.fileno(), b"1/1 instances ready", 20)
            procs = instance_processes(run_dir, 1)
            trigger.touch()
        # stdin stays open: the console would wait for input forever
        text = (out + read_until(proc.stdout.fileno(), None, 15)).decode(errors="replace")
        assert proc.wait(5) == 1, text
        assert "system failed: service 'connection' failed 6 times" in text, text
        assert "spear-actors stopped" in text, text
        for pid, created in procs.items():
            wait_until(lambda p=pid, c=created: gone(p, c), 5, message=f"instance {pid} gone")
        assert not (run_dir / "control.json").exists()
    finally:
        kill_all(proc, procs)
