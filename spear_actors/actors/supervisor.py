"""SupervisorActor: keeps one instance alive, OTP style (one supervisor per instance).

Runs in its own Pykka thread. It starts an InstanceActor per process generation and, when
that generation ends (process exit, heartbeat loss, no auth in time, the actor crashing),
applies the :class:`RestartPolicy`: ``permanent`` restarts always, ``transient`` only after
an abnormal end, ``temporary`` never; at most ``max_restarts`` within ``window`` seconds,
waiting an exponential backoff with jitter; the count resets after ``reset_after`` seconds
of healthy running. Past the limit the instance is FAILED for good. Each restart gets a new
process and a new secret under the same instance id. An operator's stop is never a failure.

If this actor itself fails (a bug, or ``inject_crash("supervisor/<id>")``), its instance is
killed with it (OTP: a supervisor's children die with it) and the RuntimeActor starts a fresh
supervisor, which starts a fresh instance; ``restarts`` carries on counting. Generations are
numbered across all supervisors of the process, so a replaced generation's late messages are
recognisable everywhere.
"""

from __future__ import annotations

import collections
import itertools
import random
import secrets
import threading
import time
from concurrent.futures import Future
from typing import Any

import pykka

from .._log import logger
from ..config import InstanceConfig, ResourceLimits
from ..messages import (
    ChildCrashed,
    ChildExited,
    ChildReady,
    Crash,
    DescribeSupervisor,
    InjectCrash,
    InstanceRoute,
    InstanceUpdated,
    KillProcess,
    Reattach,
    RecordEvent,
    RestartDue,
    RestartSupervised,
    StopProcess,
    StopSupervised,
    SupervisorDone,
    SupervisorFailed,
)
from ..records import InstanceInfo, InstanceState
from ..scheduler import TimerHandle
from .deps import Deps, safe_tell
from .instance import InstanceActor
from .service import InjectedCrash

__all__ = ["SupervisorActor", "new_secret"]

_GENERATIONS = itertools.count(1)


def new_secret() -> str:
    """A fresh per-instance secret: 256 bits from ``secrets`` (43 url-safe characters)."""
    return secrets.token_urlsafe(32)


