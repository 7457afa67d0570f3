"""A second Ctrl-C while ``up`` shuts down gracefully kills the instances' process groups and
exits 130 at once (here the instance ignores both the stop signal and SIGTERM)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
from helpers import holds_for, wait_until

from spear_actors import attach

from .support import UpProcess

STUBBORN = """
import signal, subprocess, sys, time
from spear_actors.client import InstanceClient
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(["sleep", "300"])  # same process group: must go too
print(f"child {child.pid}", flush=True)
client = InstanceClient.from_env()
client.connect(timeout=10)
client.serve(lambda method, data: data)
while True:  # ignore the stop request: only SIGKILL ends us
    time.sleep(1)
"""


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_second_interrupt_forces(tmp_path: Path) -> None:
    (tmp_path / "stubborn.py").write_text(STUBBORN)
    config = tmp_path / "spear.toml"
    config.write_text('[[tasks]]\nname = "stubborn"\ncommand = ["{python}", "stubborn.py"]\n'
                      'working_dir = "."\nstop_timeout = 60.0\n')
    run_dir = tmp_path / "run"
    with UpProcess(config, run_dir, ["--log-json"]) as up:
        up.wait_run_file()
        with attach(run_dir) as spear:
            info = wait_until(lambda: (i := spear.instances()) and i[0].state.is_serving
                              and i[0], 20, message="stubborn READY")
        assert info.pid is not None
        child = wait_until(lambda: next((int(json.loads(ln)["message"].split()[1])
                                         for ln in up.output.splitlines()
                                         if '"message":"child ' in ln), None), 10)
        up.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping every instance" in up.output, 10)
        # still waiting for the stubborn instance (the second Ctrl-C now forces: the handler
        # is in place before "stopping every instance" is printed)
        assert holds_for(lambda: up.proc.poll() is None, 0.3), up.output
        started = time.monotonic()
        up.proc.send_signal(signal.SIGINT)
        try:
            code = up.proc.wait(10)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"not forced:\n{up.output}") from None
        assert code == 130, up.output
        assert time.monotonic() - started < 5
        for pid in (info.pid, child):
            wait_until(lambda p=pid: _dead(p), 5, message=f"pid {pid} killed")
        assert not (run_dir / "control.json").exists()
