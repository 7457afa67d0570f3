"""InstanceActor: the lifecycle of one instance process, as an explicit state machine.

One actor per process generation (a restart makes a new one). Runs in its own Pykka thread;
the process watcher thread reports the exit with a ``tell``, the ConnectionActor reports auth
and connection loss, the scheduler reports the startup deadline. The actor never blocks on
the process: stopping and killing run in short-lived helper threads.

Each generation runs in a cgroup of its own where the system has cgroups (``Deps.isolation``,
DESIGN.md section 9): made before the spawn, killed whole and removed (this actor's thread,
bounded) when the process has ended. ``InstanceExited`` carries a ``cause`` (``oom`` when the
OOM killer SIGKILLed it, with the limit in the reason and the peak memory; ``stopped``,
``exit``, ``signal``, or the reason the actor killed it, e.g. ``heartbeat_timeout``).

States: STARTING -> CONNECTING -> READY <-> (BUSY is the task manager's view) ->
UNHEALTHY (heartbeat lost: killed) / STOPPING (operator) -> exit reported to the supervisor,
which decides RESTARTING, STOPPED or FAILED.

This actor is the owner of what the service actors must know about its instance: the secret,
the dedicated listener, the routing id it is authenticated on, the pid. When the root
restarts a service, ``Reattach`` makes it tell the new incarnation again: a restarted
ConnectionActor gets ``ExpectInstance`` (the instance goes CONNECTING until it has
authenticated again, and keeps its route meanwhile so that answers in flight still arrive),
a restarted task manager gets the route, a restarted monitor the pid.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import replace
from typing import Any, cast

import pykka

from .._log import log_exception, logger
from ..config import InstanceConfig, ResourceLimits
from ..errors import SpawnError
from ..messages import (
    ChildCrashed,
    ChildExited,
    ChildReady,
    ConnectionAuthenticated,
    ConnectionLost,
    Crash,
    ExpectInstance,
    ForgetInstance,
    InstanceRoute,
    InstanceUpdated,
    KillProcess,
    OpenListener,
    ProcessExited,
    Reattach,
    RecordEvent,
    SendSignal,
    StartupTimedOut,
    StopProcess,
    TrackProcess,
)
from ..process import InstanceCgroup, ManagedProcess, build_env, fork_instance, spawn
from ..records import InstanceInfo, InstanceState
from ..scheduler import TimerHandle
from .deps import Deps, safe_tell

__all__ = ["InstanceActor"]

_LAST_LINES = 5
"""Output lines quoted in ``last_error`` when an instance ends before it authenticated."""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"

UNHEALTHY_REASONS = frozenset({"heartbeat_timeout", "idle_timeout", "protocol_error"})
STOP_GRACE = 1.0  # seconds after SIGNAL stop before SIGTERM


class InstanceActor(pykka.ThreadingActor):
    """One generation of one instance. ``__init__`` runs in the supervisor's thread,
    everything else in this actor's thread."""

    def __init__(self, *, instance_id: str, task_id: str, generation: int, secret: str,
                 config: InstanceConfig, limits: ResourceLimits, argv: list[str], cwd: str,
                 restarts: int, supervisor: pykka.ActorRef[Any], deps: Deps,
                 previous_exit: tuple[int | None, str | None] = (None, None),
                 claimed: threading.Event | None = None) -> None:
        super().__init__()
        self._claimed = claimed
        """A warm-pool member is routed (given requests) only once this is set."""
        self.instance_id = instance_id
        self.task_id = task_id
        self.generation = generation
        self._secret = secret
        self.config = config
        self.limits = limits
        self.argv = argv
        self.cwd = cwd
        self.restarts = restarts
        self._previous_exit = previous_exit  # shown until this generation ends
        self._supervisor = supervisor
        self._deps = deps
        self._window = config.max_concurrency + config.prefetch
        deps.children.add(self.actor_ref)
        self.state = InstanceState.CREATING
        self._proc: ManagedProcess | None = None
        self._cgroup: InstanceCgroup | None = None
        self._connection_id: str | None = None
        self._ever_authenticated = False
        self._output_mark = 0
        self._session_id: str | None = None
        self._routing_id: bytes | None = None
        self._listener_tag: bytes | None = None
        self._started_at: float | None = None
        self._startup_timer: TimerHandle | None = None
        self._exit_reason: str | None = None
        self._stopping = False
        self._reported = False
        self._log = logger.bind(actor="instance", instance=instance_id)

    def __repr__(self) -> str:
        return f"<InstanceActor {self.instance_id} gen={self.generation} {self.state.value}>"

    # -- lifecycle -----------------------------------------------------------------------------
    def on_start(self) -> None:
        # Pykka does not call on_failure for on_start errors, so handle them here
        try:
            self._launch()
        except SpawnError as exc:
            self._log.error("could not start: {}", exc)
            self._exit_reason = f"spawn failed: {exc}"
            self._report_exit(None)
        except Exception as exc:
            log_exception(self._log, "instance actor failed to start")
            self._crash_cleanup(f"{type(exc).__name__}: {exc}")

    def on_stop(self) -> None:
        self._deps.children.discard(self.actor_ref)

    def on_failure(self, exc_type: Any, exc_value: Any, tb: Any) -> None:
        self._deps.children.discard(self.actor_ref)
        self._crash_cleanup(f"{getattr(exc_type, '__name__', exc_type)}: {exc_value}")

    def _crash_cleanup(self, error: str) -> None:
        """The actor is dying of an exception: kill the process, tell the supervisor."""
        self._cancel_timer()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill_tree()
        self._remove_cgroup()
        self._unroute()
        safe_tell(self._deps.connection, ForgetInstance(self.instance_id, self.generation,
                                                        "instance_crashed"))
        safe_tell(self._deps.monitor, TrackProcess(self.instance_id, None))
        if not self._reported:
            self._reported = True
            safe_tell(self._supervisor, ChildCrashed(self.generation, error))
        self.actor_stopped.set()  # make sure nothing else is processed

    def _launch(self) -> None:
        deps = self._deps
        self._set_state(InstanceState.STARTING)
        self._expect()
        listener = deps.listener
        if listener.per_instance:
            own: dict[str, Any] = cast(dict[str, Any], deps.connection.ask(
                OpenListener(self.instance_id, self.generation), timeout=10.0))
            listener = replace(listener, endpoint=own["endpoint"], port=own["port"])
            self._listener_tag = own["tag"]
        extra = dict(self.config.env)
        extra.setdefault("SPEAR_MAX_CONCURRENCY", str(self.config.max_concurrency))
        if listener.curve_public_key:
            extra["SPEAR_CURVE_SERVER_KEY"] = listener.curve_public_key
        if listener.gate == "plain":
            extra["SPEAR_GATE"] = "plain"
        env = build_env(instance_id=self.instance_id, secret=self._secret,
                        port=listener.port, endpoint=listener.endpoint,
                        transport=listener.transport, extra=extra,
                        inherit_env=self.config.inherit_env)
        ref = self.actor_ref
        holder: list[int] = []

        def on_exit(code: int) -> None:  # runs in the watcher thread
            safe_tell(ref, ProcessExited(holder[0] if holder else -1, code))

        if deps.isolation is not None:
            try:
                self._cgroup = deps.isolation.create(
                    f"{self.instance_id}-{self.generation}", self.limits)
            except OSError as exc:
                raise SpawnError(f"cannot make the cgroup of {self.instance_id}: {exc}") from exc
        try:
            self._output_mark = deps.output.mark(self.instance_id)
            if self.config.entry is not None:  # a handler: forked from a zygote
                if deps.zygotes is None:
                    raise SpawnError("this system has no zygotes for entry instances")
                path = (self.config.working_dir,) if self.config.working_dir else ()
                zygote = deps.zygotes.get(self.config.preload, path)
                self._proc = fork_instance(
                    zygote=zygote, entry=self.config.entry, env=env, cwd=self.cwd,
                    limits=self.limits, instance_id=self.instance_id, on_exit=on_exit,
                    on_output=deps.output.append, watcher=deps.watcher, cgroup=self._cgroup,
                    argv=self.argv)
            else:
                self._proc = spawn(argv=self.argv, env=env, cwd=self.cwd, limits=self.limits,
                                   instance_id=self.instance_id, on_exit=on_exit,
                                   on_output=deps.output.append, watcher=deps.watcher,
                                   cgroup=self._cgroup)
        except BaseException:
            self._remove_cgroup()
            raise
        holder.append(self._proc.pid)
        self._started_at = time.time()
        self._log.info("started pid {} (generation {})", self._proc.pid, self.generation)
        safe_tell(deps.monitor, TrackProcess(self.instance_id, self._proc.pid, self._cgroup))
        self._event("InstanceStarted", pid=self._proc.pid, generation=self.generation)
        self._set_state(InstanceState.CONNECTING)
        self._startup_timer = deps.scheduler.call_later(
            self.config.startup_timeout, lambda: safe_tell(ref, StartupTimedOut()))

    # -- messages ------------------------------------------------------------------------------
    def on_receive(self, message: Any) -> Any:
        match message:
            case ConnectionAuthenticated(connection_id, session_id, routing_id):
                self._authenticated(connection_id, session_id, routing_id)
            case ConnectionLost(connection_id, reason):
                self._connection_lost(connection_id, reason)
            case ProcessExited(_, exit_code):
                self._report_exit(exit_code)
            case StartupTimedOut():
                if self.state is InstanceState.CONNECTING and not self._stopping:
                    self._log.warning("no authentication within {} s: killing",
                                      self.config.startup_timeout)
                    self._kill("startup_timeout")
            case StopProcess(reason):
                self._graceful_stop(reason)
            case KillProcess(reason):
                self._kill(reason)
            case Crash(text):
                raise RuntimeError(text)
            case Reattach(service):
                self._reattach(service)
            case _:
                self._log.warning("unexpected message {!r}", type(message).__name__)
        return None

    def _authenticated(self, connection_id: str, session_id: str, routing_id: bytes) -> None:
        if self._stopping or self._proc is None or self._proc.returncode is not None:
            return
        self._cancel_timer()
        self._connection_id = connection_id
        self._ever_authenticated = True
        self._session_id = session_id
        self._routing_id = routing_id
        # route before publishing READY: whoever wait_ready()s may submit at once, and the
        # manager must know the instance by then (else "no task or instance named ...")
        self._route(InstanceState.READY)
        self._set_state(InstanceState.READY)
        self._event("InstanceReady", pid=self._proc.pid, connection_id=connection_id,
                    generation=self.generation)
        safe_tell(self._supervisor, ChildReady(self.generation, time.monotonic()))

    def _connection_lost(self, connection_id: str, reason: str) -> None:
        if connection_id != self._connection_id:
            return  # an older connection we already replaced
        self._connection_id = self._session_id = self._routing_id = None
        self._unroute()
        if self._stopping or self._proc is None or self._proc.returncode is not None:
            return
        if reason in UNHEALTHY_REASONS:
            self._log.warning("connection lost ({}): process presumed hung, killing it", reason)
            self._set_state(InstanceState.UNHEALTHY)
            self._kill(reason)
            return
        # the client may reconnect (e.g. it closed and will retry): give it startup_timeout
        self._await_auth()

    def _await_auth(self) -> None:
        """CONNECTING, killed as a startup timeout unless it authenticates in time."""
        self._set_state(InstanceState.CONNECTING)
        ref = self.actor_ref
        self._cancel_timer()
        self._startup_timer = self._deps.scheduler.call_later(
            self.config.startup_timeout, lambda: safe_tell(ref, StartupTimedOut()))

    def _reattach(self, service: str) -> None:
        """A service was restarted with fresh state: tell it what it must know of us."""
        proc = self._proc
        if self._stopping or self._reported or proc is None or proc.returncode is not None:
            return
        if service == "monitor":
            safe_tell(self._deps.monitor, TrackProcess(self.instance_id, proc.pid, self._cgroup))
        elif service == "tasks":
            if self._routing_id is not None and self.state is InstanceState.READY:
                self._route(InstanceState.READY)
        elif service == "connection":
            self._expect(self._routing_id)
            if self._connection_id is not None:  # it must authenticate with the new one
                self._connection_id = self._session_id = None
                # no new requests meanwhile; those in flight may still be answered
                self._route(InstanceState.CONNECTING)
                self._await_auth()

    def _expect(self, routing_id: bytes | None = None) -> None:
        safe_tell(self._deps.connection, ExpectInstance(
            self.instance_id, self._secret, self.actor_ref, self.generation,
            self._listener_tag, routing_id))

    def _graceful_stop(self, reason: str) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._cancel_timer()
        if self._proc is None or self._proc.returncode is not None:
            self._report_exit(self._proc.returncode if self._proc else None)
            return
        self._set_state(InstanceState.STOPPING)
        self._unroute()
        safe_tell(self._deps.connection, SendSignal(self.instance_id, "stop", reason))
        proc, timeout = self._proc, self.config.stop_timeout
        # the stop SIGNAL can only help a connected instance: others get SIGTERM at once
        grace = min(STOP_GRACE, timeout) if self._connection_id is not None else 0.0

        def stopper() -> None:  # SIGNAL stop -> grace -> SIGTERM -> stop_timeout -> SIGKILL
            if proc.wait(grace) is None:
                proc.terminate_tree(timeout)
            else:
                proc.kill_tree()  # descendants it may have left behind

        threading.Thread(target=stopper, name=f"stop-{self.instance_id}", daemon=True).start()

    def _kill(self, reason: str) -> None:
        if self._exit_reason is None:
            self._exit_reason = reason
        proc = self._proc
        if proc is not None and proc.returncode is None:
            threading.Thread(target=proc.kill_tree, name=f"kill-{self.instance_id}",
                             daemon=True).start()

    def _report_exit(self, exit_code: int | None) -> None:
        if self._reported:
            return
        self._reported = True
        self._cancel_timer()
        self._unroute()
        deps = self._deps
        safe_tell(deps.connection, ForgetInstance(self.instance_id, self.generation, "exited"))
        safe_tell(deps.monitor, TrackProcess(self.instance_id, None))
        if self._proc is not None:
            # whatever the instance left behind (children that outlived it) dies with it,
            # before the supervisor starts the next generation; instant when nothing is left
            self._proc.kill_tree()
        extra: dict[str, Any] = {}
        oom = False
        cgroup = self._cgroup
        if cgroup is not None:
            oom_kills = cgroup.oom_kills()
            extra = {"memory_peak_bytes": cgroup.peak_bytes(), "oom_kills": oom_kills,
                     "memory_limit_bytes": self.limits.memory_bytes}
            oom = oom_kills > 0 and exit_code == -9  # SIGKILLed, and by the OOM killer
            self._remove_cgroup()
        if self._stopping:
            reason, abnormal, cause = "stopped", False, "stopped"
        elif oom and cgroup is not None:
            reason, abnormal, cause = (
                f"killed by the OOM killer ({cgroup.describe_limit()})", True, "oom")
            self._exit_reason = reason
        elif self._exit_reason is not None:
            reason, abnormal = self._exit_reason, True
            cause = reason.split(":")[0].replace(" ", "_")  # heartbeat_timeout, spawn_failed
        elif exit_code is not None and exit_code < 0:
            name = _signal_name(-exit_code)
            reason, abnormal, cause = f"killed by {name}", True, "signal"
            extra["signal"] = name
        else:
            reason = f"exited with code {exit_code}"
            abnormal = exit_code != 0
            cause = "exit"
        if abnormal and self._connection_id is None and not self._ever_authenticated:
            # it never got as far as authenticating: its last words say why (a missing file,
            # an import error), which would otherwise only reach up's console
            lines, _ = self._deps.output.tail(self.instance_id, _LAST_LINES,
                                              since=self._output_mark)
            if lines:
                reason = f"{reason}; last output: {' | '.join(lines)}"
                self._exit_reason = reason
        self._event("InstanceExited", exit_code=exit_code, reason=reason, cause=cause,
                    pid=self._proc.pid if self._proc else None, generation=self.generation,
                    **extra)
        self._log.info("process ended: {}", reason)
        safe_tell(self._supervisor, ChildExited(self.generation, exit_code, reason, abnormal))
        self.actor_ref.stop(block=False)

    # -- helpers -------------------------------------------------------------------------------
    def _remove_cgroup(self) -> None:
        """Kill what is left in this generation's cgroup and remove it (blocks <= ~1 s)."""
        cgroup, self._cgroup = self._cgroup, None
        if cgroup is not None and not cgroup.remove():
            self._log.warning("cgroup {} could not be removed", cgroup.path)

    def info(self) -> InstanceInfo:
        proc = self._proc
        exited = proc is not None and proc.returncode is not None
        last_code, last_error = self._previous_exit
        return InstanceInfo(
            id=self.instance_id, task_id=self.task_id, state=self.state,
            pid=proc.pid if proc is not None and not exited else None,
            restarts=self.restarts, connection_id=self._connection_id,
            session_id=self._session_id, started_at=self._started_at,
            last_exit_code=proc.returncode if exited and proc is not None else last_code,
            last_error=self._exit_reason or last_error)

    def _set_state(self, state: InstanceState) -> None:
        self.state = state
        safe_tell(self._deps.runtime, InstanceUpdated(self.info(), self.generation))

    def _route(self, state: InstanceState) -> None:
        idle = self._claimed is not None and not self._claimed.is_set()
        safe_tell(self._deps.tasks, InstanceRoute(self.instance_id, self.task_id,
                                                  None if idle else self._routing_id,
                                                  self._window, state,
                                                  self.generation))

    def _unroute(self) -> None:
        safe_tell(self._deps.tasks, InstanceRoute(self.instance_id, self.task_id, None,
                                                  self._window, self.state, self.generation))

    def _cancel_timer(self) -> None:
        if self._startup_timer is not None:
            self._startup_timer.cancel()
            self._startup_timer = None

    def _event(self, kind: str, **data: Any) -> None:
        safe_tell(self._deps.monitor, RecordEvent(kind, {"instance_id": self.instance_id,
                                                         "task_id": self.task_id, **data},
                                                  time.time()))
