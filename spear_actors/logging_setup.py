"""Log sinks for the command line: human-readable or JSON lines, and a live status line.

The library keeps loguru disabled for ``spear_actors`` (see ``_log.py``); :func:`setup_logging`
enables it and installs one stderr sink. Records bound with ``instance=...`` (actors, and the
instance stdout/stderr lines the process watcher relays with ``stream=...``) show the instance
id, so the output of every instance interleaves readably with ours.

:class:`StatusLine` keeps a one-line display at the bottom of a terminal; log lines and
messages are written above it. Any thread may use it (the loguru sink runs in whichever thread
logs; the status refresh runs in the CLI's main thread): one lock serialises the writes.

:class:`GuardedStream` is what both write to: output that may die under us (``up ... | head``
exits, the terminal hangs up) is dropped and remembered instead of raising in whichever thread
happened to log, so a dead stderr can never stop a shutdown (DESIGN.md section 7).
"""

from __future__ import annotations

import json as _json
import shutil
import sys
import threading
from datetime import timezone
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

__all__ = ["LEVELS", "GuardedStream", "JsonLines", "StatusLine", "TextOut", "human_format",
           "json_line", "setup_logging"]

LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
_ERASE = "\r\x1b[K"


class TextOut(Protocol):
    """What the sinks here write to: a text stream, or a :class:`GuardedStream`."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> None: ...

    def isatty(self) -> bool: ...


class GuardedStream:
    """A text stream whose ``write`` and ``flush`` never raise.

    When the stream is dead (EPIPE from a closed pipe, EIO from a hung-up terminal, ValueError
    from a closed file) the text is dropped and :attr:`lost` becomes True: the command then
    knows its output was cut and exits non-zero. Any thread: the wrapped stream's own lock
    orders the writes; :attr:`lost` is a flag only ever set to True.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lost = False

    def write(self, text: str, /) -> None:
        try:
            self.stream.write(text)
        except (OSError, ValueError):
            self.lost = True

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            self.lost = True

    def isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (OSError, ValueError):
            return False


class StatusLine:
    """A live line at the bottom of a TTY; :meth:`write` prints above it. Thread-safe."""

    def __init__(self, stream: TextOut | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._lock = threading.Lock()
        self._text = ""

    def set(self, text: str) -> None:
        """Replace the live line (cut to the terminal width so it never wraps)."""
        width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
        with self._lock:
            if text[:width] == self._text:
                return
            self._text = text[:width]
            self._stream.write(_ERASE + self._text)
            self._stream.flush()

    def clear(self) -> None:
        """Erase the live line and forget it."""
        with self._lock:
            if self._text:
                self._stream.write(_ERASE)
                self._stream.flush()
            self._text = ""

    def write(self, message: str) -> None:
        """Print ``message`` (with its own newline) above the live line; a loguru sink."""
        with self._lock:
            if self._text:
                self._stream.write(_ERASE)
            self._stream.write(message)
            if self._text:
                self._stream.write(self._text)
            self._stream.flush()


def human_format(record: Record) -> str:
    """loguru format: time, level, ``[instance stream]`` or ``actor[instance]``, message."""
    extra = record["extra"]
    where = ""
    if "instance" in extra and "stream" in extra:
        where = "<cyan>[{extra[instance]} {extra[stream]}]</cyan> "
    elif "actor" in extra and "instance" in extra:
        where = "<blue>{extra[actor]}</blue><cyan>[{extra[instance]}]</cyan> "
    elif "instance" in extra:
        where = "<cyan>[{extra[instance]}]</cyan> "
    elif "actor" in extra:
        where = "<blue>{extra[actor]}</blue> "
    return ("<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> " + where
            + "{message}\n{exception}")


_SECRET_WORDS = ("token", "secret", "password", "passwd", "credential")


def json_line(record: Record) -> str:
    """One compact JSON object for ``record``: ``time`` (UTC, ISO 8601, ms), ``level``,
    ``message``, then ``instance`` when bound and the record's other extra fields (a
    secret-looking key's value is replaced by ``***``), and ``exception`` when there is one.
    Nothing is repeated; values JSON cannot hold are written as their ``str``."""
    obj: dict[str, Any] = {
        "time": record["time"].astimezone(timezone.utc).isoformat(timespec="milliseconds"),
        "level": record["level"].name, "message": record["message"]}
    extra = record["extra"]
    if "instance" in extra:
        obj["instance"] = extra["instance"]
    for key, value in extra.items():
        if key not in obj:
            obj[key] = "***" if any(w in key.lower() for w in _SECRET_WORDS) else value
    exception = record["exception"]
    if exception is not None and exception.type is not None:
        obj["exception"] = f"{exception.type.__name__}: {exception.value}"
    return _json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str) + "\n"


class JsonLines:
    """A loguru sink writing :func:`json_line` of each record to ``out`` (any thread; the
    stream's own lock orders whole lines)."""

    def __init__(self, out: TextOut) -> None:
        self._out = out

    def __call__(self, message: Any) -> None:
        self._out.write(json_line(message.record))
        self._out.flush()


def _not_instance_output(record: Record) -> bool:
    return "stream" not in record["extra"]


def setup_logging(level: str = "INFO", *, json: bool = False,
                  status: StatusLine | None = None, stream: TextIO | GuardedStream | None = None,
                  instance_output: bool = True) -> None:
    """Enable spear_actors' logs at ``level`` on stderr (JSON lines if ``json``).

    With ``status``, human-readable lines go through it so they print above the live line.
    ``instance_output=False`` drops the instances' relayed stdout/stderr lines.
    The sink writes through a :class:`GuardedStream` (``stream`` if it is one already): a dead
    stream never raises in the logging thread.
    Replaces any sink installed before (loguru's default one included).
    """
    from . import _log  # noqa: F401  (its import-time disable must come before our enable)

    out = stream if isinstance(stream, GuardedStream) else GuardedStream(stream or sys.stderr)
    keep = None if instance_output else _not_instance_output
    logger.remove()
    logger.enable("spear_actors")
    if json:
        logger.add(JsonLines(out), level=level, format="{message}", backtrace=False,
                   diagnose=False, filter=keep)
    elif status is not None:
        logger.add(status.write, level=level, format=human_format, colorize=True,
                   backtrace=False, diagnose=False, filter=keep)
    else:
        logger.add(out, level=level, format=human_format, backtrace=False, diagnose=False,
                   filter=keep)
