"""What ``up`` tells its operator on stderr, and the exit codes every command shares.

:class:`Console` owns ``up``'s progress and status output: a live line on a terminal, plain
lines otherwise, log records with ``--log-json`` (so stderr stays pure JSON lines). The main
thread uses it; log lines from other threads reach the same stream through the loguru sink
(:class:`spear_actors.logging_setup.StatusLine` serialises the writes on a terminal).

Every write goes through one :class:`~spear_actors.logging_setup.GuardedStream`: once stderr is
dead (``up ... | head`` exited, the terminal hung up) nothing raises, the text is dropped and
:attr:`Console.lost` says so; ``up`` still shuts down completely and then exits 1.
"""

from __future__ import annotations

import os
import sys

from ..logging_setup import GuardedStream, StatusLine

__all__ = ["EXIT_FAILURE", "EXIT_FORCED", "EXIT_OK", "EXIT_USAGE", "Console", "duration",
           "fail", "isatty", "settle_streams"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_FORCED = 0, 1, 2, 130


class Console:
    """Progress and status on stderr. Main thread (:attr:`err` and :attr:`live`: any)."""

    def __init__(self, *, json_logs: bool) -> None:
        self.json = json_logs
        self.err = GuardedStream(sys.stderr)
        """stderr for ``up``: the loguru sink writes here too."""
        self.live = StatusLine(self.err) if isatty(sys.stderr) and not json_logs else None

    @property
    def lost(self) -> bool:
        """Some output could not be written (the stream was dead)."""
        return self.err.lost

    def show(self, text: str) -> None:
        """Transient progress (drawn only on a terminal)."""
        if self.live is not None:
            self.live.set(text)

    def line(self, text: str) -> None:
        """A message that stays."""
        if self.json:
            from .._log import logger

            logger.info(text)
        elif self.live is not None:
            self.live.write(text + "\n")
        else:
            self.err.write(text + "\n")
            self.err.flush()

    def clear(self) -> None:
        if self.live is not None:
            self.live.clear()

    def fail(self, message: str, code: int = EXIT_FAILURE) -> int:
        """:func:`fail` through the guarded stream."""
        return fail(message, code, self.err)


def fail(message: str, code: int = EXIT_FAILURE, stream: GuardedStream | None = None) -> int:
    """Print ``spear-actors: message`` on stderr (never raising); return ``code``."""
    out = stream if stream is not None else GuardedStream(sys.stderr)
    out.write(f"spear-actors: {message}\n")
    out.flush()
    return code


def settle_streams() -> bool:
    """Flush stdout and stderr; a dead one gets /dev/null on its descriptor so that nothing
    written later, nor the interpreter's last flush at exit, fails (a failed flush at exit
    would turn our exit code into 120). Returns True if one was dead. Main thread, at exit."""
    dead = False
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
            continue
        except (OSError, ValueError):
            dead = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
            stream.flush()  # what it still held now goes to /dev/null
        except (OSError, ValueError):
            pass
    return dead


def isatty(stream: object) -> bool:
    """``stream.isatty()``, False for a closed or missing stream."""
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def duration(seconds: float) -> str:
    """``12.3s``, ``4.5m`` or ``1.2h``."""
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"
