"""Instance processes: resolve the binary, build the environment, spawn, watch and stop.

No actors here, only plain functions and classes (DESIGN.md sections 3 and 4):

* :func:`resolve_command` and :func:`build_env` prepare a launch; they run in the caller's thread.
* :func:`spawn` starts a child in its own session and process group, applies
  :class:`~spear_actors.config.ResourceLimits` and hands it to a :class:`ProcessWatcher`.
* :class:`ProcessWatcher` is ONE background thread for all children. It waits (epoll) on every
  child's stdout and stderr pipe and on a pidfd per child, drains output line by line into the
  log, reaps a child as soon as it exits and runs the callbacks. Callbacks therefore run in the
  watcher thread: keep them short (an actor ``tell``) and never block there.
* :class:`ManagedProcess` is the handle any thread may use: signals, process-tree snapshots and
  a graceful (:meth:`~ManagedProcess.terminate_tree`) or forced (:meth:`~ManagedProcess.kill_tree`)
  stop of the whole tree, with pid-reuse checks before every signal.
* :func:`set_child_subreaper` / :func:`reap_adopted_orphans`: orphans of instances come to us
  and are reaped, instead of piling up as zombies under a PID 1 that does not reap.

Linux only (pidfd, /proc, prctl). The environment carries the instance secret: it is never
logged, nor stored on the handle.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Literal, TypeVar

import psutil

from ._log import logger
from .config import ResourceLimits
from .errors import ConfigError, SpawnError

if TYPE_CHECKING:
    from loguru import Logger

__all__ = [
    "ENV_ALLOWLIST",
    "MAX_LINE",
    "ExitCallback",
    "ManagedProcess",
    "OutputCallback",
    "ProcessWatcher",
    "Stream",
    "build_env",
    "default_watcher",
    "reap_adopted_orphans",
    "resolve_command",
    "set_child_subreaper",
    "spawn",
]

ENV_ALLOWLIST = frozenset({"PATH", "HOME", "LANG", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV"})
"""Variables passed through when ``inherit_env`` is false (plus every ``LC_*``)."""
MAX_LINE = 64 * 1024
"""Longer output lines are cut here (marked ``[truncated]``); the rest up to the newline is
dropped, so one endless line cannot exhaust memory."""
POLL_INTERVAL = 0.05
"""Exit polling period for children without a pidfd (old kernels, seccomp)."""
ORPHAN_SCAN_INTERVAL = 5.0
"""How often the watcher reaps orphans that exited on their own, when we adopt orphans."""
KILL_WAIT = 5.0
"""Bound on waiting for SIGKILLed processes to go (a process in D state may never go)."""
_READ_SIZE = 1 << 20
_READS_PER_EVENT = 16  # then let the other pipes have a turn (epoll is level-triggered)
_FINAL_READS = 64  # on exit, at most this many reads more before the pipes are closed
_TRUNCATED = b" [truncated]"

_T = TypeVar("_T")
Stream = Literal["stdout", "stderr"]
ExitCallback = Callable[[int], None]
"""``on_exit(returncode)``; negative means killed by that signal, as with ``Popen``."""
OutputCallback = Callable[[str, Stream, str], None]
"""``on_output(instance_id, stream, line)``, one call per line, without the newline."""


def resolve_command(command: Sequence[str], working_dir: str | None) -> list[str]:
    """Return ``command`` with argv[0] made an absolute path to an executable file.

    A name without ``/`` is looked up on ``PATH``; a relative path is taken from
    ``working_dir`` (where the child will start) or the current directory. Symlinks are kept
    (a venv's ``python`` must stay the symlink). Raises :class:`SpawnError` at once if the
    binary is missing, a directory or not executable.
    """
    if isinstance(command, str) or not command or not command[0]:
        raise SpawnError(f"command must be a non-empty argv list, got {command!r}")
    prog = command[0]
    if "/" in prog:
        path = os.path.abspath(os.path.join(working_dir or os.getcwd(), prog))
    else:
        found = shutil.which(prog)
        if found is None:  # which() only returns executables: find out why for the message
            dirs = os.environ.get("PATH", os.defpath).split(os.pathsep)
            hits = [os.path.join(d or ".", prog) for d in dirs]
            found = next((h for h in hits if os.path.exists(h)), None)
            if found is None:
                raise SpawnError(f"binary not found: {prog} (not on PATH)")
        path = os.path.abspath(found)
    if not os.path.exists(path):
        raise SpawnError(f"binary not found: {path}")
    if os.path.isdir(path):
        raise SpawnError(f"is a directory: {path}")
    if not os.access(path, os.X_OK):
        raise SpawnError(f"not executable: {path}")
    return [path, *command[1:]]


def build_env(*, instance_id: str, secret: str, port: int | None, endpoint: str,
              transport: str, extra: Mapping[str, str], inherit_env: bool) -> dict[str, str]:
    """The environment of one instance process.

    Base: all of ``os.environ`` if ``inherit_env``, else only :data:`ENV_ALLOWLIST` and
    ``LC_*``. Then ``extra`` (the task's env), ``PYTHONUNBUFFERED=1`` unless already set, and
    last the ``SPEAR_*`` variables, which override anything else. ``port`` is ``None`` for an
    ``ipc`` listener: ``SPEAR_COMMUNICATION_PORT`` is then *absent* (not ``""``, which a client
    would fail to parse as a number) and clients must use ``SPEAR_COMMUNICATION_ENDPOINT``.
    """
    if transport not in ("tcp", "ipc"):
        raise ConfigError(f"transport must be 'tcp' or 'ipc', got {transport!r}")
    if port is None and transport == "tcp":
        raise ConfigError("a tcp listener needs a port")
    if inherit_env:
        env = dict(os.environ)
    else:
        env = {k: v for k, v in os.environ.items() if k in ENV_ALLOWLIST or k.startswith("LC_")}
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.pop("SPEAR_COMMUNICATION_PORT", None)
    if port is not None:
        env["SPEAR_COMMUNICATION_PORT"] = str(port)
    env["SPEAR_INSTANCE_ID"] = instance_id
    env["SPEAR_SECRET"] = secret
    env["SPEAR_COMMUNICATION_TYPE"] = transport
    env["SPEAR_COMMUNICATION_ENDPOINT"] = endpoint
    return env


class _Subreaper:
    enabled = False


def set_child_subreaper(enable: bool = True) -> bool:
    """Make this process the reaper of orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``).

    Without it, an instance's orphaned children go to PID 1, and a PID 1 that does not reap
    (some containers) keeps them as zombies. With it they come to us:
    :meth:`ManagedProcess.terminate_tree` reaps those it kills, and every
    :class:`ProcessWatcher` runs :func:`reap_adopted_orphans` after an instance exits and
    every :data:`ORPHAN_SCAN_INTERVAL` seconds. Returns False if unsupported.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = int(libc.prctl(36, int(enable), 0, 0, 0)) == 0  # 36 = PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False
    if ok:
        _Subreaper.enabled = enable
    return ok


def _adopts_orphans() -> bool:
    return _Subreaper.enabled or os.getpid() == 1


def reap_adopted_orphans() -> int:
    """Reap zombie children that were adopted (as subreaper or PID 1); return how many.

    Never reaps a child that code in this process started itself (its ``Popen`` would lose the
    exit status): such a child is in our session or leads its own, so only zombies whose
    session is neither are taken. An orphan that ran ``setsid`` is left alone here;
    :meth:`ManagedProcess.terminate_tree` reaps it if it is a known descendant.
    """
    try:  # one cheap syscall when there is no zombie child at all (the usual case)
        if os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            return 0
    except ChildProcessError:
        return 0
    own_session, reaped = os.getsid(0), 0
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error, OSError):
            if child.status() == psutil.STATUS_ZOMBIE \
                    and os.getsid(child.pid) not in (own_session, child.pid):
                os.waitpid(child.pid, os.WNOHANG)
                reaped += 1
    return reaped


