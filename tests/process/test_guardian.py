"""Tests for spear_actors.process.guardian, driven directly through its pipe: what it kills
when its parent is gone or its input ends, and above all what it never kills.

Real processes and real signals. The ``subreaper`` fixture makes the orphans these tests make
(session members whose leader was killed, a guardian whose parent was killed) come to the
test process, which reaps them (no zombie left under PID 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import psutil
import pytest
from helpers import wait_until

from spear_actors.process import guardian as guardian_script

from .support import dead, kill_all, tree_of

GUARDIAN = [sys.executable, "-I", "-S", guardian_script.__file__]
SHELL = "sleep 300 & sleep 300; wait"  # a session of three: sh and two sleeps
WAIT = 5.0


def start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat, parsed here independently of the guardian's parser."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def running(p: psutil.Process) -> bool:
    return not dead(p)


class Session:
    """``sh -c CMD`` leading its own session, and the members it started."""

    def __init__(self, cmd: str, members: int) -> None:
        self.leader = subprocess.Popen(["sh", "-c", cmd], start_new_session=True,
                                       stdout=subprocess.PIPE)
        self.ticks = start_ticks(self.leader.pid)
        self.members: list[psutil.Process] = []
        if members:
            found = wait_until(lambda: self._members(members), WAIT,
                               message=f"{members} session members")
            assert found is not None
            self.members = found

    def _members(self, n: int) -> list[psutil.Process] | None:
        found = tree_of([self.leader.pid])[1:]
        return found if len(found) == n else None

    @property
    def register(self) -> str:
        return f"+{self.leader.pid} {self.ticks}\n"

    def all_running(self) -> bool:
        return self.leader.poll() is None and all(running(p) for p in self.members)

    def all_dead(self) -> bool:
        return self.leader.poll() is not None and all(dead(p) for p in self.members)

    def cleanup(self) -> None:
        kill_all(self.members)
        if self.leader.poll() is None:
            self.leader.kill()
        self.leader.wait(WAIT)
        assert self.leader.stdout is not None
        self.leader.stdout.close()


@pytest.fixture
def session(subreaper: None) -> Iterator[Callable[..., Session]]:
    """``session(cmd=SHELL, members=2)``; every session is killed after the test."""
    made: list[Session] = []

    def make(cmd: str = SHELL, members: int = 2) -> Session:
        made.append(Session(cmd, members))
        return made[-1]

    yield make
    for s in made:
        s.cleanup()


@pytest.fixture
def guardian() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``guardian(parent=os.getpid(), stdin=PIPE)`` starts guardian.py; killed after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(parent: int | None = None, stdin: int = subprocess.PIPE
              ) -> subprocess.Popen[bytes]:
        started.append(subprocess.Popen([*GUARDIAN, str(parent or os.getpid())], stdin=stdin,
                                        start_new_session=True))
        return started[-1]

    yield start
    for g in started:
        if g.poll() is None:
            g.kill()
        g.wait(WAIT)
        if g.stdin is not None:
            g.stdin.close()


def tell(g: subprocess.Popen[bytes], text: str) -> None:
    assert g.stdin is not None
    g.stdin.write(text.encode())
    g.stdin.flush()


def end(g: subprocess.Popen[bytes]) -> int:
    """Close the guardian's input and wait for it to finish its work."""
    assert g.stdin is not None
    g.stdin.close()
    return g.wait(WAIT)


def test_kills_a_registered_session_at_eof(guardian: Callable[..., subprocess.Popen[bytes]],
                                           session: Callable[..., Session]) -> None:
    s = session()
    g = guardian()
    tell(g, s.register)
    assert s.all_running()
    assert end(g) == 0
    assert s.leader.wait(WAIT) == -signal.SIGKILL
    wait_until(s.all_dead, WAIT, message="the session members to be killed")


