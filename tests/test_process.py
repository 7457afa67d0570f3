"""Tests for spear_actors.process with real child processes (no mocks of the OS)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import wait_until
from loguru import logger

from spear_actors.config import ResourceLimits
from spear_actors.errors import ConfigError, SpawnError
from spear_actors.process import (
    MAX_LINE,
    ManagedProcess,
    ProcessWatcher,
    build_env,
    reap_adopted_orphans,
    resolve_command,
    set_child_subreaper,
    spawn,
)

SECRET = "s3cr3t-" + "ab" * 32
MIB = 1 << 20


def py(code: str) -> list[str]:
    """argv running ``code`` in a fresh interpreter (-S: no site, faster start)."""
    return [sys.executable, "-S", "-c", code]


def env_for(iid: str = "i-1", **kw: Any) -> dict[str, str]:
    args: dict[str, Any] = {"instance_id": iid, "secret": SECRET, "port": 5555,
                            "endpoint": "tcp://127.0.0.1:5555", "transport": "tcp",
                            "extra": {}, "inherit_env": False}
    args.update(kw)
    return build_env(**args)


class Recorder:
    """Collects callbacks (they run in the watcher thread)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []
        self.codes: list[int] = []
        self.exit_time: float | None = None
        self.lines_at_exit: int | None = None

    def on_output(self, iid: str, stream: str, line: str) -> None:
        self.lines.append((iid, stream, line))

    def on_exit(self, code: int) -> None:
        self.lines_at_exit = len(self.lines)
        self.exit_time = time.monotonic()
        self.codes.append(code)

    def out(self, stream: str = "stdout") -> list[str]:
        return [line for _, s, line in self.lines if s == stream]

    def saw(self, text: str) -> Callable[[], bool]:
        return lambda: any(text in line for line in self.out())


def gone(pid: int, create_time: float) -> bool:
    """The process no longer exists, not even as a zombie (its pid may have been reused)."""
    try:
        return psutil.Process(pid).create_time() != create_time
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def watcher() -> Iterator[ProcessWatcher]:
    w = ProcessWatcher(name="test-process-watcher")
    yield w
    assert w.stop(timeout=2.0)


Start = Callable[..., tuple[ManagedProcess, Recorder]]


@pytest.fixture
def start(watcher: ProcessWatcher) -> Iterator[Start]:
    """Spawn ``code`` on the test's watcher; every process is killed after the test."""
    procs: list[ManagedProcess] = []

    def _start(code: str, *, limits: ResourceLimits | None = None, iid: str = "i-1",
               env: dict[str, str] | None = None, on: ProcessWatcher | None = None,
               cwd: str | None = None, args: tuple[str, ...] = ()
               ) -> tuple[ManagedProcess, Recorder]:
        rec = Recorder()
        proc = spawn(argv=[*py(code), *args], env=env or env_for(iid), cwd=cwd, limits=limits,
                     instance_id=iid, on_exit=rec.on_exit, on_output=rec.on_output,
                     watcher=on or watcher)
        procs.append(proc)
        return proc, rec

    yield _start
    for proc in procs:
        proc.kill_tree()


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Orphans of the test's children come to the test process instead of PID 1."""
    if not set_child_subreaper(True):
        pytest.skip("PR_SET_CHILD_SUBREAPER not available")
    yield
    set_child_subreaper(False)


@pytest.fixture
def records() -> Iterator[list[Any]]:
    """Every loguru record emitted during the test."""
    got: list[Any] = []
    sink = logger.add(lambda m: got.append(m.record), level=0, format="{message}")
    logger.enable("spear_actors")
    try:
        yield got
    finally:
        logger.disable("spear_actors")  # the library's default (spear_actors._log)
        logger.remove(sink)


SLEEPER = "import time; print('ready', flush=True); time.sleep(30)"


# ------------------------------------------------------------------ resolve_command


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


# ------------------------------------------------------------------ build_env


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