class ManagedProcess:
    """Handle on one instance process started by :func:`spawn`; thread-safe.

    Any thread may signal, wait or stop it. The watcher thread reaps it, then sets
    :attr:`returncode`, runs ``on_exit`` and finally sets :attr:`exited`, so once
    :meth:`wait` returns, all output has been delivered and ``on_exit`` has run.
    """

    def __init__(self, popen: subprocess.Popen[bytes], *, instance_id: str, argv: Sequence[str],
                 pidfd: int | None, on_exit: ExitCallback | None,
                 on_output: OutputCallback | None) -> None:
        self.pid: int = popen.pid
        self.instance_id = instance_id
        self.argv = tuple(argv)
        self.started_at = time.time()
        self.exited = threading.Event()
        self._popen = popen
        self._pidfd = pidfd
        self._on_exit = on_exit
        self._on_output = on_output
        self._watcher: ProcessWatcher | None = None
        # Serialises reaping against group signals: while the leader is not reaped, its pid
        # (which is also the group and session id) cannot be reused.
        self._reap_lock = threading.Lock()
        self._ps: psutil.Process | None = None
        with contextlib.suppress(psutil.Error):  # not reaped yet, so certainly our child
            self._ps = psutil.Process(self.pid)
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

        Each result is remembered. Call this now and then if instances daemonise: a process
        that left both the group and the session and lost its parent before we ever saw it
        cannot be found (only cgroups could find it).
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
                if p.create_time() >= born and _alive(p):  # older: not from our tree
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
        """SIGKILL the main process, its group and every descendant at once, then reap.

        Returns the exit code, or None if the process did not go within :data:`KILL_WAIT`.
        """
        deadline = time.monotonic() + KILL_WAIT
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


