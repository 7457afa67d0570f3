"""How ``up`` reacts to signals, and the forced kill.

:class:`Signals` installs the SIGINT, SIGTERM and SIGHUP handlers. Python runs them in the main
thread between two bytecodes, whatever that thread was doing, so they only set plain
attributes (and, in the ``--repl`` console, raise :class:`Terminate` to leave it). They never
log (loguru's lock may be held by the code they interrupted) and never touch a
``threading`` lock or Event (the main thread may hold its lock at that very moment: a
deadlock). They wake the waiting loop through :class:`Wake`, a self-pipe the C-level handler
writes to (``signal.set_wakeup_fd``); the loop (main thread, or the ``--repl`` warden thread)
then reads the flags and reports.

- SIGINT/SIGTERM: a graceful shutdown. Once shutting down, SIGINT forces it (a repeated
  SIGTERM, as from a service manager plus ``timeout``, leaves the graceful stop running).
- SIGHUP (``kill -HUP``, or the terminal closing): reported by the waiting loop (it counts
  them from the wake-up pipe); never stops ``up``.
- The forced exit (:meth:`Signals.force`) is the one handler that acts at once: it writes
  with unbuffered ``os.write``, SIGKILLs every instance's process group and ``os._exit(130)``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

from .console import EXIT_FORCED, isatty

__all__ = ["Signals", "Terminate", "Wake", "kill_descendants", "raw_write"]


class Terminate(BaseException):
    """Raised in the main thread by SIGTERM to leave the interactive console."""


class Wake:
    """A self-pipe: :meth:`wait` returns as soon as a signal arrives (the interpreter's C
    handler writes its number here, see ``signal.set_wakeup_fd``) or any thread calls
    :meth:`poke`. No lock anywhere, so a signal handler cannot deadlock on it. One thread
    waits at a time."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._installed = False

    def install(self) -> None:
        """Have every signal with a Python handler wake us. Main thread."""
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._installed = True

    def poke(self) -> None:
        """Wake the waiting thread. Any thread, or a signal handler."""
        with contextlib.suppress(OSError):  # full: it will wake anyway; closed: no one waits
            os.write(self._write, b"\0")

    def wait(self, timeout: float) -> bytes:
        """Sleep up to ``timeout`` s, less if woken; then take every wake-up so far: returns
        one byte per wake-up, the signal's number (0 for a :meth:`poke`)."""
        taken = b""
        try:
            select.select([self._read], [], [], timeout)
            while chunk := os.read(self._read, 512):
                taken += chunk
        except (BlockingIOError, InterruptedError):
            pass
        except (OSError, ValueError):  # closed: we are exiting
            pass
        return taken

    def close(self) -> None:
        """Stop the wake-ups. Main thread. The write end stays open: a late :meth:`poke` then
        fails quietly (EPIPE) instead of writing into a descriptor reused by another file."""
        if self._installed:
            signal.set_wakeup_fd(-1)
            self._installed = False
        with contextlib.suppress(OSError):
            os.close(self._read)


class Signals:
    """``up``'s signal flags. The handlers (main thread) write them; the waiting loop reads
    them after :meth:`wait`."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.wake = Wake()
        self.requested = False
        """A SIGINT/SIGTERM asked for the shutdown."""
        self.received: str | None = None
        """Name of the signal that asked for the shutdown; the main thread reports it."""
        self.quiet = quiet  # no raw writes (stderr carries JSON lines only)
        self.in_repl = False
        self.output_lost = False
        """A raw write from a handler failed (stderr is dead)."""
        self.on_force: list[Callable[[], None]] = []
        self._shutting_down = False
        self._leave_repl = False
        self._hangups = 0
        self._tty = isatty(sys.stderr)

    @property
    def stopping(self) -> bool:
        """A shutdown was asked for or is under way: waiting loops return."""
        return self.requested or self._shutting_down

    def install(self, *, sigint: bool = True) -> None:
        """Install the handlers and the wake-up pipe. Main thread."""
        self.wake.install()
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGHUP, self._handle)
        if sigint:
            signal.signal(signal.SIGINT, self._handle)

    def shutting_down(self) -> None:
        """From now on SIGINT forces the exit; waiting loops return. Main thread."""
        self._shutting_down = True
        self.install()
        self.wake.poke()

    def close(self) -> None:
        """No more wake-ups (the handlers stay: a second Ctrl-C still forces). Main thread."""
        self.wake.close()

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` s; a signal or :meth:`poke` ends it at once. The waiting
        loop (one thread at a time)."""
        self._hangups += self.wake.wait(timeout).count(signal.SIGHUP)

    def poke(self) -> None:
        """Wake the waiting loop (any thread), e.g. because the system failed."""
        self.wake.poke()

    def take_hangups(self) -> int:
        """How many SIGHUPs arrived since the last call. The waiting loop.

        Counted from the wake-up pipe, not by the handler: the interpreter's C handler writes
        there the moment the signal arrives, while the Python handler runs only when the main
        thread next executes bytecode; the ``--repl`` warden thread may wake before that."""
        new, self._hangups = self._hangups, 0
        return new

    def request_stop(self, reason: str) -> None:
        """Ask for the graceful shutdown as SIGTERM would (``spear-actors shutdown``). Any
        thread: plain flag writes, then a wake-up (and, under ``--repl``, the console left)."""
        if self.stopping:
            return
        self.received = reason
        self.requested = True
        if self.in_repl:
            self.leave_repl()
        self.wake.poke()

    def leave_repl(self) -> None:
        """Make the main thread leave the ``--repl`` console as if by SIGTERM, without a
        shutdown request of its own (the caller has its reason). Any thread; a real signal
        to the main thread, since only that interrupts its blocking read of stdin."""
        self._leave_repl = True
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes: plain attributes only; never log
        # (loguru's lock may be held by the code we interrupted), never take a lock.
        if signum == signal.SIGHUP:  # counted from the wake-up pipe, see take_hangups
            return
        if self._leave_repl and signum == signal.SIGTERM:
            self._leave_repl = False
            if self.in_repl:
                raise Terminate()
            return
        if self.stopping:
            if signum == signal.SIGINT:
                self.force()
            self._say("spear-actors: already shutting down (Ctrl-C to force)\n")
            return
        self.received = signal.Signals(signum).name
        self.requested = True
        if self.in_repl:
            raise Terminate()

    def _say(self, text: str) -> None:
        if not self.quiet and not raw_write(text, tty=self._tty):
            self.output_lost = True

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


def raw_write(text: str, *, tty: bool = False) -> bool:
    """Unbuffered write on stderr, safe from a signal handler interrupting a buffered one
    (``tty``: erase the live line first). False if stderr is dead."""
    try:
        os.write(2, (("\r\x1b[K" if tty else "") + text).encode())
    except OSError:
        return False
    return True


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
