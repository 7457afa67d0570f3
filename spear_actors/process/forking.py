"""Handler instances forked from a zygote (DESIGN.md section 10): the spearlet's side.

A :class:`Zygote` is one ``python -m spear_actors.zygote`` process (see that module for what it
does and its wire), started with :func:`~.launch.spawn` like any instance, so it has its own
session, is watched, its output relayed and it dies with the spearlet (guardian). A
:class:`ZygotePool` keeps one per ``(preload, path)`` and restarts one that died.
:func:`fork_instance` is :func:`~.launch.spawn` for an ``entry``: it asks a zygote to fork,
gets back the child's pid and a pidfd, and hands a :class:`ManagedProcess` to the watcher, so
the child is watched (pidfd), drained, stopped, killed and guarded exactly like a spawned one.

Exit statuses: the zygote is the child's parent, so it reaps it and reports the status, which
:meth:`ForkedChild.poll` returns once the pidfd says the child has exited. If the zygote died
first, its children are re-parented: to this process when it is a child subreaper
(``spear-actors up`` is), which then reaps them itself and gets their real status; otherwise
to init, and the status is lost: :data:`~spear_actors.zygote.UNKNOWN_EXIT` is reported (the
exit is still detected at once through the pidfd, and the supervisor restarts the instance).

Threads: :func:`fork_instance` runs in the caller's thread (an instance actor's) and blocks
until the zygote answers (a fork: about a millisecond). Each zygote has one reader thread
that takes its answers and exit reports; :meth:`ForkedChild.poll` runs where ``Popen.poll``
would (watcher thread, stoppers). The request carries the secret (in the environment) over
a private socket pair: it is never logged.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import msgpack

from .._log import logger
from ..config import ResourceLimits
from ..errors import SpawnError
from .handle import ExitCallback, ManagedProcess, OutputCallback
from .instance_cgroup import InstanceCgroup
from .launch import spawn
from .watcher import ProcessWatcher, default_watcher

__all__ = ["FORK_TIMEOUT", "READY_TIMEOUT", "ForkedChild", "Zygote", "ZygotePool",
           "fork_instance"]

READY_TIMEOUT = 30.0
"""Bound on a zygote's start (interpreter, client and preload imports)."""
FORK_TIMEOUT = 10.0
"""Bound on the zygote's answer to one fork request."""
REPORT_WAIT = 1.0
"""How long an exited child's status is awaited from a live zygote (it is sent at once)."""
UNKNOWN_EXIT = 255  # = spear_actors.zygote.UNKNOWN_EXIT (not imported: it imports zmq)
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_MAX_MSG = 1 << 16


class ForkedChild:
    """A zygote's child as :class:`ManagedProcess` sees it (what a ``Popen`` is to a spawned
    one). ``poll`` may be called from any thread; the zygote's reader thread reports."""

    def __init__(self, pid: int, pidfd: int, stdout: IO[bytes], stderr: IO[bytes],
                 zygote: Zygote) -> None:
        self.pid = pid
        self.stdout: IO[bytes] | None = stdout
        self.stderr: IO[bytes] | None = stderr
        self.returncode: int | None = None
        self._pidfd: int | None = pidfd
        self._zygote = zygote
        self._code: int | None = None
        self._reported = threading.Event()
        self._lock = threading.Lock()

    def _report(self, code: int) -> None:
        self._code = code
        self._reported.set()

    def poll(self) -> int | None:
        """The exit code once the child has exited (negative: signal), else None."""
        with self._lock:
            if self.returncode is not None:
                return self.returncode
            if not self._reported.is_set():
                if not self._exited():
                    return None
                if not (self._zygote.alive and self._reported.wait(REPORT_WAIT)):
                    code = self._reap_orphan()
                    if not self._reported.is_set():
                        self._report(code)
            assert self._code is not None
            self.returncode = self._code
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            return self.returncode

    def _exited(self) -> bool:
        if self._pidfd is None:
            return True
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def _reap_orphan(self) -> int:
        """Its zygote died: reap it ourselves if it was re-parented to us (subreaper)."""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return self._code if self._code is not None else UNKNOWN_EXIT
        if pid == 0:
            return UNKNOWN_EXIT
        return os.waitstatus_to_exitcode(status)