class _Pipe:
    """One output pipe of one child, with its partial-line buffer; watcher thread only."""

    __slots__ = ("buf", "closed", "discarding", "fd", "file", "level", "logger", "name", "proc")

    def __init__(self, proc: ManagedProcess, name: Stream, file: IO[bytes]) -> None:
        self.proc = proc
        self.name: Stream = name
        self.file = file
        self.fd = file.fileno()
        self.buf = bytearray()
        self.discarding = False  # inside an over-long line, dropping up to its newline
        self.closed = False
        self.level = "INFO" if name == "stdout" else "WARNING"
        self.logger: Logger = logger.bind(instance=proc.instance_id, stream=name)

    def feed(self, data: bytes) -> list[bytes]:
        """Split ``data`` into complete lines (partial ones are kept for the next call)."""
        lines: list[bytes] = []
        start = 0
        while (nl := data.find(b"\n", start)) >= 0:
            if self.discarding:
                self.discarding = False
            elif self.buf:
                self.buf += data[start:nl]
                lines.append(_cap(bytes(self.buf)))
                self.buf.clear()
            else:
                lines.append(_cap(data[start:nl]))
            start = nl + 1
        if start < len(data) and not self.discarding:
            self.buf += data[start:]
            if len(self.buf) > MAX_LINE:
                lines.append(_cap(bytes(self.buf)))
                self.buf.clear()
                self.discarding = True
        return lines


def _cap(line: bytes) -> bytes:
    return line if len(line) <= MAX_LINE else line[:MAX_LINE] + _TRUNCATED


class _Watched:
    """What the watcher holds for one child; watcher thread only."""

    __slots__ = ("pidfd", "pipes", "proc")

    def __init__(self, proc: ManagedProcess, pipes: list[_Pipe], pidfd: int | None) -> None:
        self.proc = proc
        self.pipes = pipes
        self.pidfd = pidfd