def test_never_kills_unregistered_or_reused_pids(
        guardian: Callable[..., subprocess.Popen[bytes]],
        session: Callable[..., Session]) -> None:
    ours, stranger, reused = session(), session(), session()
    g = guardian()
    tell(g, "garbage\n+12x 5\n-\n+1\n")  # malformed lines are ignored
    tell(g, ours.register)
    tell(g, f"+{reused.leader.pid} {reused.ticks + 1}\n")  # as if the pid had been reused
    tell(g, f"-{os.getpid()}\n-{stranger.leader.pid}\n")  # never registered: nothing to do
    assert end(g) == 0  # it exits once its work is done: whatever runs now, it spared
    wait_until(ours.all_dead, WAIT, message="the registered session to be killed")
    assert stranger.all_running()
    assert reused.all_running()


def test_a_reaped_leader_leaves_its_session_guarded(
        guardian: Callable[..., subprocess.Popen[bytes]],
        session: Callable[..., Session]) -> None:
    s = session("sleep 300 >/dev/null & echo $!", members=0)
    assert s.leader.stdout is not None
    member = psutil.Process(int(s.leader.stdout.readline()))
    s.members.append(member)  # so the fixture kills it whatever happens
    g = guardian()
    tell(g, s.register)  # the leader may be a zombie already: its start time stays readable
    assert s.leader.wait(WAIT) == 0  # reaped, as the spearlet's watcher would ...
    tell(g, f"-{s.leader.pid}\n")  # ... and then tells the guardian
    assert running(member) and os.getsid(member.pid) == s.leader.pid
    assert end(g) == 0
    wait_until(lambda: dead(member), WAIT, message="the leftover member to be killed")


def test_a_parent_gone_at_start_means_kill_at_once(
        guardian: Callable[..., subprocess.Popen[bytes]],
        session: Callable[..., Session]) -> None:
    s = session()
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, s.register.encode())
        g = guardian(parent=1, stdin=read_end)  # its parent is us, not 1: as if 1 had died
        assert g.wait(WAIT) == 0  # no EOF needed: we still hold the write end
        wait_until(s.all_dead, WAIT, message="the session to be killed")
    finally:
        os.close(read_end)
        os.close(write_end)


def test_parent_death_is_seen_without_eof(session: Callable[..., Session]) -> None:
    """SIGKILL of the guardian's parent while another process holds its pipe open (as a fork
    of the spearlet that did not exec would): the guardian still acts, through its pidfd."""
    s = session()
    read_end, write_end = os.pipe()
    code = ("import os, signal, subprocess, sys\n"
            f"g = subprocess.Popen({[*GUARDIAN]!r} + [str(os.getpid())], stdin=0,"
            " start_new_session=True)\n"
            "print(g.pid, flush=True)\n"
            "signal.pause()\n")
    parent = subprocess.Popen([sys.executable, "-S", "-c", code], stdin=read_end,
                              stdout=subprocess.PIPE)
    procs: list[psutil.Process] = []
    try:
        assert parent.stdout is not None
        g = psutil.Process(int(parent.stdout.readline()))
        procs.append(g)
        os.write(write_end, s.register.encode())
        parent.kill()
        assert parent.wait(WAIT) == -signal.SIGKILL
        wait_until(s.all_dead, WAIT, message="the session to be killed")
        wait_until(lambda: dead(g), WAIT, message="the guardian to exit")
    finally:
        os.close(read_end)
        os.close(write_end)
        if parent.poll() is None:
            parent.kill()
        parent.wait(WAIT)
        assert parent.stdout is not None
        parent.stdout.close()
        kill_all(procs)


def test_cgroup_lines_guard_and_forget_the_spearlet_cgroups() -> None:
    g = guardian_script.Guardian(parent=os.getpid())
    g.feed(b"#1 /sys/fs/cgroup/freezer/spear-1-1\n#2 /sys/fs/cgroup/sp ace/spear-1-2\n"
           b"~/sys/fs/cgroup/freezer/spear-1-1\n#x bad\n#1")
    assert g.cgroups == {"/sys/fs/cgroup/sp ace/spear-1-2": 2}
    g.feed(b" /c\n")  # the rest of a line split across reads
    assert g.cgroups["/c"] == 1
