"""No orphans, ever (DESIGN.md section 7): a spearlet killed by SIGKILL leaves no instance
process, nor any process of an instance's session, running 2 s later; a graceful exit leaves
no guardian either.

Each test runs a real spearlet in a child process (the embedding program in
``programs/embedded_spearlet.py``, or ``python -m spear_actors.cli up``), finds its instance
processes and their descendants with psutil *before* the kill, and SIGKILLs it. The
``subreaper`` fixture makes the orphans come to the test process, which reaps them; whatever a
test started is killed at teardown, even when it fails."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import spear_cgroup_dirs, wait_until

from spear_actors import InstanceState, attach
from spear_actors.control import Attached
from spear_actors.process.cgroups import detect
from spear_actors.process.guardian_link import GUARDIAN_SCRIPT

from .support import dead, kill_all, tree_of

PROGRAM = Path(__file__).parent / "programs" / "embedded_spearlet.py"
GONE_WITHIN = 2.0  # the contract
START_WAIT = 30.0
SHELL = ["sh", "-c", "sleep 300 & sleep 300; wait"]
SPAWNED = {InstanceState.CONNECTING, InstanceState.READY, InstanceState.BUSY}
UP_TOML = """
[[tasks]]
name = "sleeper"
command = ["sleep", "300"]
startup_timeout = 60.0

[[tasks]]
name = "shell"
command = ["sh", "-c", "sleep 300 & sleep 300; wait"]
startup_timeout = 60.0

[[tasks]]
name = "echo"
command = ["{python}", "-m", "spear_actors.examples.echo"]
"""


class Spearlet:
    """A spearlet in a child process, and every process seen under it (for the cleanup)."""

    def __init__(self, argv: Sequence[str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in cleanup()
        self.popen = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._log)
        self.seen: list[psutil.Process] = []
        self.guardians: list[psutil.Process] = []
        """Found guardians: left to finish their work before the cleanup kills them."""
        self._buffer = b""

    def read_json(self, timeout: float = START_WAIT) -> dict[str, Any]:
        """The next JSON line the spearlet prints (bounded wait)."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                assert left > 0, f"no output from the spearlet:\n{self.output()}"
                if sel.select(left):
                    data = os.read(fd, 65536)
                    assert data, f"the spearlet exited ({self.popen.poll()}):\n{self.output()}"
                    self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def guardian(self, not_pid: int | None = None) -> psutil.Process:
        """The spearlet's guardian process (a different one than ``not_pid``)."""
        def find() -> psutil.Process | None:
            for child in psutil.Process(self.popen.pid).children():
                try:
                    if GUARDIAN_SCRIPT in child.cmdline() and child.pid != not_pid:
                        return child
                except psutil.Error:
                    continue
            return None

        g = wait_until(find, START_WAIT, message="the spearlet's guardian")
        assert g is not None
        self.guardians.append(g)
        return g

    def processes(self, pids: Sequence[int], shells: int) -> list[psutil.Process]:
        """``pids`` and all their descendants, once each of the ``shells`` instances running
        SHELL has started its two sleeps."""
        def ready() -> list[psutil.Process] | None:
            procs = tree_of(pids)
            started = [p for p in procs if _cmdline(p) == ["sleep", "300"]
                       and _cmdline(psutil.Process(p.ppid()))[1:] == SHELL[1:]]
            return procs if len(started) == 2 * shells else None

        procs = wait_until(ready, START_WAIT, message="the instances' processes")
        assert procs is not None
        self.seen += procs
        return procs

    def kill(self) -> float:
        """SIGKILL the spearlet; return the time of the kill."""
        killed_at = time.monotonic()
        self.popen.kill()
        assert self.popen.wait(START_WAIT) == -signal.SIGKILL
        return killed_at

    def cleanup(self) -> None:
        if self.popen.poll() is None:
            self.seen += tree_of([self.popen.pid])[1:]  # all it started, before it goes
            self.popen.kill()
        self.popen.wait(START_WAIT)
        for f in (self.popen.stdin, self.popen.stdout):
            if f is not None:
                f.close()
        self._log.close()
        kill_all(self.seen)  # and reap: a zombie keeps its cgroup busy
        for g in self.guardians:  # it exits once it has removed the cgroups (bounded)
            with contextlib.suppress(psutil.Error):
                g.wait(START_WAIT)
        kill_all(self.guardians)


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


@pytest.fixture
def spearlet(subreaper: None, tmp_path: Path) -> Iterator[Callable[..., Spearlet]]:
    """``spearlet(argv)`` starts one; each is killed, with all it started, after the test."""
    made: list[Spearlet] = []

    def start(argv: Sequence[str]) -> Spearlet:
        made.append(Spearlet(argv, tmp_path / f"spearlet-{len(made)}.log"))
        return made[-1]

    yield start
    for s in made:
        s.cleanup()


