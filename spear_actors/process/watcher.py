"""The process watcher: ONE background thread that drains, reaps and reports every child.

:class:`ProcessWatcher` waits (epoll) on every child's stdout and stderr pipe and on a pidfd per
child, drains output line by line into the log, reaps a child as soon as it exits and runs the
callbacks. Callbacks therefore run in the watcher thread: keep them short (an actor ``tell``)
and never block there. :meth:`~ProcessWatcher.register` and :meth:`~ProcessWatcher.stop` may
be called from any thread; everything else here belongs to the watcher thread.

Each watcher also owns a :class:`~.guardian_link.GuardianLink`: every registered child is
registered with the guardian process (from the registering thread, before the watcher thread
can see the child) and unregistered by the watcher thread once reaped, so the children die
with this process even when it is SIGKILLed. The watcher thread holds a pidfd of the guardian
(or checks it every :data:`GUARDIAN_CHECK_INTERVAL` seconds without pidfds) and replaces a
guardian that died; :meth:`~ProcessWatcher.stop` closes it and reaps it.

:func:`default_watcher` is the shared watcher :func:`~spear_actors.process.spawn` uses when it
is given none. Linux only (pidfd, epoll).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
import time
from collections.abc import Callable
from typing import IO, TypeVar

from .._log import logger
from .guardian_link import GuardianLink
from .handle import POLL_INTERVAL, ManagedProcess, Stream
from .output import OutputPipe
from .reaping import adopts_orphans as _adopts_orphans
from .reaping import reap_adopted_orphans

__all__ = ["GUARDIAN_CHECK_INTERVAL", "ORPHAN_SCAN_INTERVAL", "ProcessWatcher", "default_watcher"]

ORPHAN_SCAN_INTERVAL = 5.0
"""How often the watcher reaps orphans that exited on their own, when we adopt orphans."""
GUARDIAN_CHECK_INTERVAL = 0.5
"""Without pidfds, how often the watcher thread checks that the guardian still runs."""
_GUARDIAN = object()  # selector data of the guardian's pidfd
_READ_SIZE = 1 << 20
_READS_PER_EVENT = 16  # then let the other pipes have a turn (epoll is level-triggered)
_FINAL_READS = 64  # on exit, at most this many reads more before the pipes are closed

_T = TypeVar("_T")


class _Watched:
    """What the watcher holds for one child; watcher thread only."""

    __slots__ = ("pidfd", "pipes", "proc")

    def __init__(self, proc: ManagedProcess, pipes: list[OutputPipe], pidfd: int | None) -> None:
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
    ``guardian=False`` runs no guardian: children would then outlive a crash of this process.
    """

    def __init__(self, *, use_pidfd: bool = True, name: str = "spear-process-watcher",
                 orphan_scan_interval: float = ORPHAN_SCAN_INTERVAL,
                 guardian: bool = True) -> None:
        self.uses_pidfd = use_pidfd and hasattr(os, "pidfd_open")
        self._guardian = GuardianLink(on_started=self._wake) if guardian else None
        self._guardian_pid: int | None = None  # the guardian the watcher thread watches
        self._guardian_fd: int | None = None  # its pidfd; watcher thread only
        self._next_guardian_check = time.monotonic()
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

    @property
    def guardian_pid(self) -> int | None:
        """The pid of this watcher's guardian process, once one was started."""
        return None if self._guardian is None else self._guardian.pid

    def prepare_spawn(self) -> None:
        """Start the guardian if none runs. :func:`~spear_actors.process.spawn` calls this
        before it forks: the unguarded moment of a new child is then a few microseconds
        (construct its handle, apply its limits, one pipe write), not a guardian's start."""
        if self._guardian is not None and self.alive:
            self._guardian.start()

    def register(self, proc: ManagedProcess) -> None:
        """Start watching ``proc``; its pipes and pidfd now belong to the watcher. Any thread.

        ``proc`` is registered with the guardian first (starting it on the first call), so
        the watcher thread cannot reap and unregister it before it was registered."""
        if not self.alive:
            raise RuntimeError("the process watcher is stopped")
        if self._guardian is not None and proc.start_ticks is not None:
            self._guardian.register(proc.pid, proc.start_ticks)
        with self._lock:
            if not self.alive:
                raise RuntimeError("the process watcher is stopped")
            proc._watcher = self
            self._pending.append(proc)
        self._wake()

    def guard_cgroup(self, path: str, version: int) -> None:
        """Have the guardian kill everything in the cgroup ``path`` and remove it, should
        this process die (:class:`~.cgroups.Isolation` calls it for each of its roots)."""
        if self._guardian is not None and self.alive:
            self._guardian.guard_cgroup(path, version)

    def unguard_cgroup(self, path: str) -> None:
        if self._guardian is not None:
            self._guardian.unguard_cgroup(path)

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the thread; True if it ended within ``timeout``.

        Children still watched are abandoned: their pipes are closed and ``on_exit`` will not
        run (:meth:`ManagedProcess.wait` still reaps them). Stop the children first: the
        guardian, closed and reaped by the watcher thread on its way out, SIGKILLs those
        still registered, which would otherwise be orphans.
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
                if self._guardian_pid is not None and self._guardian_fd is None \
                        and time.monotonic() >= self._next_guardian_check:
                    self._next_guardian_check = time.monotonic() + GUARDIAN_CHECK_INTERVAL
                    self._guarded(lambda _: self._sync_guardian(), None)
        finally:
            self._shutdown()

    def _timeout(self) -> float | None:
        timeout = POLL_INTERVAL if self._polled else None
        if self._guardian_pid is not None and self._guardian_fd is None:
            until_check = max(0.0, self._next_guardian_check - time.monotonic())
            timeout = until_check if timeout is None else min(timeout, until_check)
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
            self._sync_guardian()
        elif data is _GUARDIAN:  # the guardian died
            self._unwatch_guardian()
            self._sync_guardian()
        elif isinstance(data, OutputPipe):
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

    def _sync_guardian(self) -> None:
        """Replace a dead guardian and watch the current one through a pidfd of our own."""
        link = self._guardian
        if link is None:
            return
        for _ in range(3):
            link.check()
            pid = link.pid
            if pid == self._guardian_pid:
                return
            self._unwatch_guardian()
            self._guardian_pid = pid
            if pid is None or not self.uses_pidfd:
                return
            try:
                fd = os.pidfd_open(pid)
            except OSError:  # gone already: check() replaces it
                continue
            if link.pid != pid:  # replaced meanwhile (the pid may even have been reused)
                os.close(fd)
                continue
            self._selector.register(fd, selectors.EVENT_READ, _GUARDIAN)
            self._guardian_fd = fd
            return

    def _unwatch_guardian(self) -> None:
        fd, self._guardian_fd, self._guardian_pid = self._guardian_fd, None, None
        if fd is not None:
            self._selector.unregister(fd)
            os.close(fd)

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
                    pipe = OutputPipe(proc, name, file)
                    os.set_blocking(pipe.fd, False)
                    self._selector.register(pipe.fd, selectors.EVENT_READ, pipe)
                    pipes.append(pipe)
            watched = _Watched(proc, pipes, proc._pidfd)
            self._watched[id(proc)] = watched
            if watched.pidfd is not None:
                self._selector.register(watched.pidfd, selectors.EVENT_READ, watched)
            else:
                self._polled.append(watched)

    def _read(self, pipe: OutputPipe, max_reads: int) -> None:
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

    def _emit(self, pipe: OutputPipe, raw: bytes) -> None:
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

    def _close_pipe(self, pipe: OutputPipe) -> None:
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
        if self._guardian is not None:
            self._guardian.unregister(proc.pid)
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
        self._unwatch_guardian()
        self._selector.close()
        if self._guardian is not None:
            self._guardian.close()


class _DefaultWatcher:
    lock = threading.Lock()
    watcher: ProcessWatcher | None = None


def default_watcher() -> ProcessWatcher:
    """The shared watcher, created on first use (again if it was stopped). It is never
    stopped: its guardian kills what it still watches when this process exits."""
    with _DefaultWatcher.lock:
        if _DefaultWatcher.watcher is None or not _DefaultWatcher.watcher.alive:
            _DefaultWatcher.watcher = ProcessWatcher()
        return _DefaultWatcher.watcher
