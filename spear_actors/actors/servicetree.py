"""ServiceTree: the RuntimeActor's supervision of its service actors (DESIGN.md section 7).

A plain object that runs only in the RuntimeActor's thread. It starts the services in order
(MonitorActor, then the :class:`~spear_actors.actors.listener.Listener` and the
ConnectionActor, then the TaskExecutionManager), restarts a failed one with fresh state and
stops them in reverse order.

Strategy: **one_for_one**. Each service's state is either derived from what the instance
actors hold (sessions and expected secrets for the ConnectionActor, routes for the task
manager, tracked pids for the monitor), which they send again on ``Reattach``, or owned by the
root so that it outlives a restart (the listening socket and its pump, the request table and
the submission queue). No service's state is derived from a sibling's, so restarting one
never requires restarting another, and a crash in the monitor does not cut any connection.

Intensity, as in OTP, is per supervisor: at most ``SystemConfig.service_restart.max_restarts``
restarts (services and instance supervisors together) within ``window`` seconds; one more
escalates (``SystemFailed``). Restarts are immediate: instances depend on the connection
service being back within a heartbeat interval, and the budget bounds a crash loop.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

import pykka

from .._log import logger
from ..config import SystemConfig
from ..errors import SpearError, TimeoutError
from ..messages import RecordEvent, StopListening, Submission
from ..scheduler import Scheduler, TimerHandle
from .connection import ConnectionActor
from .dataplane import Request, RequestTable, fail_future
from .deps import ListenerInfo, ServiceLink, Services
from .intake import SubmissionQueue
from .listener import Listener
from .monitor import MonitorActor
from .tasks import TaskExecutionManager, start_deadline_checks

__all__ = ["SERVICE_CLASSES", "ServiceTree"]

STOP_TIMEOUT = 10.0
SERVICE_CLASSES = {"monitor": "MonitorActor", "connection": "ConnectionActor",
                   "tasks": "TaskExecutionManager"}
"""``inject_crash`` / event names -> the actor class drawn in ``tree()``."""


class ServiceTree:
    """Starts, restarts and stops the service actors; see the module docstring."""

    def __init__(self, config: SystemConfig, root: pykka.ActorRef[Any], scheduler: Scheduler
                 ) -> None:
        self.config = config
        self.policy = config.service_restart
        self._root = root
        self._scheduler = scheduler
        self.services = Services()
        self.table = RequestTable()
        self.intake = SubmissionQueue()
        self.listener: Listener | None = None
        self.restarts: dict[str, int] = dict.fromkeys(Services.NAMES, 0)
        self._generation: dict[str, int] = dict.fromkeys(Services.NAMES, 0)
        self._recent: collections.deque[float] = collections.deque()
        self._deadline_timer: TimerHandle | None = None
        self._log = logger.bind(actor="runtime")

    # -- start -----------------------------------------------------------------------------------
    def boot(self, known_routes: Callable[[], dict[str, tuple[str, int]]]) -> ListenerInfo:
        """Start every service in order; raises what binding the listener raises."""
        self._start("monitor")
        self.listener = Listener(self.config.connection, self.services, self.table)
        info = self.listener.start()
        self._start("connection")
        self._start("tasks", known_routes())
        self._deadline_timer = start_deadline_checks(self._scheduler,
                                                     self.services.handle("tasks"))
        return info

    def _start(self, name: str, routes: dict[str, tuple[str, int]] | None = None) -> None:
        self._generation[name] += 1
        link = ServiceLink(name, self._generation[name], self._root)
        cfg = self.config
        ref: pykka.ActorRef[Any]
        if name == "monitor":
            ref = MonitorActor.start(cfg.monitoring, self._scheduler, link=link)
        elif name == "connection":
            assert self.listener is not None
            ref = ConnectionActor.start(cfg.connection, self.listener, self.services,
                                        monitoring=cfg.monitoring, link=link)
        else:
            assert self.listener is not None
            ref = TaskExecutionManager.start(self.intake, self.services.handle("monitor"),
                                             self.table, self.listener.send_requests,
                                             routes=routes or {}, monitoring=cfg.monitoring,
                                             link=link)
        self.services.set(name, ref)

    # -- failures ----------------------------------------------------------------------------------
    def is_current(self, name: str, generation: int) -> bool:
        return self._generation.get(name) == generation

    def within_budget(self) -> bool:
        """Count one restart against the intensity; False if it is exhausted."""
        now = time.monotonic()
        while self._recent and now - self._recent[0] > self.policy.window:
            self._recent.popleft()
        if len(self._recent) >= self.policy.max_restarts:
            return False
        self._recent.append(now)
        return True

    def restart(self, name: str, reason: str,
                known_routes: Callable[[], dict[str, tuple[str, int]]]) -> None:
        """Start a fresh incarnation of ``name`` (its predecessor is dead)."""
        self.restarts[name] += 1
        if name == "tasks":
            self._recover_requests(reason)
        self._start(name, known_routes() if name == "tasks" else None)
        self._log.warning("{} restarted ({}): {}", SERVICE_CLASSES[name], self.restarts[name],
                          reason)
        self.event("ServiceRestarted", service=name, reason=reason,
                   restarts=self.restarts[name])

    def _recover_requests(self, reason: str) -> None:
        """Every request the dead manager owned ends exactly once: a queued one (never sent)
        goes back to the intake, a sent one is re-sent if it has retries left, else fails."""
        now = time.monotonic()
        for request in self.table.sweep():
            sub = request.submission
            remaining = request.deadline - now if request.deadline is not None else sub.timeout
            if remaining is not None and remaining <= 0:
                fail_future(sub.future, TimeoutError(
                    f"no answer from {sub.target} within {sub.timeout or 0:g} s"))
                continue
            sent = request.routing_id is not None
            if sent and request.retries_left <= 0:
                fail_future(sub.future, SpearError(
                    f"request to {sub.target} lost: the task manager failed while it was in "
                    f"flight ({reason}); it may have run"))
                continue
            self.intake.put(_resubmission(request, remaining, sent))

    def fail_all(self, error: BaseException) -> None:
        """Escalation: nothing is retried any more."""
        self.intake.close(str(error))
        for request in self.table.sweep():
            fail_future(request.submission.future, error)

    def event(self, kind: str, **data: Any) -> None:
        ref = self.services.get("monitor")
        if ref is not None:
            try:
                ref.tell(RecordEvent(kind, data, time.time()))
            except pykka.ActorDeadError:
                pass

    def alive(self) -> dict[str, bool]:
        return {SERVICE_CLASSES[name]: bool(ref is not None and ref.is_alive())
                for name, ref in ((n, self.services.get(n)) for n in Services.NAMES)}

    # -- stop ------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Reverse start order: tasks (failing what is left), connection (closing every
        session), the listener, the monitor. Bounded; tolerates dead services."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self.intake.close("the system is shutting down")
        for name in reversed(Services.NAMES):
            ref = self.services.get(name)
            if ref is not None:
                try:
                    if name == "connection":
                        ref.ask(StopListening(), timeout=STOP_TIMEOUT)
                    ref.stop(timeout=STOP_TIMEOUT)
                except (pykka.ActorDeadError, pykka.Timeout):
                    pass
            if name == "connection" and self.listener is not None:
                self.listener.stop()
        self.fail_all(SpearError("the system is shut down"))


def _resubmission(request: Request, remaining: float | None, sent: bool) -> Submission:
    sub = request.submission
    return Submission(sub.target, sub.method, sub.data, remaining,
                      request.retries_left - 1 if sent else request.retries_left,
                      sub.future, sub.submitted_at)