def assert_all_gone(procs: Sequence[psutil.Process], since: float) -> None:
    left = GONE_WITHIN - (time.monotonic() - since)
    wait_until(lambda: all(dead(p) for p in procs), max(0.0, left),
               message=f"every instance process to be gone {GONE_WITHIN}s after the SIGKILL: "
                       f"{[p.pid for p in procs if not dead(p)]}")


def embedded(spearlet: Callable[..., Spearlet]) -> tuple[Spearlet, list[psutil.Process]]:
    s = spearlet([sys.executable, str(PROGRAM)])
    pids = s.read_json()["instances"]
    assert len(pids) == 3
    return s, s.processes(list(pids.values()), shells=1)


def test_sigkill_of_an_embedding_program(spearlet: Callable[..., Spearlet]) -> None:
    s, procs = embedded(spearlet)
    guardian = s.guardian()
    assert len(procs) == 5  # echo, sleep, sh and its two sleeps
    prefix = f"spear-{s.popen.pid}-"
    cgroups = {p for p in spear_cgroup_dirs() if os.path.basename(p).startswith(prefix)}
    killed = s.kill()
    assert_all_gone(procs, since=killed)
    wait_until(lambda: dead(guardian), START_WAIT, message="the guardian to exit")
    assert cgroups or isinstance(detect(), str) or os.geteuid() != 0
    assert not any(os.path.exists(p) for p in cgroups)  # the guardian removed them


def test_sigkill_of_up(spearlet: Callable[..., Spearlet], tmp_path: Path) -> None:
    config, run_dir = tmp_path / "spear.toml", tmp_path / "run"
    config.write_text(UP_TOML)
    s = spearlet([sys.executable, "-m", "spear_actors.cli", "up", "--config", str(config),
                  "--run-dir", str(run_dir)])
    wait_until(lambda: s.popen.poll() is None and (run_dir / "control.json").exists(),
               START_WAIT, message=f"up's run file:\n{s.output()}")

    def spawned(spear: Attached) -> list[int] | None:
        # CONNECTING or later: spawn() has returned, so the guardian has been told
        infos = [i for i in spear.instances() if i.state in SPAWNED and i.pid is not None]
        return [i.pid for i in infos if i.pid is not None] if len(infos) == 3 else None

    with attach(run_dir) as spear:
        pids = wait_until(lambda: spawned(spear), START_WAIT, message="three instances")
    assert pids is not None
    guardian = s.guardian()
    procs = s.processes(pids, shells=1)
    assert_all_gone(procs, since=s.kill())
    wait_until(lambda: dead(guardian), START_WAIT, message="the guardian to exit")


def test_a_killed_guardian_is_replaced(spearlet: Callable[..., Spearlet]) -> None:
    s, procs = embedded(spearlet)
    old = s.guardian()
    old.kill()
    new = s.guardian(not_pid=old.pid)
    assert dead(old)  # reaped by the spearlet
    s.popen.stdin.write(b"spawn\n")  # type: ignore[union-attr]
    s.popen.stdin.flush()  # type: ignore[union-attr]
    # one more spawn: registered after the new guardian was told about every earlier one
    procs += s.processes([s.read_json()["spawned"]], shells=0)
    assert_all_gone(procs, since=s.kill())
    wait_until(lambda: dead(new), START_WAIT, message="the new guardian to exit")


def test_graceful_exit_leaves_no_guardian(spearlet: Callable[..., Spearlet]) -> None:
    s, procs = embedded(spearlet)
    guardian = s.guardian()
    s.popen.stdin.close()  # type: ignore[union-attr]  # the program shuts down and exits
    assert s.popen.wait(START_WAIT) == 0, s.output()
    assert dead(guardian)  # stopped and reaped by the spearlet itself
    assert all(dead(p) for p in procs)


def test_sigkill_of_an_embedding_program_takes_the_zygote_and_its_children(
        spearlet: Callable[..., Spearlet]) -> None:
    s = spearlet([sys.executable, str(PROGRAM.parent / "embedded_zygote.py")])
    pids = list(s.read_json()["instances"].values())
    zygotes = {psutil.Process(pid).ppid() for pid in pids}
    assert len(zygotes) == 1
    (zygote,) = zygotes
    assert "spear_actors.zygote" in psutil.Process(zygote).cmdline()
    procs = tree_of([zygote])
    s.seen += procs
    s.guardian()  # found, so that the cleanup lets it finish, then reaps it
    assert {p.pid for p in procs} == {zygote, *pids}
    killed = s.kill()
    assert_all_gone(procs, since=killed)
