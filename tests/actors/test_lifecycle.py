"""Launching instances: READY, execute, admission, spawn errors, limits, output draining."""

from __future__ import annotations

import builtins
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pykka
import pytest
from helpers import wait_until

import spear_actors
from spear_actors import (
    InstanceConfig,
    InstanceFailed,
    InstanceState,
    InsufficientResources,
    ResourceLimits,
    RestartPolicy,
    SpawnError,
    SpearSystem,
)

from .support import WAIT, echo, example, program, wait_info

SERVICE_ACTORS = 4  # Runtime, Monitor, Connection, TaskExecutionManager


def cgroup_memory_limit(pid: int) -> int:
    """The memory limit of the cgroup ``pid`` is in (v1 or v2), read from cgroupfs."""
    with open(f"/proc/{pid}/cgroup") as f:
        lines = [line.strip().split(":", 2) for line in f]
    for _, controllers, path in lines:
        if "memory" in controllers.split(","):
            with open(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes") as f:
                return int(f.read())
    path = next(p for _, c, p in lines if c == "")
    with open(f"/sys/fs/cgroup{path}/memory.max") as f:
        return int(f.read())


def live_children() -> list[psutil.Process]:
    found = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def test_three_echo_instances_are_ready_and_answer_by_instance_id(system: SpearSystem) -> None:
    ids = [system.create_instance("echo", echo()) for _ in range(3)]
    assert len(set(ids)) == 3
    infos = [system.wait_ready(iid, WAIT) for iid in ids]

    for iid, info in zip(ids, infos, strict=True):
        assert info.id == iid and info.task_id == "echo"
        assert info.state is InstanceState.READY
        assert info.pid is not None and psutil.pid_exists(info.pid)
        assert info.restarts == 0 and info.session_id and info.connection_id
    assert len({i.pid for i in infos}) == 3
    assert len({i.session_id for i in infos}) == 3
    assert {i.id for i in system.instances("echo")} == set(ids)

    for iid in ids:
        for payload in (b"", iid.encode(), os.urandom(4096), bytes(range(256)) * 4096):
            assert system.execute(iid, payload, method="echo", timeout=5) == payload
    assert system.execute("echo", b"any instance", timeout=5) == b"any instance"


def test_missing_or_non_executable_binary_raises_spawn_error_at_once(
        system: SpearSystem, tmp_path: Path) -> None:
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    cases = [([str(tmp_path / "no-such-binary")], "not found"),
             (["spear-actors-no-such-binary-on-path"], "not found"),
             ([str(script)], "not executable"),
             ([str(tmp_path)], "directory")]
    for command, words in cases:
        started = time.monotonic()
        with pytest.raises(SpawnError, match=words):
            system.create_instance("broken", InstanceConfig(command=command))
        assert time.monotonic() - started < 2.0, "SpawnError must come at once"

    assert system.instances() == []
    assert not system.events(limit=None, kinds={"InstanceCreated", "InstanceStarted",
                                                "InstanceRestarting"})
    assert live_children() == []
    assert len(pykka.ActorRegistry.get_all()) == SERVICE_ACTORS  # no supervisor left
    # the system is still fine
    iid = system.create_instance("echo", echo())
    system.wait_ready(iid, WAIT)


def test_resource_limits_are_applied_to_the_process_and_after_a_restart(
        system: SpearSystem) -> None:
    limits = ResourceLimits(memory_bytes=512 << 20, max_open_files=256, nice=5,
                            cpu_affinity=(0,))
    iid = system.create_instance("limited", echo(), limits)
    info = system.wait_ready(iid, WAIT)

    def check(pid: int) -> None:
        p = psutil.Process(pid)
        if system.isolation == "rlimit":
            assert p.rlimit(psutil.RLIMIT_AS) == (512 << 20, 512 << 20)
        else:  # resident memory capped by the kernel, address space left alone (DESIGN §9)
            assert p.rlimit(psutil.RLIMIT_AS)[0] == psutil.RLIM_INFINITY
            assert cgroup_memory_limit(pid) == 512 << 20
        assert p.rlimit(psutil.RLIMIT_NOFILE) == (256, 256)
        assert p.nice() == 5
        assert p.cpu_affinity() == [0]

    assert info.pid is not None
    check(info.pid)
    assert system.execute(iid, b"within limits", timeout=5) == b"within limits"

    os.kill(info.pid, 9)
    again = wait_info(system, iid, lambda i: i.state is InstanceState.READY
                      and i.pid not in (None, info.pid), what="the restarted instance")
    assert again.pid is not None
    check(again.pid)


def test_an_instance_writing_10_mib_to_stdout_does_not_stall(
        system: SpearSystem, captured_logs: list[Any]) -> None:
    iid = system.create_instance("chatty", program("chatty"))
    system.wait_ready(iid, 20)
    assert system.execute(iid, b"still answering", timeout=5) == b"still answering"
    # it was drained line by line into the log, with the instance id bound (the last pipe
    # buffer's worth may still be on its way when it answers)
    def stdout_lines() -> list[Any]:
        return [m for m in list(captured_logs) if m.record["extra"].get("instance") == iid
                and m.record["extra"].get("stream") == "stdout"]

    wait_until(lambda: len(stdout_lines()) >= (10 << 20) // 1024, WAIT,
               message="all 10 MiB of output in the log")
    lines = stdout_lines()
    assert len(lines) == (10 << 20) // 1024
    assert {m.record["message"] for m in lines} == {"x" * 1023}


def test_admission_refuses_more_cpus_than_the_node_has(
        make_system: Callable[..., SpearSystem]) -> None:
    system = make_system(capacity_cpus=2)
    first = system.create_instance("big", echo(), ResourceLimits(cpus=1.5))
    with pytest.raises(InsufficientResources, match="CPU"):
        system.create_instance("big", echo(), ResourceLimits(cpus=1.5))
    assert [i.id for i in system.instances()] == [first]
    small = system.create_instance("small", echo(), ResourceLimits(cpus=0.5))
    system.wait_ready(first, WAIT)
    system.wait_ready(small, WAIT)

    # stopping an instance gives its share back
    system.stop_instance(first)
    second = system.create_instance("big", echo(), ResourceLimits(cpus=1.5))
    system.wait_ready(second, WAIT)


def test_admission_refuses_more_memory_than_the_node_has(
        make_system: Callable[..., SpearSystem]) -> None:
    system = make_system(capacity_memory=1 << 30)
    with pytest.raises(InsufficientResources, match="MiB"):
        system.create_instance("big", echo(), ResourceLimits(memory_bytes=2 << 30))
    assert system.instances() == []


def test_wait_ready_raises_instance_failed_when_the_instance_fails(system: SpearSystem) -> None:
    config = example("crash", env={"SPEAR_EXAMPLE_EXIT_BEFORE_CONNECT": "1"},
                     restart=RestartPolicy(max_restarts=1, backoff_min=0.05, backoff_max=0.1))
    iid = system.create_instance("doomed", config)
    with pytest.raises(InstanceFailed, match="FAILED") as caught:
        system.wait_ready(iid, WAIT)
    assert caught.value.instance_id == iid
    assert system.instance(iid).state is InstanceState.FAILED


def test_wait_ready_times_out_with_spear_timeout_error(system: SpearSystem) -> None:
    iid = system.create_instance("hang", example(
        "hang", env={"SPEAR_EXAMPLE_HANG": "before_auth"}, stop_timeout=0.2))
    started = time.monotonic()
    with pytest.raises(spear_actors.TimeoutError) as caught:
        system.wait_ready(iid, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 3.0
    assert isinstance(caught.value, builtins.TimeoutError)
    assert isinstance(caught.value, spear_actors.SpearError)
    assert system.instance(iid).state is InstanceState.CONNECTING
