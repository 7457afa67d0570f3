"""How ``up`` reacts to signals, and the forced kill.

:class:`Signals` installs the SIGINT/SIGTERM handlers. Python runs them in the main thread
between two bytecodes, whatever that thread was doing: they only set flags (and, in the
``--repl`` console, raise :class:`Terminate` to leave it); they never log, since loguru's lock
may be held by the code they interrupted. The main thread reads the flags and reports.
The one exception is the forced exit (a second Ctrl-C): :meth:`Signals.force` writes with
unbuffered ``os.write``, SIGKILLs every instance's process group and ``os._exit``\\ s at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

from .console import EXIT_FORCED

__all__ = ["Signals", "Terminate", "kill_descendants", "raw_write"]


class Terminate(BaseException):
    """Raised in the main thread by SIGTERM to leave the interactive console."""


class Signals:
    """First SIGINT/SIGTERM: graceful shutdown. SIGINT once shutting down: force it (a repeated
    SIGTERM, as from a service manager plus ``timeout``, leaves the graceful stop running)."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.requested = threading.Event()
        self.received: str | None = None
        """Name of the signal that asked for the shutdown; the main thread reports it."""
        self.quiet = quiet  # no raw writes (stderr carries JSON lines only)
        self.in_repl = False
        self._shutting_down = False
        self.on_force: list[Callable[[], None]] = []

    def install(self, *, sigint: bool = True) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        if sigint:
            signal.signal(signal.SIGINT, self._handle)

    def shutting_down(self) -> None:
        """From now on SIGINT forces the exit."""
        self._shutting_down = True
        self.install()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes: set flags, never log (loguru's lock
        # may be held by the code we interrupted).
        if self._shutting_down or self.requested.is_set():
            if signum == signal.SIGINT:
                self.force()
            self._say("spear-actors: already shutting down (Ctrl-C to force)\n")
            return
        self.received = signal.Signals(signum).name
        self.requested.set()
        if self.in_repl:
            raise Terminate()

    def _say(self, text: str) -> None:
        if not self.quiet:
            raw_write(text)

    def force(self) -> NoReturn:
        """Kill every instance process group and exit 130 now (from the signal handler)."""
        self._say("spear-actors: forced: killing every instance process group\n")
        for callback in self.on_force:
            try:
                callback()
            except Exception:  # the exit must happen whatever fails here
                pass
        kill_descendants()
        os._exit(EXIT_FORCED)


def raw_write(text: str) -> None:
    """Unbuffered write, safe from a signal handler interrupting a buffered one."""
    try:
        os.write(2, ("\r\x1b[K" if sys.stderr.isatty() else "").encode() + text.encode())
    except OSError:
        pass


def kill_descendants() -> int:
    """SIGKILL the process group of every live descendant (instances run in their own
    groups); with the child subreaper set, orphaned grandchildren are among them. Returns how
    many descendants there were."""
    import psutil

    ours = os.getpgrp()
    try:
        children = [c for c in psutil.Process().children(recursive=True)
                    if c.status() != psutil.STATUS_ZOMBIE]
    except psutil.Error:
        return 0
    for child in children:
        try:
            pgid = os.getpgid(child.pid)
            if pgid != ours:
                os.killpg(pgid, signal.SIGKILL)
            else:
                child.kill()
        except (OSError, psutil.Error):
            continue
    return len(children)
