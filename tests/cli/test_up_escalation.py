"""``up`` when the spearlet gives up on itself (DESIGN.md section 7): a real ``up`` process
whose service restart budget is spent by a drill through the control endpoint prints the
failure, stops every instance and exits 1, leaving nothing behind."""

from __future__ import annotations

from pathlib import Path

import psutil
from helpers import wait_until

import spear_actors

from .support import ECHO_TOML, UpProcess

BUDGET = """
[system.service_restart]
max_restarts = 1
window = 60.0
"""


def test_up_exits_1_when_the_system_fails(tmp_path: Path) -> None:
    config = tmp_path / "spear.toml"
    config.write_text(ECHO_TOML + BUDGET)
    run_dir = tmp_path / "run"
    with UpProcess(config, run_dir) as up:
        run_file = up.wait_run_file()
        with spear_actors.attach(run_dir) as handle:
            wait_until(lambda: sum(i.state.is_serving for i in handle.instances()) == 2, 20,
                       message="2 instances READY")
            pids = [i.pid for i in handle.instances()]
            handle.inject_crash("tasks")  # within the budget: restarted
            wait_until(lambda: "TaskExecutionManager [alive] restarts 1" in repr(
                handle.tree()), 10, message="the restart in the tree")
            assert [i.pid for i in handle.instances()] == pids  # instances untouched
            handle.inject_crash("connection")  # one too many
        code = up.proc.wait(30)
        assert code == 1, up.output
        assert "system failed" in up.output and "ConnectionActor" in up.output
        assert not run_file.exists()
        for pid in pids:
            assert pid is not None and not _alive(pid), f"instance {pid} outlived up"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
