"""SpearSystem: the facade people use from scripts and the REPL (DESIGN.md section 3).

Every method runs in the caller's thread and talks to the RuntimeActor only, with bounded
``ask``s (queries to a service go through the root's ``Query`` and are retried while that
service is being restarted), or, for ``submit``, through the root's submission queue.
Leaving the ``with`` block stops every instance (gracefully, then SIGKILL) and every actor
and thread. Once the system has failed (DESIGN.md section 7) every call raises
:class:`~spear_actors.errors.SystemFailed`.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import Any

import pykka

from ._log import logger
from .actors.deps import ActorSet
from .actors.intake import SubmissionQueue
from .actors.runtime import BootInfo, RuntimeActor
from .config import InstanceConfig, ResourceLimits, SystemConfig
from .errors import ConfigError, InstanceFailed, SpearError, SystemFailed, TimeoutError
from .inspect import SupervisionTree
from .messages import (
    Boot,
    CreateInstance,
    DescribeTree,
    GetEvents,
    GetMetrics,
    GetTaskStats,
    InjectCrash,
    ListConnections,
    ListInstances,
    Query,
    RestartInstance,
    ScaleTask,
    StartInstance,
    StopInstance,
    Submission,
    WatchState,
)
from .process import Isolation, OutputRings, ProcessWatcher, ZygotePool
from .records import ConnectionState, Event, InstanceInfo, InstanceState
from .scheduler import Scheduler

__all__ = ["SpearSystem"]

ASK_TIMEOUT = 10.0
DEFAULT_EXECUTE_TIMEOUT = 60.0


class SpearSystem:
    """A running spearlet. Create it with :meth:`start`; use it as a context manager."""

    def __init__(self, config: SystemConfig, *, _token: object = None) -> None:
        if _token is not _START:
            raise TypeError("use SpearSystem.start(config)")
        self.config = config
        self._lock = threading.Lock()
        self._closed = False
        self._owns_work_dir = config.work_dir is None
        self.work_dir = config.work_dir or tempfile.mkdtemp(prefix="spear-work-")
        self._scheduler = Scheduler()
        self._watcher = ProcessWatcher()
        self._isolation = Isolation.start(watcher=self._watcher,
                                          enabled=config.isolation == "auto")
        self._zygotes = ZygotePool(self._watcher)
        self._runtime: pykka.ActorRef[Any] | None = None
        self._intake: SubmissionQueue | None = None
        self._children = ActorSet()
        self._output = OutputRings()
        self.endpoint = ""
        self.port: int | None = None
        self._failure: SystemFailed | None = None
        self._failed = threading.Event()

    # -- start and stop ------------------------------------------------------------------------
    @classmethod
    def start(cls, config: SystemConfig | None = None) -> SpearSystem:
        """Start the actors and the listener. Raises TransportError/ConfigError if the
        listener cannot be bound (nothing is left running then)."""
        system = cls(config or SystemConfig(), _token=_START)
        try:
            system._boot()
        except BaseException:
            system.shutdown(timeout=5)
            raise
        return system

    def _boot(self) -> None:
        runtime = RuntimeActor.start(self.config, self.work_dir, self._scheduler,
                                     self._watcher, self._escalated, self._isolation,
                                     output=self._output, zygotes=self._zygotes)
        self._runtime = runtime
        boot: BootInfo = self._ask(runtime, Boot())
        self.endpoint, self.port = boot.endpoint, boot.port
        self._intake, self._children = boot.intake, boot.children
        logger.info("spear system up on {}", self.endpoint)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every instance (reverse start order), then every actor and thread.
        Idempotent; in-flight requests end with an error, never silence."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        runtime = self._runtime
        if runtime is not None and runtime.is_alive():
            self._stop_all_instances(runtime, deadline)
        for ref in self._children.snapshot():  # anything that did not stop by itself
            ref.stop(block=False)
        for ref in self._children.snapshot():
            ref.stop(timeout=max(0.1, deadline - time.monotonic()))
        if runtime is not None:
            try:
                runtime.stop(timeout=ASK_TIMEOUT)  # stops the services, reverse start order
            except (pykka.ActorDeadError, pykka.Timeout):
                pass
        self._zygotes.close()
        self._isolation.close()  # what an instance left in its cgroup dies here, or by the
        self._watcher.stop()     # guardian (closed by the watcher) if this is interrupted
        self._scheduler.stop()
        if self._owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        logger.info("spear system down")

    def _stop_all_instances(self, runtime: pykka.ActorRef[Any], deadline: float) -> None:
        try:
            infos: list[InstanceInfo] = self._ask(runtime, ListInstances(include_idle=True))
        except SpearError:
            return
        futures: list[Future[InstanceInfo]] = []
        for info in reversed(infos):  # reverse start order
            try:
                reply = self._ask(runtime, StopInstance(info.id, "shutdown"))
                if reply is not None:
                    futures.append(reply.get(timeout=max(0.1, deadline - time.monotonic())))
            except (SpearError, pykka.ActorDeadError, pykka.Timeout):
                continue
        for future in futures:
            try:
                future.result(timeout=max(0.1, deadline - time.monotonic()))
            except FutureTimeout:
                logger.warning("an instance did not stop before the shutdown deadline")

    def kill_cgroups(self) -> None:
        """SIGKILL everything in the instances' cgroups and remove them, now, without the
        actors: for a forced exit (``up``'s second Ctrl-C), which kills the guardian too.
        Any thread, or a signal handler in the main thread. A no-op without cgroups."""
        self._isolation.close(tell_guardian=False)

    @property
    def isolation(self) -> str:
        """How instance limits are enforced: ``cgroup v2``, ``cgroup v1`` or ``rlimit``."""
        return self._isolation.mode

    @property
    def failure(self) -> SystemFailed | None:
        """The error the system gave up with (DESIGN.md section 7), or None while it runs."""
        return self._failure

    def wait_failed(self, timeout: float | None = None) -> SystemFailed | None:
        """Block until the system escalates (or ``timeout``); returns :attr:`failure`."""
        self._failed.wait(timeout)
        return self._failure

    def _escalated(self, error: SystemFailed) -> None:
        """The root gave up (called once, from the runtime's thread)."""
        self._failure = error
        self._failed.set()
        logger.critical("{}", error)

    def __enter__(self) -> SpearSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "stopped" if self._closed else "running"
        return f"<SpearSystem {state} {self.endpoint}>"

    # -- helpers -------------------------------------------------------------------------------
    @property
    def runtime(self) -> pykka.ActorRef[Any]:
        """The root actor (raises SystemFailed after an escalation, SpearError once shut
        down)."""
        if self._failure is not None:
            raise self._failure
        if self._runtime is None or self._closed:
            raise SpearError("the system is not running")
        return self._runtime

    def _ask(self, ref: pykka.ActorRef[Any], message: Any, timeout: float = ASK_TIMEOUT
             ) -> Any:
        try:
            return ref.ask(message, timeout=timeout)
        except pykka.Timeout as exc:
            raise TimeoutError(f"{type(message).__name__} got no answer within "
                               f"{timeout} s") from exc
        except pykka.ActorDeadError as exc:
            if self._failure is not None:
                raise self._failure from exc
            raise SpearError("the system is not running") from exc

    def _query(self, service: str, message: Any, timeout: float = ASK_TIMEOUT) -> Any:
        """Ask service ``service`` through the root; while it is being restarted (a dead
        incarnation), ask its successor, within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            runtime = self.runtime
            left = max(0.01, deadline - time.monotonic())
            try:
                return runtime.ask(Query(service, message), timeout=left).get(timeout=left)
            except pykka.Timeout as exc:
                raise TimeoutError(f"{type(message).__name__} got no answer within "
                                   f"{timeout} s") from exc
            except pykka.ActorDeadError as exc:
                if not runtime.is_alive() or time.monotonic() >= deadline:
                    if self._failure is not None:
                        raise self._failure from exc
                    raise SpearError(f"the {service} service is not running") from exc
                self._failed.wait(0.01)  # it is being restarted: ask its successor

    # -- instances -----------------------------------------------------------------------------
    def create_instance(self, task_id: str, config: InstanceConfig,
                        limits: ResourceLimits | None = None) -> str:
        """Admit and launch one instance of ``task_id``; returns its id at once (it becomes
        READY once it authenticates: see :meth:`wait_ready`)."""
        if not isinstance(config, InstanceConfig):
            raise ConfigError("config must be an InstanceConfig")
        return self._ask(self.runtime,  # type: ignore[no-any-return]
                         CreateInstance(task_id, config, limits or ResourceLimits()))

    def wait_ready(self, instance_id: str, timeout: float = 10.0) -> InstanceInfo:
        """Block until the instance is READY; InstanceFailed if it ends up FAILED/STOPPED,
        TimeoutError after ``timeout``."""
        return self.wait_state(instance_id, {InstanceState.READY, InstanceState.BUSY}, timeout)

    def wait_state(self, instance_id: str, states: set[InstanceState] | frozenset[
            InstanceState], timeout: float = 10.0) -> InstanceInfo:
        event = threading.Event()
        self._ask(self.runtime, WatchState(instance_id, frozenset(states), event))
        if not event.wait(timeout):
            info = self.instance(instance_id)
            raise TimeoutError(f"instance {instance_id} not {'/'.join(s.name for s in states)}"
                               f" within {timeout} s (it is {info.state.name})")
        found = next((i for i in self._runtime_infos() if i.id == instance_id), None)
        if found is None:
            raise SpearError(f"no instance {instance_id!r}")
        info = found
        if info.state is InstanceState.READY:
            # one ask of the task manager, doubling as a barrier: the instance told it its
            # route before it became READY, so once the manager answers, what is submitted
            # from now on can be routed (a new submission may join a drain that was queued
            # ahead of the route in the manager's mailbox); the answer also says if it is BUSY
            [info] = self._with_load([info])
        if info.state not in states:
            raise InstanceFailed(f"instance {instance_id} is {info.state.name}: "
                                 f"{info.last_error or 'no error recorded'}", instance_id)
        return info

    def instance(self, instance_id: str) -> InstanceInfo:
        for info in self.instances():
            if info.id == instance_id:
                return info
        raise SpearError(f"no instance {instance_id!r}")

    def instances(self, task_id: str | None = None) -> list[InstanceInfo]:
        """Every instance (of ``task_id``) in start order. READY ones whose every slot
        (max_concurrency + prefetch) holds a request show as BUSY: derived here from the task
        manager's counts, so the hot path never reports state changes."""
        infos = self._runtime_infos(task_id)
        if any(info.state is InstanceState.READY for info in infos):
            infos = self._with_load(infos)
        return infos

    def _runtime_infos(self, task_id: str | None = None, include_idle: bool = False
                       ) -> list[InstanceInfo]:
        return self._ask(self.runtime,  # type: ignore[no-any-return]
                         ListInstances(task_id, include_idle))

    def _with_load(self, infos: list[InstanceInfo]) -> list[InstanceInfo]:
        """READY -> BUSY where the task manager says every slot holds a request."""
        load = self._query("tasks", GetTaskStats()).get("instances", {})
        return [replace(info, state=InstanceState.BUSY)
                if info.state is InstanceState.READY and load.get(info.id, {}).get("busy")
                else info for info in infos]

    def stop_instance(self, instance_id: str, timeout: float = 30.0) -> InstanceInfo:
        """Stop it for good (SIGNAL stop, SIGTERM, stop_timeout, SIGKILL); not a failure.
        Idempotent: an instance already STOPPED (or FAILED) is returned as it is."""
        reply = self._ask(self.runtime, StopInstance(instance_id, "operator"))
        if reply is None:  # its supervisor is done: nothing left to stop
            return self.instance(instance_id)
        try:
            future: Future[InstanceInfo] = reply.get(timeout=ASK_TIMEOUT)
            return future.result(timeout)
        except pykka.ActorDeadError:  # it finished (or failed) meanwhile
            return self.instance(instance_id)
        except (FutureTimeout, pykka.Timeout) as exc:
            raise TimeoutError(f"instance {instance_id} did not stop in {timeout} s") from exc

    def restart_instance(self, instance_id: str) -> None:
        """Replace the process now (operator restart: not counted against the policy)."""
        self._ask(self.runtime, RestartInstance(instance_id, "operator"))

    def start_instance(self, instance_id: str, *, config: InstanceConfig | None = None,
                       limits: ResourceLimits | None = None) -> bool:
        """Bring a STOPPED or FAILED instance back under the same id, with a fresh restart
        budget; returns False if it is running already (nothing done). ``config``/``limits``
        replace what it runs (a reload's rolling restart: the instance must be stopped)."""
        return bool(self._ask(self.runtime, StartInstance(instance_id, config, limits)))

    def scale(self, task_id: str, count: int, *, config: InstanceConfig | None = None,
              limits: ResourceLimits | None = None, timeout: float = 30.0
              ) -> dict[str, list[str]]:
        """Make task ``task_id`` have ``count`` instances: more are created like its newest
        one (or from ``config``), the newest are stopped and removed (running ones keep their
        pids). Returns ``{"created": [...], "removed": [...]}`` once the removed ones are
        gone (TimeoutError after ``timeout``); the created ones may still be starting."""
        if isinstance(count, bool) or not isinstance(count, int):
            raise ConfigError(f"scale: the count must be an integer, got {count!r}")
        result: dict[str, list[str]] = self._ask(self.runtime, ScaleTask(
            task_id, count, config, limits))
        deadline = time.monotonic() + timeout
        removed = set(result["removed"])
        while removed & {i.id for i in self._runtime_infos(task_id)}:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"scale {task_id}: {sorted(removed)} not stopped within "
                                   f"{timeout} s")
            self._failed.wait(0.02)
        return result

    def remove_task(self, task_id: str, timeout: float = 30.0) -> list[str]:
        """Stop and remove every instance of ``task_id`` and forget the task (a reload
        removed it); returns the removed ids."""
        result: dict[str, list[str]] = self._ask(self.runtime, ScaleTask(
            task_id, 0, forget=True))
        deadline = time.monotonic() + timeout
        while self._runtime_infos(task_id, include_idle=True):  # its warm pool too
            if time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id} not stopped within {timeout} s")
            self._failed.wait(0.02)
        return result["removed"]

    def tail(self, instance_id: str, n: int = 100) -> list[str]:
        """The instance's last ``n`` output lines (stdout and stderr, across its restarts;
        a ring of 1 000 lines each)."""
        return self.tail_since(instance_id, n)[0]

    def tail_since(self, instance_id: str, n: int = 100, since: int | None = None
                   ) -> tuple[list[str], int]:
        """:meth:`tail` after sequence number ``since``, and the newest line's number (to
        follow: pass it back)."""
        self.instance(instance_id)  # SpearError if there is no such instance
        return self._output.tail(instance_id, n, since)

    def inject_crash(self, target: str) -> None:
        """Chaos and drills: make one actor fail as a bug would (DESIGN.md section 7).

        ``target`` is ``"monitor"``, ``"connection"``, ``"tasks"`` (a service actor: the
        root restarts it with fresh state, event ``ServiceRestarted``), ``"instance/<id>"``
        (the instance actor: its supervisor restarts the instance) or ``"supervisor/<id>"``
        (the supervisor: its instance dies with it and the root starts both afresh). Service
        and supervisor failures count against ``SystemConfig.service_restart``; past it the
        system fails (``SystemFailed``). Raises SpearError for an unknown target.
        """
        self._ask(self.runtime, InjectCrash(target))

    # -- work ----------------------------------------------------------------------------------
    def submit(self, target: str, data: bytes, method: str = "", timeout: float | None = None,
               retries: int = 0) -> Future[bytes]:
        """Send ``data`` to an instance of task ``target`` (or the instance ``target``);
        returns a Future of the answer. ``retries`` > 0 marks the call idempotent: it may be
        re-sent to another instance if its instance dies."""
        if self._failure is not None:
            raise self._failure
        if self._closed or self._intake is None:
            raise SpearError("the system is not running")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("data must be bytes")
        future: Future[bytes] = Future()  # cancel() just stops the wait: the work still runs
        self._intake.put(Submission(target, method, bytes(data),
                                    DEFAULT_EXECUTE_TIMEOUT if timeout is None else timeout,
                                    retries, future, time.monotonic()))
        return future

    def execute(self, target: str, data: bytes, method: str = "",
                timeout: float | None = None, retries: int = 0) -> bytes:
        """:meth:`submit` and wait for the answer (raises what the Future holds)."""
        future = self.submit(target, data, method, timeout, retries)
        limit = (DEFAULT_EXECUTE_TIMEOUT if timeout is None else timeout) + 5.0
        try:
            return future.result(limit)
        except FutureTimeout as exc:  # the manager expires requests itself; belt and braces
            if future.done():  # FutureTimeout is the builtin: this is the request's own error
                raise
            raise TimeoutError(f"no answer from {target} within {limit} s") from exc

    # -- inspection ----------------------------------------------------------------------------
    def connections(self) -> list[ConnectionState]:
        return self._query("connection", ListConnections())  # type: ignore[no-any-return]

    def tree(self) -> SupervisionTree:
        runtime = self._ask(self.runtime, DescribeTree())
        try:
            tasks = self._query("tasks", GetTaskStats(), timeout=2.0)
        except SystemFailed:
            raise
        except SpearError:
            tasks = None
        return SupervisionTree.from_snapshots(runtime, tasks)

    def metrics(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = self._query("monitor", GetMetrics())
        snapshot["tasks"] = self._query("tasks", GetTaskStats())
        return snapshot

    def events(self, limit: int | None = 100, kinds: set[str] | None = None,
               since_seq: int | None = None) -> list[Event]:
        return self._query("monitor",  # type: ignore[no-any-return]
                           GetEvents(limit, frozenset(kinds) if kinds else None, since_seq))


_START = object()
