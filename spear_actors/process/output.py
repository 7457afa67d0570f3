"""An instance's output pipe: its partial-line buffer, split into capped lines.

:class:`OutputPipe` belongs to the :class:`~spear_actors.process.ProcessWatcher` thread, which
reads the pipe and logs each line with the instance id and stream bound; nothing else here
touches a file descriptor. Lines past :data:`MAX_LINE` bytes are cut.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING

from .._log import logger
from .handle import ManagedProcess, Stream

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["MAX_LINE", "OutputPipe"]

MAX_LINE = 64 * 1024
"""Longer output lines are cut here (marked ``[truncated]``); the rest up to the newline is
dropped, so one endless line cannot exhaust memory."""
_TRUNCATED = b" [truncated]"


class OutputPipe:
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
