"""The zygote: a process that imported the instance client once and forks handler instances.

Run by the spearlet (:mod:`spear_actors.process.forking`) as
``python -m spear_actors.zygote CONTROL_FD [PRELOAD...]``: it imports the instance client
(zmq, msgpack), then each ``PRELOAD`` module, says ``ready`` on ``CONTROL_FD`` (one end of an
``AF_UNIX``/``SOCK_SEQPACKET`` pair) and then forks one child per ``fork`` request. It stays
single-threaded and never creates a zmq context, so a child inherits no thread, lock held by
another thread, or zmq state.

Wire (one msgpack map per datagram): the spearlet sends ``{"op": "fork", "seq", "entry",
"env", "cwd", "join", "path", "limits"}`` with the write ends of the child's stdout and stderr
pipes attached (SCM_RIGHTS); the zygote answers ``{"op": "forked", "seq", "pid"}`` with a
pidfd of the child attached, or ``{"op": "error", "seq", "message"}``. It watches each child
with that pidfd, reaps it as soon as it exits and reports ``{"op": "exit", "pid", "code"}``
(``code`` negative: killed by that signal, as with ``Popen``). End of file on the control
socket (the spearlet closed it or died) ends the zygote.

The child (:func:`become_instance`) is made indistinguishable from a spawned instance: its own
session, its cgroup joined before any handler code runs, default signal dispositions, stdin
``/dev/null`` and its own stdout/stderr pipes and no other descriptor, exactly the environment
the spearlet built, its working directory, rlimits, nice and affinity, ``network="none"``; then
``sys.path`` as ``python -m`` there would have it (``cwd``, then ``PYTHONPATH``), the entry
module imported and served with :class:`~spear_actors.client.InstanceClient`.

``python -m spear_actors.zygote --serve ENTRY`` runs the same instance code without a zygote
(a spawned handler instance, for comparison and debugging).

Imports: only the standard library and :mod:`spear_actors.client` (measured with
``python -X importtime -m spear_actors.zygote --imports``).
"""

from __future__ import annotations

import gc
import importlib
import os
import selectors
import signal
import socket
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import msgpack

from .client import InstanceClient

__all__ = ["JOIN_FAILED", "UNKNOWN_EXIT", "become_instance", "main"]

JOIN_FAILED = 125
"""Exit code of a child that could not join its cgroup (no handler code ran), as the wrapper."""
UNKNOWN_EXIT = 255
"""Reported when the exit status of a child was lost (its zygote died, someone else reaped it)."""
_MAX_MSG = 1 << 20
_MAXFD = 1 << 20
_RESET_DEFAULT = ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGCHLD", "SIGUSR1", "SIGUSR2", "SIGALRM",
                  "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGXFSZ")


def _send(sock: socket.socket, msg: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
    socket.send_fds(sock, [msgpack.packb(msg)], list(fds))


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--serve"] and len(argv) == 2:
        _serve_spawned(argv[1])
    if argv[:1] == ["--imports"]:
        return 0
    control = socket.socket(fileno=int(argv[0]))
    for name in argv[1:]:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()  # children's collections skip what the zygote imported: fewer copied pages
    _send(control, {"op": "ready", "pid": os.getpid()})
    sel = selectors.DefaultSelector()
    sel.register(control, selectors.EVENT_READ, None)
    while True:
        for key, _mask in sel.select():
            if key.data is None:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(control, _MAX_MSG, 4)
                except OSError:
                    data, fds = b"", []
                if not data:
                    return 0  # the spearlet closed the link or died: its guardian does the rest
                _request(control, sel, msgpack.unpackb(data), fds)
            else:
                _reap(control, sel, key)


def _request(control: socket.socket, sel: selectors.BaseSelector, req: dict[str, Any],
             fds: list[int]) -> None:
    seq = req.get("seq")
    if req.get("op") != "fork" or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        _send(control, {"op": "error", "seq": seq, "message": "bad request"})
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        _send(control, {"op": "error", "seq": seq, "message": f"fork failed: {exc}"})
        return
    if pid == 0:
        control.detach()  # its descriptor is closed with the others, by number
        sel.close()
        become_instance(req, stdout=fds[0], stderr=fds[1])
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)  # before any wait: the pid cannot have been reused
    sel.register(pidfd, selectors.EVENT_READ, pid)
    _send(control, {"op": "forked", "seq": seq, "pid": pid}, [pidfd])


def _reap(control: socket.socket, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
    pid = key.data
    assert isinstance(pid, int)
    _pid, status = os.waitpid(pid, 0)
    sel.unregister(key.fileobj)
    os.close(key.fd)
    _send(control, {"op": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status)})


def become_instance(req: Mapping[str, Any], *, stdout: int, stderr: int,
                    close_fds: bool = True) -> NoReturn:
    """In a freshly forked child: make it the instance ``req`` describes, serve, exit."""
    code: int = 1
    try:
        if close_fds:
            os.setsid()
            for path in req.get("join", ()):
                try:
                    with open(path, "w") as f:
                        f.write("0")
                except OSError:
                    os.write(stderr, f"spear: cannot join the cgroup {path}\n".encode())
                    os._exit(JOIN_FAILED)
            _reset_signals()
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
            _close_inherited()  # the zygote's socket, epoll, pidfds
        os.environ.clear()
        os.environ.update(req["env"])
        if req.get("cwd"):
            os.chdir(req["cwd"])
        _limit(req.get("limits") or {})
        sys.path[:] = [*req.get("path", ()), *sys.path[1:]]
        sys.argv = [req["entry"]]
        code = _run(req["entry"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(code)


def _close_inherited() -> None:
    """Close every descriptor above 2: those listed in /proc/self/fd (a ``closerange`` up to
    the limit would be a million ``close`` calls where Python has no ``close_range``)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        os.closerange(3, _MAXFD)
        return
    for fd in fds:
        if fd > 2:
            try:
                os.close(fd)
            except OSError:  # the listing's own descriptor, already closed
                pass


def _run(entry: str) -> int:
    module_name, _, attr = entry.partition(":")
    handler: Any = importlib.import_module(module_name)
    for name in attr.split("."):
        handler = getattr(handler, name)
    client = InstanceClient.from_env()
    client.connect(timeout=10)
    try:
        client.serve(handler)
    finally:
        client.close()
    return 0


def _reset_signals() -> None:
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as the interpreter sets it at start-up
    for name in _RESET_DEFAULT:
        signal.signal(getattr(signal, name), signal.SIG_DFL)


def _limit(limits: Mapping[str, Any]) -> None:
    """What the cgroup does not cover, in the child itself before any handler code."""
    import resource  # only children pay for it

    for name, wanted in limits.get("rlimits", {}).items():
        res = getattr(resource, name)
        _soft, hard = resource.getrlimit(res)
        value = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(res, (value, value))
    if limits.get("affinity"):
        os.sched_setaffinity(0, limits["affinity"])
    if limits.get("nice") is not None:
        os.setpriority(os.PRIO_PROCESS, 0, limits["nice"])
    if limits.get("network") == "none":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")


def _serve_spawned(entry: str) -> NoReturn:
    become_instance({"entry": entry, "env": dict(os.environ), "cwd": os.getcwd(),
                     "path": sys.path[:1]},
                    stdout=1, stderr=2, close_fds=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
