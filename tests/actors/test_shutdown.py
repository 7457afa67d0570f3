"""Shutdown with instances in every state leaves nothing behind, in bounded time; and what
an instance process is given (environment, working directory)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable

import psutil
import pykka
import pytest

from spear_actors import (
    ConnectionConfig,
    InstanceConfig,
    InstanceState,
    RestartPolicy,
    SpearError,
    SpearSystem,
)

from .support import HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, WAIT, echo, example


def test_shutdown_with_instances_in_every_state(
        make_system: Callable[..., SpearSystem]) -> None:
    system = make_system()
    ready = system.create_instance("echo", echo())
    frozen = system.create_instance("echo", echo(stop_timeout=0.3))
    connecting = system.create_instance("hang", example(
        "hang", env={"SPEAR_EXAMPLE_HANG": "before_auth"}, stop_timeout=0.3))
    backing_off = system.create_instance("crashy", example(
        "crash", env={"SPEAR_EXAMPLE_EXIT_BEFORE_CONNECT": "3"},
        restart=RestartPolicy(backoff_min=30, backoff_max=30)))
    failed = system.create_instance("doomed", example(
        "crash", env={"SPEAR_EXAMPLE_EXIT_BEFORE_CONNECT": "3"},
        restart=RestartPolicy(max_restarts=0)))
    system.wait_ready(ready, WAIT)
    pid = system.wait_ready(frozen, WAIT).pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    system.wait_state(connecting, {InstanceState.CONNECTING}, WAIT)
    system.wait_state(backing_off, {InstanceState.RESTARTING}, WAIT)
    system.wait_state(failed, {InstanceState.FAILED}, WAIT)
    pids = [p.pid for p in psutil.Process().children(recursive=True)]
    assert len(pids) >= 3

    started = time.monotonic()
    system.shutdown()
    assert time.monotonic() - started < 5.0

    assert not [p for p in psutil.Process().children(recursive=True) if p.pid in pids]
    assert pykka.ActorRegistry.get_all() == []
    assert not os.path.exists(system.work_dir)
    system.shutdown()  # idempotent
    with pytest.raises(SpearError, match="not running"):
        system.instances()


def test_instance_environment_and_working_directory(system: SpearSystem,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEAR_TEST_PARENT_ONLY", "leak")
    monkeypatch.setenv("LC_SPEAR_TEST", "kept")
    private = system.create_instance("echo", echo(env={"TASK_SETTING": "on"}))
    inherited = system.create_instance("echo", InstanceConfig(
        command=[sys.executable, "-m", "spear_actors.examples.echo"], inherit_env=True))
    for iid in (private, inherited):
        info = system.wait_ready(iid, WAIT)
        assert info.pid is not None
        proc = psutil.Process(info.pid)
        env = proc.environ()
        assert env["SPEAR_INSTANCE_ID"] == iid
        assert env["SPEAR_COMMUNICATION_ENDPOINT"] == system.endpoint
        assert env["SPEAR_COMMUNICATION_PORT"] == str(system.port)
        assert env["SPEAR_COMMUNICATION_TYPE"] == "tcp"
        assert env["LC_SPEAR_TEST"] == "kept"
        assert proc.cwd() == os.path.join(system.work_dir, iid)
        if iid == private:
            assert env["TASK_SETTING"] == "on"
            assert "SPEAR_TEST_PARENT_ONLY" not in env
        else:
            assert env["SPEAR_TEST_PARENT_ONLY"] == "leak"


def test_instances_reach_an_ipc_listener_through_the_endpoint(
        make_system: Callable[..., SpearSystem]) -> None:
    system = make_system(connection=ConnectionConfig(
        transport="ipc", heartbeat_interval=HEARTBEAT_INTERVAL,
        heartbeat_timeout=HEARTBEAT_TIMEOUT))
    assert system.endpoint.startswith("ipc://")
    iid = system.create_instance("echo", echo())
    info = system.wait_ready(iid, WAIT)
    assert info.pid is not None
    env = psutil.Process(info.pid).environ()
    assert env["SPEAR_COMMUNICATION_TYPE"] == "ipc"
    assert env["SPEAR_COMMUNICATION_ENDPOINT"] == system.endpoint
    assert "SPEAR_COMMUNICATION_PORT" not in env
    assert system.execute(iid, b"over ipc", timeout=5) == b"over ipc"
