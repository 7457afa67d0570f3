"""Operating a running ``up`` from another process (DESIGN.md section 8): every command and
its exit code, output tails across restarts, reload (and SIGHUP) with each kind of change and
with a broken file. Each test runs one real ``up`` and ends it."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import wait_until

from spear_actors import ConfigError, attach

from .support import CLI, ECHO_TOML, UpProcess, run_cli

CHATTY = """
import os, sys, time
from spear_actors.client import InstanceClient
print(f"hello from {os.getpid()}", flush=True)
print(f"warning from {os.getpid()}", file=sys.stderr, flush=True)
client = InstanceClient.from_env()
client.connect(10)
client.serve(lambda method, data: data)
"""


def _cli(run_dir: Path, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return run_cli(*args[:1], "--run-dir", str(run_dir), *args[1:], timeout=timeout)


def _pids(run_dir: Path) -> dict[str, int | None]:
    with attach(run_dir) as spear:
        return {i.id: i.pid for i in spear.instances()}


def _status_code(run_dir: Path, *names: str) -> int:
    done = _cli(run_dir, "status", *names)
    print(done.stdout, done.stderr)
    return done.returncode


def test_commands_and_exit_codes(tmp_path: Path) -> None:
    config = tmp_path / "spear.toml"
    config.write_text(ECHO_TOML)
    run_dir = tmp_path / "run"
    with UpProcess(config, run_dir) as up:
        up.wait_run_file()
        wait_until(lambda: _status_code(run_dir) == 0, 20, message="all READY")
        assert f"config: {config}" in up.output  # the absolute path it loaded
        assert _status_code(run_dir, "echo-1") == 0
        assert _status_code(run_dir, "echo", "all") == 0
        missing = _cli(run_dir, "status", "echo-1", "nope")
        assert missing.returncode == 4 and "nope: no such instance or task" in missing.stderr
        # stop / start of one instance
        assert _cli(run_dir, "stop", "echo-1").returncode == 0
        assert _status_code(run_dir) == 3 and _status_code(run_dir, "echo-2") == 0
        again = _cli(run_dir, "stop", "echo-1")
        assert again.returncode == 1 and "not running" in again.stderr
        assert _cli(run_dir, "start", "echo-1").returncode == 0
        wait_until(lambda: _status_code(run_dir) == 0, 20, message="echo-1 back")
        assert _pids(run_dir).keys() == {"echo-1", "echo-2"}  # the same id
        assert _cli(run_dir, "start", "echo-1").returncode == 1  # already started
        # restart a task; stop all; restart all starts them again
        before = _pids(run_dir)
        assert _cli(run_dir, "restart", "echo").returncode == 0
        wait_until(lambda: _status_code(run_dir) == 0 and all(
            before[i] != p for i, p in _pids(run_dir).items()), 20, message="restarted")
        assert _cli(run_dir, "stop", "all").returncode == 0
        assert _status_code(run_dir) == 3
        assert _cli(run_dir, "restart", "all").returncode == 0
        wait_until(lambda: _status_code(run_dir) == 0, 20, message="all started")
        with attach(run_dir) as spear:  # a fresh budget: the counters start again
            assert all(i.restarts == 0 for i in spear.instances())
        # a death by signal is named
        pid = _pids(run_dir)["echo-2"]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: _status_code(run_dir) == 0 and _pids(run_dir)["echo-2"] != pid, 20)
        with attach(run_dir) as spear:
            exits = [e for e in spear.events(kinds={"InstanceExited"})
                     if e.data.get("pid") == pid]
        assert exits[-1].data["reason"] == "killed by SIGKILL"
        assert exits[-1].data["signal"] == "SIGKILL"
        assert _cli(run_dir, "events", "--kind", "Bogus").returncode == 2
        # execute
        answer = _cli(run_dir, "execute", "echo", "hi there", "--method", "echo")
        assert (answer.returncode, answer.stdout) == (0, "hi there"), answer.stderr
        bad = _cli(run_dir, "execute", "nosuch", "x", "--timeout", "2")
        assert bad.returncode == 1 and bad.stderr and not bad.stdout
        with attach(run_dir) as spear:  # the same through attach()
            assert spear.execute("echo", b"one", method="echo") == b"one"
            assert spear.submit("echo", b"two").result(10) == b"two"
            assert spear.start_instance("echo-1") is False  # running already
            said = spear.tail("echo-1", n=2)  # it speaks when stopped: kept across restarts
            assert len(said) == 2 and all(x.startswith("echo instance stopping") for x in said)
        # scale up, then down: the instances that stay keep their pids
        assert _cli(run_dir, "scale", "echo", "3").returncode == 0
        wait_until(lambda: _status_code(run_dir) == 0 and len(_pids(run_dir)) == 3, 20)
        kept = _pids(run_dir)["echo-1"]
        scaled = _cli(run_dir, "scale", "echo", "1")
        assert scaled.returncode == 0, scaled.stderr
        assert _pids(run_dir) == {"echo-1": kept}
        # tree --json and status --json speak of `id`
        tree = _cli(run_dir, "tree", "--json")
        assert '"id": "echo-1"' in tree.stdout and "instance_id" not in tree.stdout
        helped = run_cli("help")
        assert helped.returncode == 0 and "tail" in helped.stdout
        assert "--lines" in run_cli("help", "tail").stdout
        # shutdown: up leaves cleanly; afterwards nothing is reachable
        assert _cli(run_dir, "shutdown").returncode == 0
        assert up.proc.wait(20) == 0, up.output
        assert _status_code(run_dir) == 1


def test_tail_across_restarts(tmp_path: Path) -> None:
    (tmp_path / "chatty.py").write_text(CHATTY)
    config = tmp_path / "spear.toml"
    config.write_text('[[tasks]]\nname = "chatty"\ncommand = ["{python}", "chatty.py"]\n'
                      'working_dir = "."\nstop_timeout = 2.0\n'
                      'env = {PYTHONPATH = "' + os.getcwd() + '"}\n')
    run_dir = tmp_path / "run"
    with UpProcess(config, run_dir) as up:
        up.wait_run_file()
        wait_until(lambda: _status_code(run_dir) == 0, 20, message="READY")
        first = _pids(run_dir)["chatty-1"]
        follow = subprocess.Popen([*CLI, "tail", "-f", "--run-dir", str(run_dir), "chatty-1"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert _cli(run_dir, "restart", "chatty-1").returncode == 0
            wait_until(lambda: _status_code(run_dir) == 0
                       and _pids(run_dir)["chatty-1"] != first, 20, message="restarted")
            second = _pids(run_dir)["chatty-1"]
            out = _cli(run_dir, "tail", "-n", "10", "chatty-1")
            assert out.returncode == 0
            for pid in (first, second):
                assert f"hello from {pid}" in out.stdout and f"warning from {pid}" in out.stdout
            assert _cli(run_dir, "tail", "-n", "1", "chatty-1").stdout.count("\n") == 1
            with attach(run_dir) as spear:
                assert f"warning from {second}" in spear.tail("chatty-1", n=100)[-1]
            assert follow.stdout is not None
            seen = []
            while f"hello from {second}" not in "".join(seen):  # -f prints the new ones
                seen.append(follow.stdout.readline())
        finally:
            follow.kill()
            follow.wait(5)
        assert _cli(run_dir, "tail", "nope").returncode == 1


RELOAD_V1 = """
[[tasks]]
name = "grow"
command = ["{python}", "-m", "spear_actors.examples.echo"]
instances = 1
stop_timeout = 2.0

