"""The guardian: when the spearlet dies, by any means, it kills every instance session.

A STANDALONE script, not imported by the spearlet: :mod:`.guardian_link` runs it as
``python -I -S guardian.py SPEARLET_PID`` in its own session, with an empty environment, no
open file but a pipe on stdin, and ``/`` as working directory. It imports only ``os``,
``sys``, ``select`` and ``signal`` (a ~10 ms start) and knows nothing of the instances but
their pids: no secret ever reaches it.

Protocol on stdin, one ASCII line per event, written by the spearlet:

* ``+PID STARTTIME`` — an instance was spawned; PID leads its own session (sid = pgid = pid)
  and STARTTIME is field 22 of ``/proc/PID/stat`` (ticks since boot), which tells a reused
  pid apart.
* ``-PID`` — the spearlet reaped that leader. What is left of its session (members it may not
  have killed yet) stays guarded until a sweep sees the session empty.
* ``!`` — the spearlet is closing the pipe on purpose: act as at EOF (which a fork of the
  spearlet that did not exec, holding a copy of the pipe, could otherwise delay).
* ``#V PATH`` — PATH is a cgroup directory of the spearlet's (``spear-PID``, cgroup version V,
  1 or 2; one line per v1 hierarchy): every process in it or below it is an instance's, and
  the directories are to go with them. ``~PATH`` — the spearlet removed it itself.

The guardian's only thread polls stdin and a pidfd of the spearlet. When the spearlet is dead
(pidfd readable, or ``getppid()`` no longer the pid it was given: with a subreaper above us
it is not 1) or stdin hits EOF (the spearlet closed it, or died on a kernel without pidfds),
it reads what is left on stdin, SIGKILLs every guarded session and every process in the
guarded cgroups (cgroup.kill on v2; freeze, kill, thaw on v1: so a process that left its
session by ``setsid`` dies too), removes those cgroup directories and exits 0. The spearlet
side (:mod:`.cgroups`) uses :func:`kill_cgroups` and :func:`remove_cgroups` too.

What it kills, and why nothing else: for a registered leader still alive with the registered
STARTTIME, the leader and every process whose session id (field 6 of ``/proc/*/stat``) is that
pid. A pid cannot be reused while a session of that id has members, so if the leader is gone
(reaped) the members found are still ours; if a process with that pid exists with another
start time, the pid was reused after our session emptied: that session is not ours and is
left alone. Rounds repeat (bounded) until no live member is left, so a fork racing the kill
is caught too. SIGINT and SIGHUP are ignored; a SIGKILL of the guardian is noticed by the
spearlet, which starts a new one and registers every live instance again.
"""

from __future__ import annotations

import os
import select
import signal
import sys

KILL_ROUNDS = 50
"""Bound on kill rounds (each waits a little longer for the SIGKILLed to die, ~1.5 s in all)."""
SWEEP_FIRST = 0.25
"""Seconds after a ``-PID`` before the sessions of reaped leaders are checked for members."""
SWEEP_MAX = 5.0
"""Sessions that still have members are checked again with a backoff up to this period."""
PARENT_CHECK = 0.5
"""Without a pidfd (kernel < 5.3), how often ``getppid()`` is compared with the spearlet."""

Row = tuple[int, bytes, int, int]  # pid, state, session id, start time


def process_table() -> list[Row]:
    """``(pid, state, sid, starttime)`` of every process, read from ``/proc/*/stat``."""
    rows = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            row = read_stat(int(name))
            if row is not None:
                rows.append(row)
    return rows