class ProcessWatcher:
    """One background thread that drains, reaps and reports every registered child.

    The thread starts in ``__init__``. :meth:`register` (any thread) queues a child and wakes
    the thread through a self-pipe. ``use_pidfd=False`` (or a kernel without pidfds) makes it
    poll ``waitpid(WNOHANG)`` every :data:`POLL_INTERVAL` seconds instead. When this process
    adopts orphans (:func:`set_child_subreaper`), the thread also reaps those that exit on
    their own, shortly after each instance exit and every ``orphan_scan_interval`` seconds.
    """

    def __init__(self, *, use_pidfd: bool = True, name: str = "spear-process-watcher",
                 orphan_scan_interval: float = ORPHAN_SCAN_INTERVAL) -> None:
        self.uses_pidfd = use_pidfd and hasattr(os, "pidfd_open")
        self._orphan_scan_interval = orphan_scan_interval
        self._next_orphan_scan = time.monotonic() + orphan_scan_interval
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._pending: list[ManagedProcess] = []
        self._watched: dict[int, _Watched] = {}  # by id(ManagedProcess)
        self._polled: list[_Watched] = []
        self._stopping = False
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True until :meth:`stop` is called (or the thread died)."""
        return not self._stopping and self._thread.is_alive()

    def is_watcher_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def register(self, proc: ManagedProcess) -> None:
        """Start watching ``proc``; its pipes and pidfd now belong to the watcher. Any thread."""
        with self._lock:
            if not self.alive:
                raise RuntimeError("the process watcher is stopped")
            proc._watcher = self
            self._pending.append(proc)
        self._wake()

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the thread; True if it ended within ``timeout``.

        Children still watched are abandoned: their pipes are closed and ``on_exit`` will not
        run (:meth:`ManagedProcess.wait` still reaps them). Stop the children first.
        """
        with self._lock:
            self._stopping = True
        self._wake()
        if self.is_watcher_thread():
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the watcher thread ----------------------------------------------------------------

    def _wake(self) -> None:
        with self._lock:
            if not self._closed:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"\0")

    def _run(self) -> None:
        try:
            while not self._stopping:
                events = self._selector.select(self._timeout())
                for key, _mask in events:
                    self._guarded(self._dispatch, key.data)
                for watched in list(self._polled):
                    self._guarded(self._poll, watched)
                if _adopts_orphans() and time.monotonic() >= self._next_orphan_scan:
                    self._next_orphan_scan = time.monotonic() + self._orphan_scan_interval
                    self._guarded(lambda _: reap_adopted_orphans(), None)
        finally:
            self._shutdown()

    def _timeout(self) -> float | None:
        timeout = POLL_INTERVAL if self._polled else None
        if _adopts_orphans():
            until_scan = max(0.0, self._next_orphan_scan - time.monotonic())
            timeout = until_scan if timeout is None else min(timeout, until_scan)
        return timeout

    @staticmethod
    def _guarded(handler: Callable[[_T], object], arg: _T) -> None:
        try:
            handler(arg)
        except Exception:  # one bad child or callback must not stop the watching of all
            logger.exception("process watcher: unexpected error, carrying on")

    def _dispatch(self, data: object) -> None:
        if data is None:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
            self._adopt()
        elif isinstance(data, _Pipe):
            if not data.closed:
                self._read(data, _READS_PER_EVENT)
        elif isinstance(data, _Watched) and data.pidfd is not None:
            if data.proc._try_reap() is not None:  # the pidfd is readable once it has exited
                self._finish(data)
            else:  # should not happen; poll rather than spin on a readable pidfd
                self._selector.unregister(data.pidfd)
                os.close(data.pidfd)
                data.pidfd = data.proc._pidfd = None
                self._polled.append(data)

    def _poll(self, watched: _Watched) -> None:
        if watched.proc._try_reap() is not None:
            self._finish(watched)

    def _adopt(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for proc in pending:
            pipes = []
            streams: tuple[tuple[Stream, IO[bytes] | None], ...] = (
                ("stdout", proc._popen.stdout), ("stderr", proc._popen.stderr))
            for name, file in streams:
                if file is not None:
                    pipe = _Pipe(proc, name, file)
                    os.set_blocking(pipe.fd, False)
                    self._selector.register(pipe.fd, selectors.EVENT_READ, pipe)
                    pipes.append(pipe)
            watched = _Watched(proc, pipes, proc._pidfd)
            self._watched[id(proc)] = watched
            if watched.pidfd is not None:
                self._selector.register(watched.pidfd, selectors.EVENT_READ, watched)
            else:
                self._polled.append(watched)

    def _read(self, pipe: _Pipe, max_reads: int) -> None:
        for _ in range(max_reads):
            try:
                data = os.read(pipe.fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                pipe.logger.warning(f"cannot read instance {pipe.name}: {exc}")
                data = b""
            if not data:
                self._close_pipe(pipe)
                return
            for line in pipe.feed(data):
                self._emit(pipe, line)

    def _emit(self, pipe: _Pipe, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace")
        if line.endswith("\r"):
            line = line[:-1]
        pipe.logger.log(pipe.level, line)
        callback = pipe.proc._on_output
        if callback is not None:
            try:
                callback(pipe.proc.instance_id, pipe.name, line)
            except Exception:
                pipe.logger.exception("on_output callback raised")

    def _close_pipe(self, pipe: _Pipe) -> None:
        if pipe.closed:
            return
        if pipe.buf:
            self._emit(pipe, bytes(pipe.buf))
            pipe.buf.clear()
        pipe.closed = True
        self._selector.unregister(pipe.fd)
        pipe.file.close()

    def _finish(self, watched: _Watched) -> None:
        """The child has been reaped: flush its output, close its fds, report the exit."""
        proc = watched.proc
        for pipe in watched.pipes:
            if not pipe.closed:
                self._read(pipe, _FINAL_READS)  # what it wrote before exiting
                self._close_pipe(pipe)  # a grandchild may still hold the pipe: stop here
        if watched.pidfd is not None:
            self._selector.unregister(watched.pidfd)
            os.close(watched.pidfd)
            proc._pidfd = None
        else:
            self._polled.remove(watched)
        del self._watched[id(proc)]
        # its orphans may exit with it: look for them soon
        self._next_orphan_scan = min(self._next_orphan_scan, time.monotonic() + 0.1)
        code = proc.returncode
        assert code is not None
        proc._log.debug("instance process {} exited with {}", proc.pid, code)
        try:
            if proc._on_exit is not None:
                proc._on_exit(code)
        except Exception:
            proc._log.exception("on_exit callback raised")
        finally:
            proc.exited.set()

    def _shutdown(self) -> None:
        with self._lock:
            self._stopping = True
            self._closed = True
            pending, self._pending = self._pending, []
            os.close(self._wake_r)
            os.close(self._wake_w)
        for watched in list(self._watched.values()):
            for pipe in watched.pipes:
                if not pipe.closed:
                    pipe.closed = True
                    pipe.file.close()
            watched.proc._watcher = None
            if watched.pidfd is not None:
                os.close(watched.pidfd)
                watched.proc._pidfd = None
        for proc in pending:
            proc._watcher = None
            proc._close_fds()
        self._watched.clear()
        self._polled.clear()
        self._selector.close()


class _DefaultWatcher:
    lock = threading.Lock()
    watcher: ProcessWatcher | None = None


def default_watcher() -> ProcessWatcher:
    """The shared watcher, created on first use (again if it was stopped)."""
    with _DefaultWatcher.lock:
        if _DefaultWatcher.watcher is None or not _DefaultWatcher.watcher.alive:
            _DefaultWatcher.watcher = ProcessWatcher()
        return _DefaultWatcher.watcher


def spawn(*, argv: Sequence[str], env: Mapping[str, str], cwd: str | None,
          limits: ResourceLimits | None, instance_id: str, on_exit: ExitCallback | None,
          on_output: OutputCallback | None = None,
          watcher: ProcessWatcher | None = None) -> ManagedProcess:
    """Start ``argv`` in its own session and process group, apply ``limits``, watch it.

    Runs in the caller's thread; ``on_exit`` and ``on_output`` will run in the watcher thread
    (default: :func:`default_watcher`). stdin is /dev/null; stdout and stderr are drained
    into the log. ``cwd`` must exist (the caller creates it). No ``preexec_fn`` (unsafe with
    threads), so limits are applied right after exec with psutil: for that first moment the
    child runs unlimited, and a child that forks at once may pass on the old limits.
    ``limits.cpus`` only counts for admission. Raises :class:`SpawnError` if the process
    cannot be started or a limit cannot be applied (the child is then killed and reaped).
    """
    if not argv:
        raise SpawnError("empty command")
    if cwd is not None and not os.path.isdir(cwd):
        raise SpawnError(f"working directory does not exist: {cwd}")
    watcher = watcher if watcher is not None else default_watcher()
    try:
        popen = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 close_fds=True, start_new_session=True)
    except (OSError, ValueError) as exc:  # ENOENT, EACCES, ENOEXEC, bad env ...
        raise SpawnError(f"cannot start {argv[0]} for instance {instance_id}: {exc}") from exc
    pidfd = None
    if watcher.uses_pidfd:
        with contextlib.suppress(OSError):  # ENOSYS, EPERM: the watcher polls instead
            pidfd = os.pidfd_open(popen.pid)
    proc = ManagedProcess(popen, instance_id=instance_id, argv=argv, pidfd=pidfd,
                          on_exit=on_exit, on_output=on_output)
    try:
        if limits is not None:
            _apply_limits(proc, limits)
        watcher.register(proc)
    except (psutil.Error, OSError, ValueError, RuntimeError) as exc:
        proc.kill_tree()
        proc._close_fds()
        raise SpawnError(f"cannot start instance {instance_id}: {exc}") from exc
    proc._log.debug("spawned pid {}: {}", proc.pid, argv[0])
    return proc


def _apply_limits(proc: ManagedProcess, limits: ResourceLimits) -> None:
    p = proc._ps
    if p is None:
        return
    try:
        if limits.memory_bytes is not None:
            _set_rlimit(p, psutil.RLIMIT_AS, limits.memory_bytes)
        if limits.max_open_files is not None:
            _set_rlimit(p, psutil.RLIMIT_NOFILE, limits.max_open_files)
        if limits.cpu_affinity is not None:
            p.cpu_affinity(list(limits.cpu_affinity))
        if limits.nice is not None:
            p.nice(limits.nice)
    except psutil.NoSuchProcess:  # already exited (or a zombie): the watcher reports it
        return


def _set_rlimit(p: psutil.Process, resource: int, value: int) -> None:
    """Set soft and hard limit (so the child cannot raise it), never above our hard limit."""
    _soft, hard = p.rlimit(resource)
    if hard != psutil.RLIM_INFINITY:
        value = min(value, hard)
    p.rlimit(resource, (value, value))
