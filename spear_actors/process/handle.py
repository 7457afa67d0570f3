"""The handle on one instance process: signals, waiting, its process tree, stopping it.

:class:`ManagedProcess` is what :func:`~spear_actors.process.spawn` returns. Any thread may use
it: signals, process-tree snapshots and a graceful (:meth:`~ManagedProcess.terminate_tree`) or
forced (:meth:`~ManagedProcess.kill_tree`) stop of the whole tree, with pid-reuse checks before
every signal. The :class:`~spear_actors.process.ProcessWatcher` thread reaps it and runs its
callbacks; a stop runs (and blocks) in the caller's thread.

Also here: the process-tree helpers behind those stops (one read of /proc for the whole
table, waiting for a set of processes to go). Linux only (/proc). The environment carries the
instance secret: it is never logged, nor stored on the handle.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Literal, Protocol

import psutil

from .._log import logger
from .guardian import read_stat

if TYPE_CHECKING:
    from .instance_cgroup import InstanceCgroup
    from .watcher import ProcessWatcher

__all__ = ["KILL_WAIT", "POLL_INTERVAL", "ExitCallback", "ManagedProcess", "OutputCallback",
           "Stream"]

POLL_INTERVAL = 0.05
"""Exit polling period for children without a pidfd (old kernels, seccomp)."""
KILL_WAIT = 5.0
"""Bound on waiting for SIGKILLed processes to go (a process in D state may never go)."""

Stream = Literal["stdout", "stderr"]
ExitCallback = Callable[[int], None]
"""``on_exit(returncode)``; negative means killed by that signal, as with ``Popen``."""
OutputCallback = Callable[[str, Stream, str], None]
"""``on_output(instance_id, stream, line)``, one call per line, without the newline."""


class ChildHandle(Protocol):
    """What :class:`ManagedProcess` needs of the process it manages: a ``Popen`` (spawned) or
    a :class:`~.forking.ForkedChild` (forked by a zygote)."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    @property
    def stdout(self) -> IO[bytes] | None: ...
    @property
    def stderr(self) -> IO[bytes] | None: ...
    def poll(self) -> int | None: ...