def test_secret_never_logged(start: Start, records: list[Any], tmp_path: Path) -> None:
    proc, _ = start("import sys; print('hello'); sys.exit(2)")
    assert proc.wait(5) == 2
    assert proc.terminate_tree(1) == 2
    with pytest.raises(SpawnError) as err:
        spawn(argv=[str(tmp_path / "missing")], env=env_for(), cwd=None, limits=None,
              instance_id="i-1", on_exit=None)
    assert SECRET not in str(err.value)
    assert any(r["message"] == "hello" for r in records)
    for r in records:
        assert SECRET not in r["message"] and SECRET not in repr(r["extra"])


# ------------------------------------------------------------------ spawn errors


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
    assert _child_pids() == before  # killed and reaped before raising
    assert rec.codes == []


def test_spawn_on_stopped_watcher() -> None:
    before = _child_pids()
    w = ProcessWatcher()
    assert w.stop(timeout=2.0)
    with pytest.raises(SpawnError, match="stopped"):
        spawn(argv=py(SLEEPER), env=env_for(), cwd=None, limits=None, instance_id="i-1",
              on_exit=None, watcher=w)
    assert _child_pids() == before


# ------------------------------------------------------------------ exit detection


@pytest.mark.parametrize("use_pidfd", [True, False])
def test_exit_code_detected_promptly(start: Start, use_pidfd: bool, tmp_path: Path) -> None:
    w = ProcessWatcher(use_pidfd=use_pidfd)
    try:
        proc, rec = start("import os, sys, time; print(time.monotonic(), os.getcwd(), "
                          "flush=True); sys.exit(3)", on=w, cwd=str(tmp_path))
        ctime = proc.create_time
        assert ctime is not None
        assert proc.wait(5) == 3
        assert proc.returncode == 3 and proc.exited.is_set() and rec.codes == [3]
        stamp, cwd = rec.out()[0].split(" ", 1)
        assert cwd == str(tmp_path)
        assert rec.exit_time is not None
        assert rec.exit_time - float(stamp) < 1.0
        assert gone(proc.pid, ctime)  # reaped: no zombie
    finally:
        assert w.stop(timeout=2.0)


def test_killed_by_signal_is_negative(start: Start) -> None:
    proc, rec = start(SLEEPER)
    wait_until(rec.saw("ready"), 5)
    ctime = proc.create_time
    assert ctime is not None
    assert proc.send_signal(signal.SIGKILL)
    assert proc.wait(5) == -signal.SIGKILL
    assert rec.codes == [-9]
    assert gone(proc.pid, ctime)
    assert not proc.send_signal(signal.SIGTERM)  # reaped: nothing to signal


def test_many_children_one_thread(start: Start, watcher: ProcessWatcher) -> None:
    threads = set(threading.enumerate())
    started = [start(f"import sys; print({i}); sys.exit({i})", iid=f"i-{i}")
               for i in range(8)]
    for i, (proc, rec) in enumerate(started):
        assert proc.wait(5) == i
        assert rec.out() == [str(i)] and {iid for iid, _, _ in rec.lines} == {f"i-{i}"}
    assert set(threading.enumerate()) - threads == set()  # no thread per process


# ------------------------------------------------------------------ output


def test_ten_megabytes_are_drained(start: Start) -> None:
    code = ("import sys\n"
            "out = sys.stdout.buffer\n"
            "line = b'x' * 1023 + b'\\n'\n"
            "for i in range(10240):\n"
            "    out.write(line)\n"
            "    if i % 1024 == 0: print('err', i, file=sys.stderr)\n"
            "out.flush()\n")
    proc, rec = start(code)
    assert proc.wait(30) == 0  # a writer blocked on a full pipe would never get here
    out = rec.out()
    assert len(out) == 10240 and all(len(line) == 1023 for line in out)
    assert len(rec.out("stderr")) == 10
    assert rec.lines_at_exit == len(rec.lines)  # on_exit runs after the last line


