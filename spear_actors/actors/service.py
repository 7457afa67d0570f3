"""ServiceActor: base of the long-lived service actors (runtime, connection, monitor, tasks).

Pykka stops an actor when handling a ``tell`` raises. For an instance actor that is the point
(its supervisor restarts it); a service actor has no supervisor, and losing the
ConnectionActor would drop every connection. So a service actor logs a failure on a told
message, counts it and carries on with the next; a failure on an asked message (those in
``ASKED``) still goes back to the caller, as Pykka does. Runs in the actor's own thread.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pykka

from .._log import log_exception, logger

__all__ = ["ServiceActor"]


class ServiceActor(pykka.ThreadingActor):
    """Subclasses implement :meth:`handle` instead of ``on_receive``."""

    ASKED: ClassVar[tuple[type, ...]] = ()
    """Message types that are asked: their exceptions are the caller's to see."""

    failures = 0

    def on_receive(self, message: Any) -> Any:
        try:
            return self.handle(message)
        except Exception:
            if isinstance(message, (*self.ASKED, str)):  # str: the manager's "stats" ask
                raise
            self.failures += 1
            log_exception(logger.bind(actor=type(self).__name__),
                          "{} failed on {}; it carries on", type(self).__name__,
                          type(message).__name__)
            return None

    def handle(self, message: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError
