"""How ``up`` ends: every step of the shutdown runs, whatever failed before it.

:func:`shut_down` runs in the main thread once ``up`` stops serving (a signal, the console's
end, the system's failure, an error): it stops the control endpoint (removing the run file),
stops every instance, kills and reaps whatever outlived that (:func:`reap_leftovers`), and
then waits (bounded) for every non-daemon thread, exiting with ``os._exit(1)`` if one will not
end: after a shutdown ``up`` always exits, and leaves no process and no run file behind, even
when its stdout or stderr died on the way (DESIGN.md section 7).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .console import EXIT_FAILURE, Console, isatty, settle_streams
from .signals import Signals, kill_descendants

if TYPE_CHECKING:
    from ..control import ControlServer
    from ..system import SpearSystem

__all__ = ["THREADS_GRACE", "reap_leftovers", "shut_down"]

THREADS_GRACE = 5.0
"""Seconds the threads get to end after the shutdown before ``up`` exits regardless."""


def shut_down(system: SpearSystem, control: ControlServer | None, console: Console,
              signals: Signals, *, budget: float) -> bool:
    """Stop serving, stop every instance within ``budget`` s, kill and reap what is left,
    then make sure no thread keeps the process alive. Every step runs even if an earlier one
    raised; returns False if one did. Never raises (see :func:`_no_thread_left`)."""
    from .._log import logger

    clean = True

    def step(what: str, action: Callable[[], object]) -> None:
        nonlocal clean
        try:
            action()
        except Exception as exc:  # the next steps must run whatever this one did
            clean = False
            with contextlib.suppress(Exception):
                logger.error("shutdown: {} failed: {!r}", what, exc)

    signals.in_repl = False
    step("signal handlers", signals.shutting_down)
    step("console", console.clear)
    if control is not None:
        step("control endpoint", control.close)
        step("run file", control.remove_run_file)
    why = signals.received or ("system failed" if system.failure is not None else None)
    hint = " (Ctrl-C again to force)" if isatty(sys.stdin) else ""
    step("console", lambda: console.line(f"{why + ': ' if why else ''}stopping every "
                                         f"instance ...{hint}"))
    step("instances", lambda: system.shutdown(timeout=budget))
    step("leftover processes", reap_leftovers)
    step("console", lambda: console.line("spear-actors stopped"))
    step("signal wake-ups", signals.close)
    _no_thread_left()
    return clean


def _no_thread_left() -> None:
    """Last resort: a non-daemon thread still alive after the shutdown would keep the
    interpreter from ever exiting (the instances are gone, the run file too, and ``up`` would
    hang there): wait :data:`THREADS_GRACE` s, then log and ``os._exit(1)``."""
    deadline = time.monotonic() + THREADS_GRACE
    for thread in _live_threads():
        thread.join(max(0.0, deadline - time.monotonic()))
    left = _live_threads()
    if not left:
        return
    from .._log import logger

    with contextlib.suppress(Exception):
        logger.error("threads still alive {:.0f} s after the shutdown: {}; exiting anyway",
                     THREADS_GRACE, ", ".join(t.name for t in left))
    settle_streams()
    os._exit(EXIT_FAILURE)


def _live_threads() -> list[threading.Thread]:
    me = threading.current_thread()
    return [t for t in threading.enumerate() if t is not me and not t.daemon and t.is_alive()]


def reap_leftovers() -> None:
    """After the graceful shutdown: kill and reap whatever still runs below us (a process
    that outlived its stop, an orphan that came to us as subreaper). Main thread."""
    import psutil

    from .._log import logger

    try:
        leftovers = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    if kill_descendants():
        logger.warning("{} process(es) outlived the shutdown: killed", len(leftovers))
    for child in psutil.Process().children():
        try:
            child.wait(timeout=2)  # our own children: reap them
        except (psutil.Error, psutil.TimeoutExpired):
            continue
