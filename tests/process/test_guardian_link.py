"""Tests for the watcher's guardian (spear_actors.process.guardian_link): started on the first
spawn, told every spawn, replaced when it dies, closed and reaped by ``stop()``. In-process,
with real children and real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest
from helpers import wait_until

from spear_actors.process import ManagedProcess, ProcessWatcher, spawn
from spear_actors.process.guardian_link import GUARDIAN_SCRIPT

from .support import SECRET, dead, env_for, kill_all

WAIT = 5.0


@pytest.fixture
def watchers() -> Iterator[list[ProcessWatcher]]:
    """Watchers the test appends; each is stopped after it (again: stop is idempotent)."""
    made: list[ProcessWatcher] = []
    yield made
    for w in made:
        assert w.stop(timeout=WAIT)


@pytest.fixture
def procs() -> Iterator[list[ManagedProcess]]:
    """Processes the test appends; each tree is killed after it."""
    made: list[ManagedProcess] = []
    yield made
    for p in made:
        p.kill_tree()


def sleeper(w: ProcessWatcher, procs: list[ManagedProcess]) -> ManagedProcess:
    proc = spawn(argv=["sh", "-c", "sleep 300 & sleep 300; wait"], env=env_for(), cwd=None,
                 limits=None, instance_id="i-1", on_exit=None, watcher=w)
    procs.append(proc)
    return proc


def guardian_of(w: ProcessWatcher) -> psutil.Process:
    pid = w.guardian_pid
    assert pid is not None
    g = psutil.Process(pid)
    assert g.ppid() == os.getpid()
    # right after exec, before the kernel has set up the new argv, cmdline() may be empty
    wait_until(lambda: GUARDIAN_SCRIPT in g.cmdline(), WAIT, message="the guardian's argv")
    return g


def exited(p: psutil.Process) -> bool:
    """A zombie or gone (this never reaps it: the watcher's guardian link must)."""
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_started_on_first_spawn_and_reaped_by_stop(watchers: list[ProcessWatcher],
                                                   procs: list[ManagedProcess]) -> None:
    w = ProcessWatcher()
    watchers.append(w)
    assert w.guardian_pid is None  # nothing spawned, nothing to guard
    proc = sleeper(w, procs)
    g = guardian_of(w)
    assert os.getsid(g.pid) == g.pid  # its own session: a Ctrl-C or hangup does not reach it
    assert g.environ() == {}  # no secret, nor anything else, reaches it
    assert not any(SECRET in arg for arg in g.cmdline())
    second = sleeper(w, procs)
    assert w.guardian_pid == g.pid  # one guardian for every child
    assert proc.kill_tree() == -signal.SIGKILL and second.kill_tree() == -signal.SIGKILL
    assert w.stop(timeout=WAIT)
    assert dead(g)  # exited and reaped by stop(): no zombie left behind


def test_stop_kills_children_left_running(watchers: list[ProcessWatcher],
                                          procs: list[ManagedProcess]) -> None:
    w = ProcessWatcher()
    watchers.append(w)
    proc = sleeper(w, procs)
    members = wait_until(lambda: proc.descendants() if len(proc.descendants()) == 2 else None,
                         WAIT, message="the session members")
    assert members is not None
    g = guardian_of(w)
    assert w.stop(timeout=WAIT)  # the child is abandoned: the guardian must not leave it
    assert proc.wait(WAIT) == -signal.SIGKILL
    wait_until(lambda: all(dead(p) for p in members), WAIT, message="the members to go")
    assert dead(g)


@pytest.mark.parametrize("use_pidfd", [True, False])
def test_dead_guardian_is_replaced_and_told_every_child(
        watchers: list[ProcessWatcher], procs: list[ManagedProcess], use_pidfd: bool) -> None:
    w = ProcessWatcher(use_pidfd=use_pidfd)
    watchers.append(w)
    proc = sleeper(w, procs)
    old = guardian_of(w)
    old.kill()
    # with a pidfd at once, else within the watcher thread's periodic check
    wait_until(lambda: w.guardian_pid not in (None, old.pid), WAIT,
               message="a new guardian")
    new = guardian_of(w)
    assert dead(old)  # the dead one was reaped
    assert w.stop(timeout=WAIT)  # the new guardian knows the child: it kills it now
    assert proc.wait(WAIT) == -signal.SIGKILL
    assert dead(new)


def test_register_replaces_a_dead_guardian(watchers: list[ProcessWatcher],
                                           procs: list[ManagedProcess]) -> None:
    w = ProcessWatcher(use_pidfd=False)  # no pidfd: only the periodic check would notice
    watchers.append(w)
    first = sleeper(w, procs)
    old = guardian_of(w)
    old.kill()
    wait_until(lambda: exited(old), WAIT, message="the guardian to die")
    second = sleeper(w, procs)  # the next register checks the guardian first
    assert w.guardian_pid not in (None, old.pid)
    assert w.stop(timeout=WAIT)
    assert first.wait(WAIT) == -signal.SIGKILL
    assert second.wait(WAIT) == -signal.SIGKILL


DEFAULT_WATCHER_PROGRAM = """
import json, os
from spear_actors.process import default_watcher, spawn
proc = spawn(argv=["sleep", "300"], env={"PATH": os.environ["PATH"]}, cwd=None, limits=None,
             instance_id="i-1", on_exit=None)  # no watcher: the default one
print(json.dumps([proc.pid, default_watcher().guardian_pid]), flush=True)
"""  # ... and exit, leaving the child running: its guardian must end it


def test_spawn_without_a_watcher_is_guarded_too(subreaper: None) -> None:
    program = subprocess.run([sys.executable, "-c", DEFAULT_WATCHER_PROGRAM], timeout=30,
                             capture_output=True, text=True, check=False)
    assert program.returncode == 0, program.stderr
    child_pid, guardian_pid = json.loads(program.stdout)
    procs = [psutil.Process(pid) for pid in (child_pid, guardian_pid) if psutil.pid_exists(pid)]
    try:
        wait_until(lambda: all(dead(p) for p in procs), WAIT,
                   message="the child and the guardian to go with the program")
    finally:
        kill_all(procs)
