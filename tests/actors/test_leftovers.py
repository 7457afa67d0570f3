"""An instance that exits leaves nothing behind: the old tree is killed before a restart."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import psutil

from spear_actors import RestartPolicy, SpearSystem
from tests.helpers import wait_until

from .support import program


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_children_of_an_exited_instance_are_killed(
        make_system: Callable[..., SpearSystem], tmp_path: Path) -> None:
    system = make_system()
    pidfile = tmp_path / "child.pid"
    iid = system.create_instance("leaves", program(
        "leaves_child", env={"LEFTOVER_PIDFILE": str(pidfile)},
        restart=RestartPolicy(mode="temporary")))
    wait_until(lambda: system.instance(iid).state.is_final, 15)
    child = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), 5))
    assert child != os.getpid()
    wait_until(lambda: _gone(child), 5, message=f"child {child} outlived its instance")
    assert system.instance(iid).last_exit_code == 3