def test_long_lines_partial_lines_and_bad_utf8(start: Start) -> None:
    code = ("import sys\n"
            "o = sys.stdout.buffer\n"
            "o.write(b'a' * 200000 + b'\\nnext\\r\\n\\xff\\xfeok\\n'); o.write(b'tail')\n")
    proc, rec = start(code)
    assert proc.wait(5) == 0
    out = rec.out()
    assert out[0] == "a" * MAX_LINE + " [truncated]"
    assert out[1:] == ["next", "\ufffd\ufffdok", "tail"]


def test_output_is_logged_with_instance_and_stream(start: Start, records: list[Any]) -> None:
    proc, _ = start("import sys; print('to out'); print('to err', file=sys.stderr)",
                    iid="i-log")
    assert proc.wait(5) == 0
    got = {(r["message"], r["level"].name, r["extra"].get("stream"))
           for r in records if r["extra"].get("instance") == "i-log"}
    assert ("to out", "INFO", "stdout") in got
    assert ("to err", "WARNING", "stderr") in got


def test_watcher_survives_raising_callbacks(watcher: ProcessWatcher, start: Start,
                                            records: list[Any]) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("callback failure")

    bad = spawn(argv=py("print('a'); print('b')"), env=env_for(), cwd=None, limits=None,
                instance_id="i-bad", on_exit=boom, on_output=boom, watcher=watcher)
    assert bad.wait(5) == 0
    assert watcher.alive
    proc, rec = start("import sys; print('still here'); sys.exit(4)")
    assert proc.wait(5) == 4 and rec.out() == ["still here"] and rec.codes == [4]
    raised = [r for r in records if r["exception"] is not None]
    assert {r["message"] for r in raised} == {"on_output callback raised",
                                              "on_exit callback raised"}


def test_callback_may_stop_its_own_process(watcher: ProcessWatcher) -> None:
    holder: list[ManagedProcess] = []
    have = threading.Event()
    codes: list[int | None] = []

    def on_output(_iid: str, _stream: str, line: str) -> None:
        if line == "ready" and have.wait(5):
            codes.append(holder[0].terminate_tree(2))  # in the watcher thread

    proc = spawn(argv=py(SLEEPER), env=env_for(), cwd=None, limits=None, instance_id="i-1",
                 on_exit=codes.append, on_output=on_output, watcher=watcher)
    holder.append(proc)
    have.set()
    assert proc.wait(5) == -signal.SIGTERM
    assert codes == [-signal.SIGTERM, -signal.SIGTERM]


# ------------------------------------------------------------------ limits


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


# ------------------------------------------------------------------ stopping


def test_terminate_tree_graceful(start: Start) -> None:
    proc, rec = start(SLEEPER)
    wait_until(rec.saw("ready"), 5)
    t0 = time.monotonic()
    assert proc.terminate_tree(5) == -signal.SIGTERM
    assert time.monotonic() - t0 < 2.5  # did not wait for the timeout
    # idempotent, also after the exit
    assert proc.terminate_tree(5) == -signal.SIGTERM
    assert proc.kill_tree() == -signal.SIGTERM
    assert not proc.signal_group(signal.SIGTERM)
    assert rec.codes == [-signal.SIGTERM]