def read_stat(pid: int) -> Row | None:
    """One process's row, or None if it does not exist (any more)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # "pid (comm) state ppid pgrp session ... starttime(22)": comm may hold spaces and ")"
        fields = stat[stat.rindex(b")") + 2:].split()
        return pid, fields[0], int(fields[3]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def now() -> float:
    return os.times().elapsed  # monotonic (clock ticks since boot), no extra import


def cgroup_dirs(root: str) -> list[str]:
    """``root`` and every cgroup below it, children before their parents."""
    return [dirpath for dirpath, _dirs, _files in os.walk(root)][::-1]


def cgroup_members(root: str) -> set[int]:
    """Pids of the processes in ``root`` and below (cgroup.procs lists no zombies)."""
    pids: set[int] = set()
    for path in cgroup_dirs(root):
        try:
            with open(path + "/cgroup.procs", "rb") as f:
                pids.update(int(word) for word in f.read().split())
        except (OSError, ValueError):
            continue
    return pids


def write_file(path: str, text: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(text)
        return True
    except OSError:
        return False


def kill_cgroups(roots: dict[str, int], spared: frozenset[int] = frozenset()) -> int:
    """SIGKILL every process in the cgroups ``roots`` (path -> version) and below them.

    v2: one write to ``cgroup.kill`` (kernel >= 5.14) does it atomically. Otherwise (v1, or
    an older v2) the cgroups with a freezer are frozen first, so nothing forks while the
    members are listed and killed, then thawed (the kill lands as they wake). Rounds repeat
    (bounded) until no member is listed. Returns how many signals were sent.
    """
    rest: dict[str, int] = {}
    for root, version in roots.items():
        if not (version == 2 and write_file(root + "/cgroup.kill", "1")):
            rest[root] = version
    sent = 0
    for round_ in range(KILL_ROUNDS if rest else 0):
        frozen = [root for root in rest if os.path.exists(root + "/freezer.state")
                  and write_file(root + "/freezer.state", "FROZEN")]
        pids: set[int] = set()
        for root in rest:
            pids |= cgroup_members(root)
        for pid in pids - spared:
            try:
                os.kill(pid, signal.SIGKILL)
                sent += 1
            except OSError:
                continue
        for root in frozen:
            write_file(root + "/freezer.state", "THAWED")
        if not pids - spared:
            break
        select.select([], [], [], 0.002 * min(round_ + 1, 25))  # let them die
    return sent


def remove_cgroups(root: str, timeout: float) -> bool:
    """rmdir ``root`` and every cgroup below it, retrying while members are still dying
    (EBUSY) for up to ``timeout`` seconds. True once nothing is left."""
    deadline, delay = now() + timeout, 0.001
    while True:
        left = False
        for path in cgroup_dirs(root):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                continue
            except OSError:
                left = True
        if not left:
            return True
        if now() >= deadline:
            return False
        select.select([], [], [], delay)
        delay = min(delay * 2, 0.05)


REMOVE_WAIT = 10.0
"""Seconds the guardian keeps trying to remove a spearlet cgroup still busy with zombies."""


class Guardian:
    """The guarded sessions and the kill; driven by :func:`main` (one thread)."""

    def __init__(self, parent: int) -> None:
        self.live: dict[int, int] = {}  # leader pid -> start time, leader not reaped yet
        self.reaped: set[int] = set()  # session ids whose leader was reaped by the spearlet
        self.sweep_at: float | None = None
        self.sweep_delay = SWEEP_FIRST
        self.buffer = b""
        self.quit = False  # the spearlet said it is closing: act as at EOF
        self.spared = {os.getpid(), os.getsid(0), parent}  # never ours to kill
        self.cgroups: dict[str, int] = {}  # the spearlet's cgroup roots: path -> version

    def feed(self, data: bytes) -> None:
        """Apply every complete line of ``data``; malformed lines are ignored."""
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            try:
                if line == b"!":
                    self.quit = True
                elif line.startswith(b"#"):
                    version, path = line[1:].split(b" ", 1)
                    self.cgroups[os.fsdecode(path)] = int(version)
                elif line.startswith(b"~"):
                    self.cgroups.pop(os.fsdecode(line[1:]), None)
                elif line.startswith(b"+"):
                    pid_text, start_text = line[1:].split()
                    pid = int(pid_text)
                    self.live[pid] = int(start_text)
                    self.reaped.discard(pid)
                elif line.startswith(b"-"):
                    pid = int(line[1:])
                    if self.live.pop(pid, None) is not None:
                        self.reaped.add(pid)
                        if self.sweep_at is None:
                            self.sweep_at = now() + SWEEP_FIRST
            except ValueError:
                continue

    def sweep(self) -> None:
        """Forget reaped leaders whose session is empty, or whose pid was reused."""
        table = process_table()
        present = {row[0] for row in table}
        populated = {sid for _, state, sid, _ in table if state not in (b"Z", b"X")}
        self.reaped = {pid for pid in self.reaped if pid not in present and pid in populated}
        if self.reaped:
            self.sweep_at = now() + self.sweep_delay
            self.sweep_delay = min(self.sweep_delay * 2, SWEEP_MAX)
        else:
            self.sweep_at, self.sweep_delay = None, SWEEP_FIRST

    def sessions(self, table: list[Row]) -> set[int]:
        """The session ids that are still ours, judged from one read of the table."""
        by_pid = {row[0]: row for row in table}
        ours = set()
        for pid, start in self.live.items():
            row = by_pid.get(pid)
            if row is None or row[3] == start:  # gone (reaped meanwhile), or still the leader
                ours.add(pid)
        ours.update(pid for pid in self.reaped if pid not in by_pid)
        return ours - self.spared

    def kill_all(self) -> None:
        """SIGKILL every guarded session, then every process in the guarded cgroups, and
        remove those cgroups."""
        self.kill_sessions()
        if self.cgroups:
            kill_cgroups(self.cgroups, frozenset(self.spared))
            for path in self.cgroups:
                # a killed member stays a zombie (and its cgroup busy) until its new parent
                # reaps it: wait for that, bounded, rather than leave the directory behind
                remove_cgroups(path, REMOVE_WAIT)

    def kill_sessions(self) -> None:
        """SIGKILL every guarded session, in rounds until no live member is left."""
        if not self.live and not self.reaped:
            return
        for round_ in range(KILL_ROUNDS):
            table = process_table()
            ours = self.sessions(table)
            targets = [pid for pid, state, sid, _ in table
                       if sid in ours and state not in (b"Z", b"X") and pid not in self.spared]
            if not targets:
                return
            for pid in targets:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    continue
            select.select([], [], [], 0.002 * min(round_ + 1, 25))  # let them die


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    parent = int(argv[1])
    guardian = Guardian(parent)
    parent_dead, pidfd = False, None
    try:
        pidfd = os.pidfd_open(parent)
    except ProcessLookupError:
        parent_dead = True
    except (AttributeError, OSError):  # no pidfds here: compare getppid() now and then
        pidfd = None
    if os.getppid() != parent:
        parent_dead = True  # died (and was maybe replaced) before we got the pidfd
    os.set_blocking(0, False)
    poller = select.poll()
    poller.register(0, select.POLLIN)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    eof = False
    while not parent_dead and not eof:
        timeout = None if pidfd is not None else PARENT_CHECK
        if guardian.sweep_at is not None:
            until = max(0.0, guardian.sweep_at - now())
            timeout = until if timeout is None else min(timeout, until)
        for fd, _events in poller.poll(None if timeout is None else int(timeout * 1000) + 1):
            if fd == pidfd:
                parent_dead = True
            else:
                eof = read_input(guardian) or guardian.quit
        if pidfd is None and os.getppid() != parent:
            parent_dead = True
        if guardian.sweep_at is not None and now() >= guardian.sweep_at:
            guardian.sweep()
    while not eof:  # what the spearlet wrote before it died
        eof = read_input(guardian, until_empty=True)
    guardian.kill_all()
    return 0


def read_input(guardian: Guardian, until_empty: bool = False) -> bool:
    """Read what stdin holds into ``guardian``; True at EOF (or, with ``until_empty``, once
    nothing more is waiting)."""
    while True:
        try:
            data = os.read(0, 65536)
        except BlockingIOError:
            return until_empty
        except OSError:
            return True
        if not data:
            return True
        guardian.feed(data)
        if not until_empty:
            return False


if __name__ == "__main__":
    sys.exit(main(sys.argv))