class ManagedProcess:
    """Handle on one instance process started by :func:`spawn`; thread-safe.

    Any thread may signal, wait or stop it. The watcher thread reaps it, then sets
    :attr:`returncode`, runs ``on_exit`` and finally sets :attr:`exited`, so once
    :meth:`wait` returns, all output has been delivered and ``on_exit`` has run.
    """

    def __init__(self, popen: subprocess.Popen[bytes] | ChildHandle, *, instance_id: str,
                 argv: Sequence[str],
                 pidfd: int | None, on_exit: ExitCallback | None,
                 on_output: OutputCallback | None,
                 cgroup: InstanceCgroup | None = None) -> None:
        self.pid: int = popen.pid
        self.instance_id = instance_id
        self.argv = tuple(argv)
        self.started_at = time.time()
        self.exited = threading.Event()
        self._popen = popen
        self._pidfd = pidfd
        self._on_exit = on_exit
        self._on_output = on_output
        self.cgroup = cgroup
        """The instance's cgroup, if it runs in one: every process in it is part of the tree
        (whatever its session), and :meth:`kill_tree` kills it whole. The owner removes it."""
        self._watcher: ProcessWatcher | None = None
        # Serialises reaping against group signals: while the leader is not reaped, its pid
        # (which is also the group and session id) cannot be reused.
        self._reap_lock = threading.Lock()
        self._ps: psutil.Process | None = None
        with contextlib.suppress(psutil.Error):  # not reaped yet, so certainly our child
            self._ps = psutil.Process(self.pid)
        stat = read_stat(self.pid)
        self.start_ticks: int | None = None if stat is None else stat[3]
        """Field 22 of /proc/PID/stat (ticks since boot): what the guardian checks for reuse."""
        self._known: dict[int, psutil.Process] = {}
        self._log = logger.bind(instance=instance_id)

    def __repr__(self) -> str:
        return (f"<ManagedProcess instance={self.instance_id!r} pid={self.pid} "
                f"returncode={self.returncode}>")

    @property
    def create_time(self) -> float | None:
        """The kernel's start time of the process; with :attr:`pid` it names it uniquely."""
        return None if self._ps is None else self._ps.create_time()

    @property
    def returncode(self) -> int | None:
        """Exit code once reaped (negative: killed by that signal), None while running."""
        return self._popen.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the exit; return the exit code, or None if ``timeout`` ran out."""
        if self.exited.is_set():
            return self.returncode
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            watcher = self._watcher
            if watcher is None or watcher.is_watcher_thread():
                return self._poll_wait(deadline, own_exit=watcher is None)
            left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if self.exited.wait(max(0.0, left)):
                return self.returncode
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def send_signal(self, sig: int) -> bool:
        """Signal the main process only; False if it has already been reaped."""
        with self._reap_lock:
            if self._popen.returncode is not None:
                return False
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                return False
            return True

    def signal_group(self, sig: int) -> bool:
        """Signal the whole process group (its id is the main pid); False if it is gone.

        Once the leader has been reaped, the group id stays reserved only while the group has
        members; the group is signalled only if no other process has taken that pid since,
        so we never signal a stranger's group.
        """
        with self._reap_lock:
            if self._popen.returncode is not None and psutil.pid_exists(self.pid):
                return False  # the pid was reused: the group we knew is gone
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                return False
            return True

    def descendants(self) -> list[psutil.Process]:
        """Live descendants: recursive children, members of our session, and every descendant
        seen by an earlier call (e.g. a grandchild that ran ``setsid`` and was orphaned).

        Each result is remembered. With a :attr:`cgroup`, every process in it is included
        too. Without one, call this now and then if instances daemonise: a process that left
        both the group and the session and lost its parent before we ever saw it cannot be
        found.
        """
        roots = [pid for pid, p in self._known.items() if _alive(p)]
        if self._popen.returncode is None:  # not reaped, so the pid is still ours
            roots.append(self.pid)
        session = self._own_session()
        children: dict[int, list[int]] = {}
        for pid, ppid, sid in _process_table():
            children.setdefault(ppid, []).append(pid)
            if sid == session and pid != session:
                roots.append(pid)
        seen: set[int] = set()
        while roots:
            pid = roots.pop()
            if pid not in seen:
                seen.add(pid)
                roots.extend(children.get(pid, ()))
        members = self.cgroup.members() if self.cgroup is not None else set()
        seen |= members
        seen.discard(self.pid)
        born = self.create_time or 0.0
        live: dict[int, psutil.Process] = {}
        for pid in seen:
            p = self._known.get(pid)
            if p is not None and _alive(p):
                live[pid] = p
                continue
            try:
                p = psutil.Process(pid)
                if (pid in members or p.create_time() >= born) and _alive(p):  # older: not ours
                    live[pid] = p
            except psutil.Error:
                continue
        self._known = live
        return list(live.values())

    def terminate_tree(self, timeout: float) -> int | None:
        """Stop the whole tree gracefully; return the exit code (None if it never went).

        Snapshot the descendants, send SIGTERM (then SIGCONT, so stopped processes see it) to
        the group and every descendant, wait up to ``timeout`` for the main process and the
        descendants, then :meth:`kill_tree` whatever is left. Idempotent; safe after the exit.
        Runs in the caller's thread and blocks for up to ``timeout`` + :data:`KILL_WAIT`.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        procs = self.descendants()
        self._signal_tree(signal.SIGTERM, procs)
        self._signal_tree(signal.SIGCONT, procs)
        code = self.wait(max(0.0, timeout))
        left = _wait_gone(procs, deadline, frozenset({self.pid}))
        if code is not None and not left and not self._group_alive():
            return code
        if code is None or left:
            self._log.warning("instance process tree still running {}s after SIGTERM, killing",
                              timeout)
        return self.kill_tree()

    def kill_tree(self) -> int | None:
        """SIGKILL the whole cgroup if there is one, the main process, its group and every
        descendant at once, then reap.

        Returns the exit code, or None if the process did not go within :data:`KILL_WAIT`.
        """
        deadline = time.monotonic() + KILL_WAIT
        if self.cgroup is not None:
            self.cgroup.kill()  # all at once: nothing forks or escapes meanwhile
        procs = self.descendants()
        for _ in range(3):  # again if something forked outside the group meanwhile
            self._signal_tree(signal.SIGKILL, procs)
            if not procs:
                break
            _wait_gone(procs, deadline, frozenset({self.pid}))
            procs = self.descendants()
        else:
            self._signal_tree(signal.SIGKILL, procs)
        code = self.wait(max(0.0, deadline - time.monotonic()))
        if code is None or procs:
            self._log.error("instance process tree survived SIGKILL: pid {}, left {}",
                            self.pid, [p.pid for p in procs])
        return code

    # -- internals -------------------------------------------------------------------------

    def _signal_tree(self, sig: int, procs: Sequence[psutil.Process]) -> None:
        self.signal_group(sig)
        self.send_signal(sig)  # in case it moved to another group
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)  # psutil checks the create time first (pid reuse)

    def _group_alive(self) -> bool:
        return self.signal_group(0)

    def _own_session(self) -> int | None:
        """Our session id (= pid), unless the leader was reaped and its pid reused."""
        if self._ps is None:
            return None
        if self._popen.returncode is not None and psutil.pid_exists(self.pid):
            return None
        return self.pid

    def _try_reap(self) -> int | None:
        """Reap if it has exited (never blocks); any thread."""
        with self._reap_lock:
            if self._popen.returncode is None:
                self._popen.poll()
            return self._popen.returncode

    def _poll_wait(self, deadline: float | None, *, own_exit: bool) -> int | None:
        """Wait without the watcher: when it is stopped, or when called from its callbacks."""
        delay = 0.001
        while True:
            code = self._try_reap()
            if code is not None:
                if own_exit:  # no watcher will finish this process
                    self.exited.set()
                return code
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            time.sleep(delay if deadline is None else min(delay, deadline - now))
            delay = min(delay * 2, POLL_INTERVAL)

    def _close_fds(self) -> None:
        for f in (self._popen.stdout, self._popen.stderr):
            if f is not None:
                f.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def _process_table() -> list[tuple[int, int, int]]:
    """``(pid, ppid, session id)`` of every process, from one read of each /proc/PID/stat
    (several times faster than asking psutil, which re-reads it to check for pid reuse)."""
    rows = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
                # "pid (comm) state ppid pgrp session ...": comm may hold spaces and ")"
                fields = stat[stat.rindex(b")") + 2:].split(b" ", 4)
                rows.append((int(name), int(fields[1]), int(fields[3])))
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    return rows