class _Slot:
    __slots__ = ("event", "fds", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: dict[str, Any] = {}
        self.fds: list[int] = []


class Zygote:
    """One zygote process and the link to it. Start it with the constructor (blocks until it
    is ready, at most :data:`READY_TIMEOUT`); any thread may :meth:`fork`."""

    def __init__(self, *, preload: Sequence[str] = (), path: Sequence[str] = (),
                 watcher: ProcessWatcher | None = None,
                 on_death: Callable[[Zygote], None] | None = None) -> None:
        self.preload = tuple(preload)
        self.path = tuple(path)
        self._on_death = on_death
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._waiting: dict[int, _Slot] = {}
        self._children: dict[int, ForkedChild] = {}
        self._early: dict[int, int] = {}  # exits reported before the fork() call took the pid
        self._closing = False
        self.alive = False
        self._log = logger.bind(zygote=",".join(self.preload) or "-")
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [*self.path, _ROOT, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)])
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            try:
                self.proc = spawn(
                    argv=[sys.executable, "-m", "spear_actors.zygote", str(child.fileno()),
                          *self.preload],
                    env=env, cwd=None, limits=None, instance_id="zygote", on_exit=self._died,
                    watcher=watcher or default_watcher(), pass_fds=(child.fileno(),))
            finally:
                child.close()
            parent.settimeout(READY_TIMEOUT)
            try:
                data = parent.recv(_MAX_MSG)
            except OSError as exc:
                raise SpawnError(f"the zygote did not start: {exc}") from exc
            if not data or msgpack.unpackb(data).get("op") != "ready":
                raise SpawnError("the zygote did not start (preload failed? see its output)")
            parent.settimeout(None)
        except BaseException:
            parent.close()
            proc = getattr(self, "proc", None)
            if proc is not None:
                proc.kill_tree()
            raise
        self._sock = parent
        self.alive = True
        self._reader = threading.Thread(target=self._read, name=f"spear-zygote-{self.pid}",
                                        daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def child_count(self) -> int:
        """Forked children not reaped yet."""
        return len(self._children)

    def fork(self, request: Mapping[str, Any]) -> ForkedChild:
        """Fork one instance; raises :class:`SpawnError` if the zygote cannot."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        slot = _Slot()
        try:
            with self._lock:
                if not self.alive:
                    raise SpawnError("the zygote is not running")
                seq = next(self._seq)
                self._waiting[seq] = slot
                try:
                    socket.send_fds(self._sock, [msgpack.packb({**request, "op": "fork",
                                                                "seq": seq})], [out_w, err_w])
                except OSError as exc:
                    self._waiting.pop(seq, None)
                    raise SpawnError(f"cannot reach the zygote: {exc}") from exc
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        if not slot.event.wait(FORK_TIMEOUT) or slot.reply.get("op") != "forked" \
                or len(slot.fds) != 1:
            with self._lock:
                self._waiting.pop(seq, None)
            for fd in (out_r, err_r, *slot.fds):
                os.close(fd)
            why = slot.reply.get("message", "no answer")
            raise SpawnError(f"the zygote could not fork: {why}")
        pid = int(slot.reply["pid"])
        stdout = open(out_r, "rb")  # noqa: SIM115 -- the watcher closes them
        stderr = open(err_r, "rb")  # noqa: SIM115
        child = ForkedChild(pid, slot.fds[0], stdout, stderr, self)
        with self._lock:
            code = self._early.pop(pid, None)
            if code is None:
                self._children[pid] = child
        if code is not None:
            child._report(code)
        return child

    def close(self, timeout: float = 2.0) -> None:
        """Stop the zygote (its children are the instances' business) and the reader."""
        with self._lock:
            self._closing = True
            self.alive = False
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # end of file: the zygote exits
        if self.proc.wait(timeout) is None:
            self.proc.kill_tree()
        self._reader.join(timeout)
        self._sock.close()

    # -- the reader thread -----------------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self._sock, _MAX_MSG, 2)
            except OSError:
                data, fds = b"", []
            if not data:
                break
            msg = msgpack.unpackb(data)
            op = msg.get("op")
            if op == "exit":
                pid, code = int(msg["pid"]), int(msg["code"])
                with self._lock:
                    child = self._children.pop(pid, None)
                    if child is None:
                        self._early[pid] = code
                if child is not None:
                    child._report(code)
                continue
            with self._lock:
                slot = self._waiting.pop(msg.get("seq", -1), None)
            if slot is None:
                for fd in fds:
                    os.close(fd)
                continue
            slot.reply, slot.fds = msg, list(fds)
            slot.event.set()
        with self._lock:
            self.alive = False
            waiting, self._waiting = self._waiting, {}
        for slot in waiting.values():
            slot.reply = {"op": "error", "message": "the zygote died"}
            slot.event.set()

    def _died(self, code: int) -> None:  # watcher thread
        with self._lock:
            self.alive = False
            closing = self._closing
        if not closing:
            self._log.warning("zygote pid {} died ({})", self.proc.pid, code)
            if self._on_death is not None:
                self._on_death(self)


class ZygotePool:
    """One zygote per ``(preload, path)``, started on first use and restarted (eagerly, in a
    thread of its own) when it dies. Any thread; :meth:`close` at shutdown."""

    def __init__(self, watcher: ProcessWatcher | None = None) -> None:
        self._watcher = watcher
        self._lock = threading.Lock()
        self._zygotes: dict[tuple[tuple[str, ...], tuple[str, ...]], Zygote] = {}
        self._closed = False
        self.restarts = 0

    def get(self, preload: Sequence[str] = (), path: Sequence[str] = ()) -> Zygote:
        key = (tuple(preload), tuple(path))
        with self._lock:
            if self._closed:
                raise SpawnError("the system is shutting down")
            zygote = self._zygotes.get(key)
            if zygote is None or not zygote.alive:
                if zygote is not None:
                    zygote.close(0.5)
                zygote = Zygote(preload=key[0], path=key[1], watcher=self._watcher,
                                on_death=self._died)
                self._zygotes[key] = zygote
            return zygote

    def zygotes(self) -> list[Zygote]:
        with self._lock:
            return list(self._zygotes.values())

    def describe(self) -> list[dict[str, Any]]:
        """Each zygote as plain data, for the supervision tree: pid, alive, preload, path and
        how many forked children it has now."""
        return [{"pid": z.pid, "alive": z.alive, "preload": list(z.preload),
                 "path": list(z.path), "children": z.child_count} for z in self.zygotes()]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            zygotes, self._zygotes = list(self._zygotes.values()), {}
        for zygote in zygotes:
            zygote.close()

    def _died(self, zygote: Zygote) -> None:  # watcher thread: restart elsewhere
        with self._lock:
            if self._closed or self._zygotes.get((zygote.preload, zygote.path)) is not zygote:
                return
            self.restarts += 1

        def restart() -> None:
            try:
                self.get(zygote.preload, zygote.path)
            except SpawnError as exc:
                logger.warning("zygote restart failed (next fork retries): {}", exc)

        threading.Thread(target=restart, name="spear-zygote-restart", daemon=True).start()


def child_limits(limits: ResourceLimits | None, cgroup: InstanceCgroup | None) -> dict[str, Any]:
    """What a forked child applies itself: the part of ``limits`` its cgroup does not cover
    (all of it without one), as :func:`~.launch.spawn` applies it after exec."""
    if limits is None:
        return {}
    rlimits: dict[str, int] = {}
    if limits.memory_bytes is not None and cgroup is None:
        rlimits["RLIMIT_AS"] = limits.memory_bytes
    if limits.max_open_files is not None:
        rlimits["RLIMIT_NOFILE"] = limits.max_open_files
    affinity = None
    if limits.cpu_affinity is not None and (cgroup is None or not cgroup.handles_affinity):
        affinity = list(limits.cpu_affinity)
    return {"rlimits": rlimits, "affinity": affinity, "nice": limits.nice,
            "network": limits.network}


def fork_instance(*, zygote: Zygote, entry: str, env: Mapping[str, str], cwd: str | None,
                  limits: ResourceLimits | None, instance_id: str,
                  on_exit: ExitCallback | None, on_output: OutputCallback | None = None,
                  watcher: ProcessWatcher | None = None, cgroup: InstanceCgroup | None = None,
                  argv: Sequence[str] = ()) -> ManagedProcess:
    """:func:`~.launch.spawn` for a handler instance: fork it from ``zygote``, watch it.

    Same contract as ``spawn`` (threads, callbacks, guardian, cgroup, limits, errors); the
    child joins ``cgroup`` and applies the rest of ``limits`` itself before it imports
    ``entry``. ``sys.path`` of the child: ``cwd``, then ``env["PYTHONPATH"]``, then the
    zygote's."""
    if cwd is not None and not os.path.isdir(cwd):
        raise SpawnError(f"working directory does not exist: {cwd}")
    watcher = watcher if watcher is not None else default_watcher()
    watcher.prepare_spawn()
    path = [cwd or os.getcwd(),
            *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env = dict(env)
    if cgroup is not None:  # as the exec wrapper's /bin/sh exports it to a spawned child
        env["PWD"] = cwd or os.getcwd()
    request = {"entry": entry, "env": env, "cwd": cwd, "path": path,
               "join": list(cgroup.procs_files) if cgroup is not None else [],
               "limits": child_limits(limits, cgroup)}
    child = zygote.fork(request)
    pidfd = None
    if watcher.uses_pidfd and child._pidfd is not None:
        pidfd = os.dup(child._pidfd)
    proc = ManagedProcess(child, instance_id=instance_id,
                          argv=tuple(argv) or ("zygote", entry), pidfd=pidfd,
                          on_exit=on_exit, on_output=on_output, cgroup=cgroup)
    try:
        watcher.register(proc)
    except RuntimeError as exc:
        proc.kill_tree()
        proc._close_fds()
        raise SpawnError(f"cannot start instance {instance_id}: {exc}") from exc
    proc._log.debug("forked pid {} from zygote {}: {}", proc.pid, zygote.pid, entry)
    return proc
