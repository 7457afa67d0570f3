"""Kernel isolation of instances, through the public API (DESIGN.md section 9).

Real processes, the real kernel: a cgroup per instance (v1 on these machines) and a network
namespace for ``network="none"``. The tests that need cgroups are skipped where the system
falls back to rlimits (not root, no cgroup fs); the fallback has its own test.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import wait_until

from spear_actors import ConfigError, InstanceState, ResourceLimits, SpearSystem
from spear_actors.process.cgroups import detect

from .support import CONNECTION, WAIT, echo, program, wait_event, wait_info

CGROUPS = not isinstance(detect(), str) and os.geteuid() == 0
needs_cgroups = pytest.mark.skipif(not CGROUPS, reason="cgroups not usable here")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@needs_cgroups
def test_an_instance_past_its_64_mib_limit_is_oom_killed_reported_and_restarted(
        system: SpearSystem, tmp_path: Path) -> None:
    assert system.isolation in ("cgroup v1", "cgroup v2")
    config = program("isolated", env={"EAT_MIB": "200", "EAT_ONCE": str(tmp_path / "ate")})
    iid = system.create_instance("hog", config, ResourceLimits(memory_bytes=64 << 20))
    exited = wait_event(system, "InstanceExited", iid)
    assert exited.data["cause"] == "oom", exited.data
    assert exited.data["reason"] == "killed by the OOM killer (memory limit 64 MiB)"
    assert exited.data["exit_code"] == -9
    assert exited.data["memory_limit_bytes"] == 64 << 20
    assert 48 << 20 <= exited.data["memory_peak_bytes"] <= 64 << 20
    restarting = wait_event(system, "InstanceRestarting", iid)
    assert "OOM killer" in restarting.data["reason"]
    info = system.wait_ready(iid, WAIT)  # the second generation does not eat: it serves
    assert info.restarts == 1 and info.last_error is not None and "OOM" in info.last_error
    assert system.execute(iid, b"alive again", timeout=5) == b"alive again"


@needs_cgroups
def test_stopping_an_instance_kills_a_daemon_it_left_behind_through_its_cgroup(
        system: SpearSystem) -> None:
    iid = system.create_instance("daemonizer", program("isolated"),
                                 ResourceLimits(max_processes=32, cpus=1.0))
    info = system.wait_ready(iid, WAIT)
    daemon = int(system.execute(iid, b"", method="daemon", timeout=5))
    assert info.pid is not None and not _gone(daemon)
    wait_until(lambda: os.getsid(daemon) == daemon, 5, message="the daemon to call setsid")
    assert daemon != info.pid  # neither the instance's session nor its group,
    assert psutil.Process(daemon).ppid() != info.pid  # and orphaned at once

    def sample() -> dict[str, Any] | None:  # one taken since the daemon started
        found: dict[str, Any] | None = system.metrics()["instances"].get(iid)
        return found if found and (found.get("pids") or 0) >= 2 else None

    usage = wait_until(sample, WAIT, message="a cgroup sample counting the daemon")
    assert usage["source"] == "cgroup"
    assert usage["cpu_seconds"] > 0 and usage["memory_bytes"] > 0
    assert usage["memory_peak_bytes"] >= usage["memory_bytes"]
    assert f"isolation {system.isolation}" in repr(system.tree())

    system.stop_instance(iid, timeout=WAIT)
    wait_until(lambda: _gone(daemon), 5, message="the daemon to die with its instance")


@needs_cgroups
def test_network_none_cannot_reach_loopback_tcp_yet_serves_over_ipc(
        make_system: Callable[..., SpearSystem]) -> None:
    system = make_system(connection=replace(CONNECTION, transport="ipc"))
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = str(server.getsockname()[1]).encode()
        boxed = system.create_instance("boxed", program("isolated"),
                                       ResourceLimits(network="none"))
        host = system.create_instance("host", program("isolated"))
        system.wait_ready(boxed, WAIT)
        system.wait_ready(host, WAIT)
        assert system.execute(host, port, method="probe", timeout=5) == b"connected"
        answer = system.execute(boxed, port, method="probe", timeout=5)
        assert answer != b"connected" and b"unreachable" in answer.lower(), answer
        assert system.execute(boxed, b"over ipc", timeout=5) == b"over ipc"
        pid = system.instance(boxed).pid
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")


def test_network_none_with_the_tcp_transport_is_a_config_error(system: SpearSystem) -> None:
    with pytest.raises(ConfigError, match=r"network='none'.*ipc.*'tcp'"):
        system.create_instance("boxed", echo(), ResourceLimits(network="none"))
    assert system.instances() == []


def test_the_rlimit_fallback_is_shown_and_caps_address_space(
        make_system: Callable[..., SpearSystem]) -> None:
    system = make_system(isolation="rlimit")
    assert system.isolation == "rlimit"
    assert "RuntimeActor [alive] isolation rlimit" in repr(system.tree())
    assert system.tree().to_dict()["runtime"]["isolation"] == "rlimit"
    iid = system.create_instance("limited", echo(), ResourceLimits(memory_bytes=1 << 30))
    info = system.wait_ready(iid, WAIT)
    assert info.pid is not None
    assert psutil.Process(info.pid).rlimit(psutil.RLIMIT_AS) == (1 << 30, 1 << 30)
    with open(f"/proc/{info.pid}/cgroup") as f:
        assert "spear-" not in f.read()
    wait_info(system, iid, lambda i: i.state is InstanceState.READY)
