"""ServiceActor: base of the restartable service actors (monitor, connection, tasks).

A service actor that fails is restarted by the RuntimeActor with fresh state, OTP-style
(DESIGN.md section 7). Failing means what Pykka means: an exception escaping the handling of a
*told* message stops the actor (Pykka then calls :meth:`on_failure`, in the actor's thread),
and :meth:`on_failure` reports it to the root as :class:`~spear_actors.messages.ServiceFailed`.
An exception raised while handling an *asked* message goes back to the caller and the actor
carries on, as Pykka does: those are answers (a refused request), not crashes.

Subclasses implement :meth:`handle` (instead of ``on_receive``) and :meth:`release` (give
back what the incarnation holds: timers, sockets; called on a normal stop and on failure,
since Pykka calls ``on_stop`` only for the former). :class:`~spear_actors.messages.Crash`
makes any service fail as a bug would (``SpearSystem.inject_crash``).
"""

from __future__ import annotations

import traceback
from typing import Any

import pykka

from .._log import logger
from ..messages import Crash, ServiceFailed
from .deps import ServiceLink, safe_tell

__all__ = ["InjectedCrash", "ServiceActor"]


class InjectedCrash(RuntimeError):
    """Raised by an actor told :class:`~spear_actors.messages.Crash` (a chaos drill)."""


class ServiceActor(pykka.ThreadingActor):
    """Subclasses implement :meth:`handle` and, if they hold resources, :meth:`release`."""

    def __init__(self, link: ServiceLink | None = None) -> None:
        super().__init__()
        self._link = link

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Crash):
            raise InjectedCrash(message.message)
        return self.handle(message)

    def handle(self, message: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def release(self) -> None:
        """Give back what this incarnation holds (any thread-bound resource, timers)."""

    def on_stop(self) -> None:
        self.release()

    def on_failure(self, exc_type: Any, exc_value: Any, tb: Any) -> None:
        name = self._link.name if self._link is not None else type(self).__name__
        report = logger.bind(actor=name)
        if isinstance(exc_value, InjectedCrash):  # a drill: no traceback to read
            report.warning("{} failed: {} (inject_crash)", type(self).__name__, exc_value)
        else:
            text = "".join(traceback.format_exception(exc_type, exc_value, tb))  # no locals
            report.error("{} failed: {}\n{}", type(self).__name__, exc_value, text)
        try:
            self.release()
        finally:
            if self._link is not None:
                safe_tell(self._link.parent, ServiceFailed(
                    self._link.name, self._link.generation,
                    f"{getattr(exc_type, '__name__', exc_type)}: {exc_value}"))