def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running()) and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(procs: Sequence[psutil.Process], deadline: float,
               parents: frozenset[int] = frozenset()) -> list[psutil.Process]:
    """Poll until none of ``procs`` runs, or the deadline; return those still running.

    A zombie that is our child (an orphan adopted because we are a subreaper, see
    :func:`set_child_subreaper`) is reaped here; one whose parent is in the dying tree
    (``procs`` or ``parents``) is watched until it has been handed on to its new parent.
    """
    me, delay = os.getpid(), 0.002
    tree = parents | {p.pid for p in procs}
    alive, zombies = list(procs), list[psutil.Process]()
    while True:
        still: list[psutil.Process] = []
        waiting: list[psutil.Process] = []
        for p in alive + zombies:
            if _alive(p):
                still.append(p)
                continue
            with contextlib.suppress(psutil.Error, ChildProcessError):
                if p.status() != psutil.STATUS_ZOMBIE:
                    continue
                ppid = p.ppid()
                if ppid == me:
                    os.waitpid(p.pid, os.WNOHANG)
                elif ppid in tree and psutil.pid_exists(ppid):
                    waiting.append(p)
        alive, zombies = still, waiting
        now = time.monotonic()
        if (not alive and not zombies) or now >= deadline:
            return alive
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, POLL_INTERVAL)

