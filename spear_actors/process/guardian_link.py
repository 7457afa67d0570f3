"""The spearlet's end of the guardian: start it, tell it every spawn and reap, restart it.

"No orphans, ever" (DESIGN.md section 7): instances run in their own sessions, so nothing in
the kernel ends them when the spearlet dies (``PR_SET_PDEATHSIG`` fires when the *thread*
that forked exits, covers the direct child only and needs an unsafe ``preexec_fn``). The
:mod:`guardian <.guardian>` is a tiny separate process that watches the spearlet through a
pidfd and SIGKILLs every registered instance session when it dies, SIGKILL included.

:class:`GuardianLink` owns that process and the write end of its stdin pipe. It starts the
guardian lazily, on the first spawn (:meth:`~GuardianLink.start`, called before the fork,
so that a new child is registered microseconds after it exists). Thread contract: every method
may be called from any thread; one lock serialises the pipe writes, the restarts and the
table of registered leaders, and is never held while calling out, except ``on_started``
(which must only wake a thread, e.g. :meth:`ProcessWatcher._wake`). Writes never block: a
guardian that died (``BrokenPipeError``) or stopped reading (pipe full for
:data:`WRITE_WAIT` s) is killed, reaped and replaced, and the new one is told every leader
still registered. Only pids and start times cross the pipe: never an environment or secret.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable

from .._log import logger

__all__ = ["GUARDIAN_SCRIPT", "GuardianLink"]

GUARDIAN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guardian.py")
"""The standalone script the guardian runs (it imports nothing from this package)."""
WRITE_WAIT = 1.0
"""Seconds a full pipe may stay full before the guardian counts as hung and is replaced."""
QUIT = b"!\n"
"""The last line the spearlet writes: kill what is still registered and exit, as at EOF."""
CLOSE_WAIT = 2.0
"""Bound on waiting for the guardian to finish after its pipe is closed (then SIGKILL)."""


class GuardianLink:
    """One guardian process and the pipe to it; see the module docstring for the threads."""

    def __init__(self, on_started: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._popen: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None  # write end of the guardian's stdin
        self._leaders: dict[int, int] = {}  # pid -> start time, registered and not reaped
        self._cgroups: dict[str, int] = {}  # the spearlet's cgroup roots: path -> version
        self._closed = False
        self._on_started = on_started

    @property
    def pid(self) -> int | None:
        """The running guardian's pid, if one was started (it may have died since)."""
        popen = self._popen
        return None if popen is None else popen.pid

    def start(self) -> None:
        """Make sure a guardian runs (idempotent). :func:`~spear_actors.process.spawn` calls
        it before it forks, so that registering the new child is then one pipe write."""
        with self._lock:
            if not self._closed and not self._running_locked():
                self._restart_locked("not running")

    def register(self, pid: int, start_time: int) -> None:
        """Guard the session led by ``pid``; starts (or restarts) the guardian if needed."""
        with self._lock:
            if self._closed:
                return
            self._leaders[pid] = start_time
            if self._running_locked():
                self._send_locked(f"+{pid} {start_time}\n".encode())
            else:
                self._restart_locked("not running")

    def guard_cgroup(self, path: str, version: int) -> None:
        """Kill every process in the cgroup ``path`` (and below) and remove it, should this
        process die. Does not start a guardian: the next :meth:`start` (before the first
        spawn, which is what puts a process in the cgroup) tells it."""
        with self._lock:
            if self._closed:
                return
            self._cgroups[path] = version
            if self._running_locked():
                self._send_locked(f"#{version} {path}\n".encode())

    def unguard_cgroup(self, path: str) -> None:
        """``path`` was removed by this process: forget it."""
        with self._lock:
            if self._cgroups.pop(path, None) is not None and self._fd is not None:
                self._send_locked(f"~{path}\n".encode())

    def unregister(self, pid: int) -> None:
        """The leader ``pid`` was reaped (its session stays guarded until it is empty)."""
        with self._lock:
            if self._leaders.pop(pid, None) is not None and self._fd is not None:
                self._send_locked(f"-{pid}\n".encode())

    def check(self) -> bool:
        """Replace the guardian if it died while leaders are registered; True if one runs
        (or none is needed). Cheap: one ``waitpid(WNOHANG)``."""
        with self._lock:
            if self._closed or self._running_locked():
                return True
            if not self._leaders and not self._cgroups:  # nothing to guard: start on demand
                self._discard_locked()
                return True
            self._restart_locked("exited")
            return self._running_locked()

    def close(self, timeout: float = CLOSE_WAIT) -> bool:
        """Say :data:`QUIT` and close the pipe: the guardian kills what is still registered
        (those would be orphans) and exits. Wait up to ``timeout`` for it, then SIGKILL; always
        reap it. True if it exited by itself. Idempotent."""
        with self._lock:
            self._closed = True
            popen, fd = self._popen, self._fd
            self._popen = self._fd = None
            self._leaders.clear()
            self._cgroups.clear()
        if fd is not None:
            with contextlib.suppress(OSError):  # say it even if a fork without exec holds
                os.write(fd, QUIT)             # a copy of the pipe (EOF would never come)
            os.close(fd)
        if popen is None:
            return True
        try:
            code = popen.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("process guardian {} did not exit within {}s, killing it",
                           popen.pid, timeout)
            popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):  # at once, barring D state
                popen.wait(timeout)
            return False
        if code != 0:
            logger.warning("process guardian {} exited with {}", popen.pid, code)
        return code == 0

    # -- under the lock ------------------------------------------------------------------------

    def _running_locked(self) -> bool:
        return self._popen is not None and self._fd is not None and self._popen.poll() is None

    def _send_locked(self, data: bytes) -> None:
        """Write one line (< PIPE_BUF, so all or nothing); replace a dead or hung guardian."""
        fd = self._fd
        assert fd is not None
        try:
            try:
                os.write(fd, data)
            except BlockingIOError:  # full: give the guardian a moment to read
                select.select([], [fd], [], WRITE_WAIT)
                os.write(fd, data)
        except BlockingIOError:
            self._restart_locked("not reading its pipe")
        except OSError as exc:  # EPIPE: it died
            self._restart_locked(f"unreachable ({exc.strerror})")

    def _restart_locked(self, why: str) -> None:
        """Replace the guardian (killing a hung one first) and register every leader anew."""
        old = self._popen
        self._discard_locked()
        if old is not None:
            logger.warning("process guardian {} {} (exit code {}), starting a new one",
                           old.pid, why, old.returncode)
        try:
            popen = subprocess.Popen(
                [sys.executable, "-I", "-S", GUARDIAN_SCRIPT, str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env={}, cwd="/",
                close_fds=True, start_new_session=True)
        except (OSError, subprocess.SubprocessError) as exc:
            logger.error("cannot start the process guardian: {}; instances would outlive a "
                         "crash of this process", exc)
            return
        assert popen.stdin is not None
        fd = os.dup(popen.stdin.fileno())  # ours to close; the file object goes now
        popen.stdin.close()
        popen.stdin = None
        os.set_blocking(fd, False)
        self._popen, self._fd = popen, fd
        logger.debug("process guardian {} started", popen.pid)
        lines = b"".join(f"+{pid} {start}\n".encode() for pid, start in self._leaders.items())
        lines += b"".join(f"#{v} {path}\n".encode() for path, v in self._cgroups.items())
        if lines and not self._write_all_locked(lines):
            return
        if self._on_started is not None:
            self._on_started()

    def _write_all_locked(self, data: bytes) -> bool:
        """Write ``data`` to a fresh guardian, waiting (bounded) while its pipe is full."""
        fd = self._fd
        assert fd is not None
        while data:
            try:
                data = data[os.write(fd, data):]
            except BlockingIOError:
                if not select.select([], [fd], [], WRITE_WAIT)[1]:
                    logger.error("the new process guardian does not read its pipe")
                    self._discard_locked()
                    return False
            except OSError as exc:
                logger.error("the new process guardian died at once: {}", exc)
                self._discard_locked()
                return False
        return True

    def _discard_locked(self) -> None:
        """Forget the current guardian: SIGKILL it if it still runs (closing its pipe while it
        runs would make it kill every instance), reap it, close the pipe."""
        popen, fd = self._popen, self._fd
        self._popen = self._fd = None
        if popen is not None:
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):  # at once, barring D state
                popen.wait(CLOSE_WAIT)
        if fd is not None:
            os.close(fd)
