"""What ``up`` tells its operator on stderr, and the exit codes every command shares.

:class:`Console` owns ``up``'s progress and status output: a live line on a terminal, plain
lines otherwise, log records with ``--log-json`` (so stderr stays pure JSON lines). The main
thread uses it; log lines from other threads reach the same live line through the loguru sink
(:class:`spear_actors.logging_setup.StatusLine` serialises the writes).
"""

from __future__ import annotations

import sys

from ..logging_setup import StatusLine

__all__ = ["EXIT_FAILURE", "EXIT_FORCED", "EXIT_OK", "EXIT_USAGE", "Console", "duration",
           "fail"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_FORCED = 0, 1, 2, 130


class Console:
    """Progress and status on stderr. Main thread."""

    def __init__(self, *, json_logs: bool) -> None:
        self.json = json_logs
        self.live = StatusLine(sys.stderr) if sys.stderr.isatty() and not json_logs else None

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
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def clear(self) -> None:
        if self.live is not None:
            self.live.clear()


def fail(message: str, code: int = EXIT_FAILURE) -> int:
    """Print ``spear-actors: message`` on stderr; return ``code``."""
    sys.stderr.write(f"spear-actors: {message}\n")
    sys.stderr.flush()
    return code


def duration(seconds: float) -> str:
    """``12.3s``, ``4.5m`` or ``1.2h``."""
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"
