"""Tests for spear_actors.process.launch: resolving the binary, the environment, spawn errors
and limits, with real child processes (no mocks of the OS)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import wait_until

from spear_actors.config import ResourceLimits
from spear_actors.errors import ConfigError, SpawnError
from spear_actors.process import ProcessWatcher, resolve_command, spawn

from .support import MIB, SECRET, SLEEPER, Recorder, Start, env_for, py


def test_resolve_command_keeps_args_and_symlinks() -> None:
    assert resolve_command([sys.executable, "-c", "x"], None) == [sys.executable, "-c", "x"]


def test_resolve_command_searches_path() -> None:
    argv = resolve_command(["sh", "-c", "true"], None)
    assert os.path.isabs(argv[0]) and argv[0].endswith("/sh") and argv[1:] == ["-c", "true"]


def test_resolve_command_relative_to_working_dir(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert resolve_command(["./tool"], str(tmp_path)) == [str(tool)]


@pytest.mark.parametrize(("make", "expected"), [
    (lambda d: "/nonexistent/spear-no-such-binary", "binary not found"),
    (lambda d: "spear-no-such-binary-on-path", "binary not found"),
    (str, "is a directory"),
    (lambda d: str(d / "plain"), "not executable"),
    (lambda d: "plain", "not executable"),  # on PATH, but mode 0644
])
def test_resolve_command_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                make: Callable[[Path], str], expected: str) -> None:
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    with pytest.raises(SpawnError, match=expected):
        resolve_command([make(tmp_path), "arg"], None)


def test_build_env_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEAR_TEST_PRIVATE", "leak")
    monkeypatch.setenv("LC_SPEAR_TEST", "C")
    monkeypatch.setenv("TZ", "UTC")
    env = env_for(extra={"MINE": "1", "SPEAR_SECRET": "forged"})
    assert "SPEAR_TEST_PRIVATE" not in env
    assert env["LC_SPEAR_TEST"] == "C" and env["TZ"] == "UTC" and env["MINE"] == "1"
    assert env["PATH"] == os.environ["PATH"]
    assert env["SPEAR_SECRET"] == SECRET  # SPEAR_* override the task's env
    assert env["SPEAR_INSTANCE_ID"] == "i-1"
    assert env["SPEAR_COMMUNICATION_PORT"] == "5555"
    assert env["SPEAR_COMMUNICATION_TYPE"] == "tcp"
    assert env["SPEAR_COMMUNICATION_ENDPOINT"] == "tcp://127.0.0.1:5555"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env_for(inherit_env=True)["SPEAR_TEST_PRIVATE"] == "leak"
    assert env_for(extra={"PYTHONUNBUFFERED": ""})["PYTHONUNBUFFERED"] == ""


def test_build_env_ipc_has_no_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEAR_COMMUNICATION_PORT", "1")
    env = env_for(port=None, transport="ipc", endpoint="ipc:///tmp/x", inherit_env=True,
                  extra={"SPEAR_COMMUNICATION_PORT": "2"})
    assert "SPEAR_COMMUNICATION_PORT" not in env
    assert env["SPEAR_COMMUNICATION_ENDPOINT"] == "ipc:///tmp/x"
    with pytest.raises(ConfigError):
        env_for(transport="udp")
    with pytest.raises(ConfigError):
        env_for(port=None)


@pytest.mark.parametrize("inherit", [False, True])
def test_child_sees_only_allowed_env(start: Start, monkeypatch: pytest.MonkeyPatch,
                                     inherit: bool) -> None:
    monkeypatch.setenv("SPEAR_TEST_PRIVATE", "leak")
    proc, rec = start("import json, os; print(json.dumps(dict(os.environ)))",
                      env=env_for(inherit_env=inherit, extra={"TASK_VAR": "t"}))
    assert proc.wait(5) == 0
    child_env = json.loads(rec.out()[0])
    assert ("SPEAR_TEST_PRIVATE" in child_env) is inherit
    assert child_env["TASK_VAR"] == "t"
    assert child_env["SPEAR_SECRET"] == SECRET
    assert child_env["SPEAR_INSTANCE_ID"] == "i-1"
    assert child_env["SPEAR_COMMUNICATION_PORT"] == "5555"


def test_secret_never_logged(start: Start, records: list[Any], tmp_path: Path,
                             watcher: ProcessWatcher) -> None:
    proc, _ = start("import sys; print('hello'); sys.exit(2)")
    assert proc.wait(5) == 2
    assert proc.terminate_tree(1) == 2
    with pytest.raises(SpawnError) as err:
        spawn(argv=[str(tmp_path / "missing")], env=env_for(), cwd=None, limits=None,
              instance_id="i-1", on_exit=None, watcher=watcher)
    assert SECRET not in str(err.value)
    assert any(r["message"] == "hello" for r in records)
    for r in records:
        assert SECRET not in r["message"] and SECRET not in repr(r["extra"])


def test_spawn_errors(tmp_path: Path, watcher: ProcessWatcher) -> None:
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    kw: dict[str, Any] = {"env": env_for(), "limits": None, "instance_id": "i-1",
                          "on_exit": None, "watcher": watcher}
    with pytest.raises(SpawnError, match="working directory does not exist"):
        spawn(argv=py("pass"), cwd=str(tmp_path / "nope"), **kw)
    with pytest.raises(SpawnError, match="No such file"):
        spawn(argv=[str(tmp_path / "missing")], cwd=None, **kw)
    with pytest.raises(SpawnError, match="Permission denied"):
        spawn(argv=[str(plain)], cwd=None, **kw)


def _child_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children()}


def test_invalid_limit_kills_child(watcher: ProcessWatcher) -> None:
    before = _child_pids()
    rec = Recorder()
    with pytest.raises(SpawnError, match="cannot start instance i-1"):
        spawn(argv=py(SLEEPER), env=env_for(), cwd=None, instance_id="i-1",
              limits=ResourceLimits(cpu_affinity=(4096,)), on_exit=rec.on_exit,
              watcher=watcher)
    # killed and reaped before raising; only the watcher's guardian is new
    assert _child_pids() - {watcher.guardian_pid} == before
    assert rec.codes == []


def test_spawn_on_stopped_watcher() -> None:
    before = _child_pids()
    w = ProcessWatcher()
    assert w.stop(timeout=2.0)
    with pytest.raises(SpawnError, match="stopped"):
        spawn(argv=py(SLEEPER), env=env_for(), cwd=None, limits=None, instance_id="i-1",
              on_exit=None, watcher=w)
    assert _child_pids() == before


def test_limits_are_applied(start: Start) -> None:
    limits = ResourceLimits(memory_bytes=768 * MIB, max_open_files=256, nice=5,
                            cpu_affinity=(0,))
    proc, rec = start(SLEEPER, limits=limits)
    wait_until(rec.saw("ready"), 5)
    p = psutil.Process(proc.pid)
    assert p.rlimit(psutil.RLIMIT_AS) == (768 * MIB, 768 * MIB)
    assert p.rlimit(psutil.RLIMIT_NOFILE) == (256, 256)
    assert p.nice() == 5
    assert p.cpu_affinity() == [0]


def test_memory_limit_is_enforced(start: Start) -> None:
    code = ("import resource, sys, time\n"
            "while resource.getrlimit(resource.RLIMIT_AS)[0] != 256 << 20:  # see spawn()\n"
            "    time.sleep(0.001)\n"
            "try:\n"
            "    b = bytearray(1 << 30)\n"
            "except MemoryError:\n"
            "    sys.exit(7)\n")
    proc, _ = start(code, limits=ResourceLimits(memory_bytes=256 * MIB))
    assert proc.wait(5) == 7
