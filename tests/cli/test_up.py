"""``spear-actors up`` end to end: a real subprocess, attached to through its control endpoint.

One test walks the whole life of a system (start, inspect, operate, SIGTERM) so the start-up
cost is paid once.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import psutil
import pytest
from helpers import wait_until

from spear_actors import InstanceState, attach
from spear_actors.control import NotRunning

from .support import ECHO_TOML, UpProcess, run_cli


def _gone(pid: int, created: float) -> bool:
    try:
        return psutil.Process(pid).create_time() != created
    except psutil.NoSuchProcess:
        return True


def test_up_attach_operate_and_terminate(tmp_path: Path) -> None:
    config = tmp_path / "spear.toml"
    config.write_text(ECHO_TOML)
    run_dir = tmp_path / "run"
    with UpProcess(config, run_dir, ["--log-json"]) as up:
        run_file = up.wait_run_file()
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(run_file.stat().st_mode) == 0o600
        assert set(json.loads(run_file.read_text())) >= {"endpoint", "token", "pid",
                                                        "started_at"}

        with attach(run_dir, timeout=5) as spear:
            infos = wait_until(lambda: (i := spear.instances()) and len(i) == 2 and all(
                x.state is InstanceState.READY for x in i) and i, 20, message="2 READY")
            tree = spear.tree()
            drawing = repr(tree)
            assert "SupervisorActor[echo-1]" in drawing and "InstanceActor[echo-2] READY" \
                in drawing
            assert [n["state"] for n in tree.to_dict()["instances"]] == ["ready", "ready"]

            status = run_cli("status", "--run-dir", str(run_dir))
            assert status.returncode == 0, status.stderr
            assert re.search(r"^isolation: (cgroup v[12]|rlimit)$", status.stdout, re.M)
            assert f"isolation {tree.isolation}" in drawing
            for info in infos:
                line = next(ln for ln in status.stdout.splitlines() if ln.startswith(info.id))
                assert "ready" in line and str(info.pid) in line

            old = spear.instance("echo-1")
            spear.restart_instance("echo-1")
            new = wait_until(lambda: (i := spear.instance("echo-1")).state.is_serving
                             and i.pid != old.pid and i, 15, message="echo-1 replaced")
            assert new.pid != old.pid
            assert any(e.kind == "InstanceStarted" and e.data.get("pid") == new.pid
                       for e in spear.events(limit=200))
            procs = {i.pid: psutil.Process(i.pid).create_time()
                     for i in spear.instances() if i.pid}
            assert len(procs) == 2

        assert up.terminate() == 0, up.output
        for pid, created in procs.items():
            wait_until(lambda p=pid, c=created: _gone(p, c), 5, message=f"pid {pid} gone")
        assert not run_file.exists()
        records = [json.loads(line) for line in up.output.splitlines() if line.strip()]
        assert any(r["record"]["extra"].get("instance") == "echo-2" for r in records)
        assert any("2/2 instances ready" in r["record"]["message"] for r in records)

    with pytest.raises(NotRunning, match="no spear-actors system is running"):
        attach(run_dir)
    status = run_cli("status", "--run-dir", str(run_dir))
    assert status.returncode == 1
    assert "no spear-actors system is running" in status.stderr