[[tasks]]
name = "gone"
command = ["{python}", "-m", "spear_actors.examples.echo"]
stop_timeout = 2.0

[[tasks]]
name = "tweak"
command = ["{python}", "-m", "spear_actors.examples.echo"]
instances = 2
stop_timeout = 2.0
env = {FLAVOUR = "one"}
"""

RELOAD_V2 = """
[[tasks]]
name = "grow"
command = ["{python}", "-m", "spear_actors.examples.echo"]
instances = 2
stop_timeout = 2.0

[[tasks]]
name = "fresh"
command = ["{python}", "-m", "spear_actors.examples.echo"]
stop_timeout = 2.0

[[tasks]]
name = "tweak"
command = ["{python}", "-m", "spear_actors.examples.echo"]
instances = 2
stop_timeout = 2.0
env = {FLAVOUR = "two"}
"""


def test_reload_each_kind_of_change_and_a_broken_file(tmp_path: Path) -> None:
    config = tmp_path / "spear.toml"
    config.write_text(RELOAD_V1)
    run_dir = tmp_path / "run"
    with UpProcess(config, run_dir) as up:
        up.wait_run_file()
        wait_until(lambda: _status_code(run_dir) == 0 and len(_pids(run_dir)) == 4, 20)
        before = _pids(run_dir)
        # a broken file changes nothing: exit 2, the key named; attach().reload() raises
        config.write_text(RELOAD_V2.replace("instances = 2\nstop", "instances = -1\nstop", 1))
        broken = _cli(run_dir, "reload")
        assert broken.returncode == 2 and "tasks[0].instances" in broken.stderr
        with attach(run_dir) as spear, pytest.raises(ConfigError, match=r"tasks\[0\]\.instances"):
            spear.reload()
        assert _pids(run_dir) == before
        # the real change, by SIGHUP
        config.write_text(RELOAD_V2)
        up.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "received SIGHUP: reloaded" in up.output, 30, message="reloaded")
        wait_until(lambda: _status_code(run_dir) == 0, 20, message="all READY again")
        after = _pids(run_dir)
        assert after["grow-1"] == before["grow-1"]  # scaled up, the old one kept its pid
        assert sorted(i.split("-")[0] for i in after) == ["fresh", "grow", "grow", "tweak",
                                                          "tweak"]
        assert "gone-2" not in after  # removed: stopped and no longer listed
        for iid in ("tweak-3", "tweak-4"):  # restarted with the new settings, same ids
            assert after[iid] != before[iid]
        assert "restarted tweak-3, tweak-4" in up.output
        # reload through the command: back to v1 (scale down, task back, task removed)
        config.write_text(RELOAD_V1)
        done = _cli(run_dir, "reload", timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"reloaded {config}" in done.stdout and "removed: fresh" in done.stdout
        final = _pids(run_dir)
        assert final["grow-1"] == before["grow-1"] and len(final) == 4
        assert _cli(run_dir, "status", "fresh").returncode == 4