class SupervisorActor(pykka.ThreadingActor):
    """Supervises the instance ``instance_id``; see the module docstring."""

    def __init__(self, *, instance_id: str, task_id: str, config: InstanceConfig,
                 limits: ResourceLimits, argv: list[str], cwd: str, deps: Deps,
                 restarts: int = 0, last_error: str | None = None,
                 claimed: threading.Event | None = None) -> None:
        super().__init__()
        self._claimed = claimed
        self.instance_id = instance_id
        self.task_id = task_id
        self.config = config
        self.policy = config.restart
        self.limits = limits
        self.argv = argv
        self.cwd = cwd
        self._deps = deps
        self._window = config.max_concurrency + config.prefetch
        deps.children.add(self.actor_ref)
        self.generation = 0
        self.child: pykka.ActorRef[Any] | None = None
        self.restarts = restarts
        self._recent: collections.deque[float] = collections.deque()
        self._ready_since: float | None = None
        self._restart_timer: TimerHandle | None = None
        self._stopping = False
        self._operator_restart = False
        self._stop_futures: list[Future[InstanceInfo]] = []
        self.state = InstanceState.CREATING
        self.last_exit_code: int | None = None
        self.last_error = last_error
        self._log = logger.bind(actor="supervisor", instance=instance_id)

    def on_start(self) -> None:
        self._start_child()

    def on_stop(self) -> None:
        if self._restart_timer is not None:
            self._restart_timer.cancel()
        self._deps.children.discard(self.actor_ref)

    def on_failure(self, exc_type: Any, exc_value: Any, tb: Any) -> None:
        """This supervisor died of a bug: its instance dies with it; the root restarts us."""
        self.on_stop()
        safe_tell(self.child, KillProcess("supervisor_failed"))
        safe_tell(self._deps.runtime, SupervisorFailed(
            self.instance_id, f"{getattr(exc_type, '__name__', exc_type)}: {exc_value}"))

    def on_receive(self, message: Any) -> Any:
        match message:
            case ChildExited(generation, exit_code, reason, abnormal):
                if generation == self.generation:
                    self._child_ended(exit_code, reason, abnormal)
            case ChildCrashed(generation, error):
                if generation == self.generation:
                    self._log.error("instance actor crashed: {}", error)
                    self._child_ended(None, f"instance actor crashed: {error}", True)
            case ChildReady(generation, at):
                if generation == self.generation:
                    self._ready_since = at
            case RestartDue(generation):
                if generation == self.generation and not self._stopping:
                    self._restart_timer = None
                    self._start_child()
            case StopSupervised(reason):
                return self._stop_instance(reason)
            case RestartSupervised(reason):
                self._operator_restart_now(reason)
            case DescribeSupervisor():
                return self.describe()
            case Reattach():
                safe_tell(self.child, message)
            case InjectCrash(target):
                if target.startswith("supervisor/"):
                    raise InjectedCrash(f"crash injected into {target}")
                if not safe_tell(self.child, Crash()):
                    self._log.warning("{}: no live instance actor to crash", target)
            case _:
                self._log.warning("unexpected message {!r}", type(message).__name__)
        return None

    # -- children ------------------------------------------------------------------------------
    def _start_child(self) -> None:
        self.generation = next(_GENERATIONS)
        self._ready_since = None
        self.child = InstanceActor.start(
            instance_id=self.instance_id, task_id=self.task_id, generation=self.generation,
            secret=new_secret(), config=self.config, limits=self.limits, argv=self.argv,
            cwd=self.cwd, restarts=self.restarts, supervisor=self.actor_ref, deps=self._deps,
            previous_exit=(self.last_exit_code, self.last_error), claimed=self._claimed)

    def _child_ended(self, exit_code: int | None, reason: str, abnormal: bool) -> None:
        self.child = None
        self.last_exit_code = exit_code
        if abnormal:
            self.last_error = reason
        if self._stopping:
            self._finish(InstanceState.STOPPED)
            return
        if self._operator_restart:
            self._operator_restart = False
            self.restarts += 1
            self._event("InstanceRestarting", attempt=self.restarts, delay=0.0,
                        reason="operator restart")
            self._start_child()
            return
        mode = self.policy.mode
        if mode == "temporary" or (mode == "transient" and not abnormal):
            self._finish(InstanceState.FAILED if abnormal else InstanceState.STOPPED)
            return
        now = time.monotonic()
        if self._ready_since is not None and now - self._ready_since >= self.policy.reset_after:
            self._recent.clear()  # it ran healthily long enough: a fresh budget
        while self._recent and now - self._recent[0] > self.policy.window:
            self._recent.popleft()
        if len(self._recent) >= self.policy.max_restarts:
            self.last_error = (f"restart limit reached ({self.policy.max_restarts} in "
                               f"{self.policy.window:g} s); last: {reason}")
            self._log.error("giving up: {}", self.last_error)
            self._finish(InstanceState.FAILED)
            return
        self._recent.append(now)
        self.restarts += 1
        delay = self.policy.backoff(len(self._recent), random.random())
        self._log.warning("restarting in {:.3f} s (attempt {}): {}", delay, self.restarts,
                          reason)
        self._publish(InstanceState.RESTARTING)
        self._event("InstanceRestarting", attempt=self.restarts, delay=round(delay, 3),
                    reason=reason,
                    exit_code=exit_code)
        generation, ref = self.generation, self.actor_ref
        self._restart_timer = self._deps.scheduler.call_later(
            delay, lambda: safe_tell(ref, RestartDue(generation)))

    def _stop_instance(self, reason: str) -> Future[InstanceInfo]:
        future: Future[InstanceInfo] = Future()
        if self.state in (InstanceState.STOPPED, InstanceState.FAILED):
            future.set_result(self.info())
            return future
        self._stop_futures.append(future)
        if self._stopping:
            return future
        self._stopping = True
        if self._restart_timer is not None:
            self._restart_timer.cancel()
            self._restart_timer = None
        if self.child is not None and safe_tell(self.child, StopProcess(reason)):
            return future
        self.child = None
        self._finish(InstanceState.STOPPED)
        return future

    def _operator_restart_now(self, reason: str) -> None:
        if self._stopping or self.state in (InstanceState.STOPPED, InstanceState.FAILED):
            return
        if self.child is None:  # waiting out a backoff: restart at once instead
            if self._restart_timer is not None:
                self._restart_timer.cancel()
                self._restart_timer = None
            self._start_child()
            return
        self._operator_restart = True
        safe_tell(self.child, StopProcess(reason))

    def _finish(self, state: InstanceState) -> None:
        self._publish(state)
        safe_tell(self._deps.tasks, InstanceRoute(self.instance_id, self.task_id, None,
                                                  self._window, state, self.generation))
        if state is InstanceState.FAILED:
            self._event("InstanceFailed", reason=self.last_error, exit_code=self.last_exit_code,
                        restarts=self.restarts)
        else:
            self._event("InstanceStopped", exit_code=self.last_exit_code)
        info = self.info()
        for future in self._stop_futures:
            if not future.done():
                future.set_result(info)
        self._stop_futures.clear()
        safe_tell(self._deps.runtime, SupervisorDone(self.instance_id))
        self.actor_ref.stop(block=False)

    # -- reporting -----------------------------------------------------------------------------
    def info(self) -> InstanceInfo:
        return InstanceInfo(id=self.instance_id, task_id=self.task_id, state=self.state,
                            pid=None, restarts=self.restarts, connection_id=None,
                            session_id=None, started_at=None,
                            last_exit_code=self.last_exit_code, last_error=self.last_error)

    def describe(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "generation": self.generation,
                "restarts": self.restarts, "recent_restarts": len(self._recent),
                "max_restarts": self.policy.max_restarts, "mode": self.policy.mode,
                "child_alive": self.child is not None and self.child.is_alive()}

    def _publish(self, state: InstanceState) -> None:
        self.state = state
        safe_tell(self._deps.runtime, InstanceUpdated(self.info(), self.generation))

    def _event(self, kind: str, **data: Any) -> None:
        safe_tell(self._deps.monitor, RecordEvent(
            kind, {"instance_id": self.instance_id, "task_id": self.task_id, **data},
            time.time()))
