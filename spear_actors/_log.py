"""The library's logger. Importing this disables spear_actors' log output (the library
default, as loguru recommends); the CLI and tests call ``logger.enable("spear_actors")``.

Use :func:`log_exception` rather than ``logger.exception``: a loguru sink created with
``diagnose=True`` (loguru's default) prints every local variable of the traceback, and some
of our frames hold secrets (an instance's environment, a raw AUTH_REQUEST frame).
"""

from __future__ import annotations

import traceback
from typing import Any

from loguru import logger

logger.disable("spear_actors")

__all__ = ["log_exception", "logger"]


def log_exception(log: Any, message: str, *args: Any) -> None:
    """Log ``message`` at ERROR with the current exception's traceback as plain text:
    file, line and code only, never the values of local variables."""
    text = traceback.format_exc()
    log.opt(depth=1).error(message + "\n{}", *args, text)