def test_terminate_tree_escalates_to_sigkill(start: Start) -> None:
    proc, rec = start("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                      "print('ready', flush=True)\ntime.sleep(30)\n")
    wait_until(rec.saw("ready"), 5)
    ctime = proc.create_time
    assert ctime is not None
    t0 = time.monotonic()
    assert proc.terminate_tree(0.3) == -signal.SIGKILL
    assert 0.3 <= time.monotonic() - t0 < 3.0
    assert gone(proc.pid, ctime)


def test_terminate_tree_continues_a_stopped_process(start: Start) -> None:
    proc, rec = start("import os, signal\nprint('ready', flush=True)\n"
                      "os.kill(os.getpid(), signal.SIGSTOP)\n")
    wait_until(rec.saw("ready"), 5)
    wait_until(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED, 5)
    t0 = time.monotonic()
    assert proc.terminate_tree(5) == -signal.SIGTERM  # SIGCONT lets SIGTERM act at once
    assert time.monotonic() - t0 < 2.5


GRANDCHILD = ("import os, subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-S', '-c', 'import os, time; os.setsid(); "
              "print(\"grandchild\", os.getpid(), flush=True); time.sleep(30)'])\n"
              "while not os.path.exists(sys.argv[1]): time.sleep(0.01)\n"
              "{after}\n")


def _grandchild_pid(rec: Recorder) -> psutil.Process:
    line = wait_until(lambda: [x for x in rec.out() if x.startswith("grandchild")], 5)[0]
    return psutil.Process(int(line.split()[1]))


def test_terminate_tree_kills_setsid_grandchild(start: Start, subreaper: None,
                                                tmp_path: Path) -> None:
    proc, rec = start(GRANDCHILD.format(after=""), args=(str(tmp_path / "never"),))
    gc = _grandchild_pid(rec)
    assert os.getsid(gc.pid) == gc.pid != proc.pid  # left our session and group
    ctime = gc.create_time()
    assert proc.terminate_tree(2) == -signal.SIGTERM
    assert gone(gc.pid, ctime)


def test_remembered_grandchild_killed_after_parent_exits(start: Start, subreaper: None,
                                                          tmp_path: Path) -> None:
    flag = tmp_path / "go"
    proc, rec = start(GRANDCHILD.format(after="sys.exit(0)"), args=(str(flag),))
    gc = _grandchild_pid(rec)
    ctime = gc.create_time()
    assert gc.pid in {p.pid for p in proc.descendants()}  # remembered from now on
    flag.touch()
    assert proc.wait(5) == 0
    wait_until(lambda: gc.ppid() == os.getpid(), 5)  # orphaned, adopted by the test process
    assert gc.is_running()
    assert proc.terminate_tree(2) == 0
    assert gone(gc.pid, ctime)


ORPHAN = ("import subprocess, sys\n"
          "g = subprocess.Popen([sys.executable, '-S', '-c', 'import os, sys, time\\n"
          "print(\"orphan\", os.getpid(), flush=True)\\n"
          "while not os.path.exists(sys.argv[1]): time.sleep(0.01)\\n', sys.argv[1]],\n"
          "                     stdout=subprocess.PIPE)\n"
          "print(g.stdout.readline().decode().strip(), flush=True)\n")


def test_orphans_exiting_on_their_own_are_reaped(start: Start, subreaper: None,
                                                 tmp_path: Path) -> None:
    w = ProcessWatcher(orphan_scan_interval=0.05)
    try:
        flag = tmp_path / "go"
        proc, rec = start(ORPHAN, on=w, args=(str(flag),))
        assert proc.wait(5) == 0  # the parent is gone, the grandchild lives on
        orphan = psutil.Process(int(rec.out()[0].split()[1]))
        ctime = orphan.create_time()
        wait_until(lambda: orphan.ppid() == os.getpid(), 5)  # adopted by the test process
        flag.touch()  # now it exits by itself, and nobody but us can reap it
        wait_until(lambda: gone(orphan.pid, ctime), 5, message="the orphan to be reaped")
    finally:
        assert w.stop(timeout=2.0)


def test_reap_adopted_orphans_leaves_our_own_children_alone(subreaper: None) -> None:
    own = [subprocess.Popen(py(f"import sys; sys.exit({5 + i})"), start_new_session=bool(i))
           for i in range(2)]
    wait_until(lambda: all(psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE
                           for p in own), 5)
    assert reap_adopted_orphans() == 0
    assert [p.wait(5) for p in own] == [5, 6]  # the exit statuses were not stolen
