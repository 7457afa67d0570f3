"""RuntimeActor (the seed's ProcessRuntime): the root of the supervision tree.

Runs in its own Pykka thread and is the composition root (DESIGN.md section 7): on ``Boot``
its :class:`~spear_actors.actors.servicetree.ServiceTree` starts MonitorActor, the listener
and ConnectionActor, then TaskExecutionManager; ``create_instance`` then starts one
SupervisorActor per instance. It restarts a failed service or instance supervisor within
``SystemConfig.service_restart`` and, past that budget, escalates: event ``SystemFailed``,
every instance stopped, the facade told. :class:`~spear_actors.system.SpearSystem` talks to
nothing else: queries to a service are forwarded (``Query``) without waiting on it.

``create_instance`` is admission (cpus and memory against node capacity; ``network="none"``
only with the ipc transport), the working directory, the binary check (SpawnError at once, no
restart loop), then a SupervisorActor. Each instance actor gets its cgroup from the
:class:`~spear_actors.process.Isolation` in :class:`Deps` (owned by the facade).
It keeps the latest InstanceInfo of every instance (pushed by the supervisors and instance
actors, newest generation wins), so queries never wait on them.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import psutil
import pykka

from .._log import logger
from ..config import InstanceConfig, ResourceLimits, SystemConfig
from ..errors import (
    ConfigError,
    InstanceFailed,
    InsufficientResources,
    SpearError,
    SystemFailed,
)
from ..messages import (
    Boot,
    Crash,
    CreateInstance,
    DescribeTree,
    InjectCrash,
    InstanceUpdated,
    ListInstances,
    Query,
    Reattach,
    RecordEvent,
    RestartInstance,
    RestartSupervised,
    ScaleTask,
    ServiceFailed,
    StartInstance,
    StopInstance,
    StopSupervised,
    SupervisorDone,
    SupervisorFailed,
    WatchState,
)
from ..process import Isolation, OutputRings, ProcessWatcher, ZygotePool, resolve_command
from ..records import InstanceInfo, InstanceState
from ..scheduler import Scheduler
from .deps import ActorSet, Deps, safe_tell
from .intake import SubmissionQueue
from .servicetree import SERVICE_CLASSES, ServiceTree
from .supervisor import SupervisorActor

__all__ = ["BootInfo", "RuntimeActor"]

_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
Escalate = Callable[[SystemFailed], None]


@dataclass(frozen=True)
class BootInfo:
    """What ``Boot`` answers: the listener and the facade's hand-off points."""

    endpoint: str
    port: int | None
    intake: SubmissionQueue
    children: ActorSet


REFILL_DELAY = 0.01
"""Seconds between a warm-pool claim and its refill (the claimer's next asks go first)."""


@dataclass(frozen=True)
class _Refill:
    """To itself, after a claim: start idle members until the pool is full again."""

    task_id: str
    config: InstanceConfig
    limits: ResourceLimits


@dataclass(slots=True)
class _Entry:
    task_id: str
    config: InstanceConfig
    limits: ResourceLimits
    argv: list[str]
    cwd: str
    info: InstanceInfo
    supervisor: pykka.ActorRef[Any] | None
    created_at: float
    generation: int = 0
    removing: bool = False
    """Scaled down or removed by a reload: dropped from the table once its supervisor ends."""
    claimed: threading.Event | None = None
    """Set for a warm-pool member once claimed; None for an instance not from a pool."""
    watchers: list[tuple[frozenset[InstanceState], threading.Event]] = field(
        default_factory=list)


class RuntimeActor(pykka.ThreadingActor):
    """The root; see the module docstring."""

    def __init__(self, config: SystemConfig, work_dir: str, scheduler: Scheduler,
                 watcher: ProcessWatcher, escalate: Escalate,
                 isolation: Isolation | None = None, output: OutputRings | None = None,
                 zygotes: ZygotePool | None = None) -> None:
        super().__init__()
        self._output = output or OutputRings()
        self._zygotes = zygotes
        self._templates: dict[str, tuple[InstanceConfig, ResourceLimits]] = {}
        """The config of each task's newest instance: what ``ScaleTask`` starts more of."""
        self.config = config
        self.work_dir = work_dir
        self._scheduler = scheduler
        self._watcher = watcher
        self._isolation = isolation
        self._escalate_to = escalate
        self.deps: Deps | None = None
        self.tree: ServiceTree | None = None
        self.failure: SystemFailed | None = None
        self._entries: dict[str, _Entry] = {}
        self._counter = itertools.count(1)
        self.capacity_cpus = float(config.capacity_cpus or psutil.cpu_count() or 1)
        self.capacity_memory = int(config.capacity_memory or psutil.virtual_memory().total)
        self._log = logger.bind(actor="runtime")

    # -- lifecycle -------------------------------------------------------------------------------
    def on_stop(self) -> None:
        if self.tree is not None:
            self.tree.stop()

    def on_failure(self, exc_type: Any, exc_value: Any, tb: Any) -> None:
        """The root itself failed: nobody can restart it, so the system fails."""
        self._escalate(f"the runtime actor failed: {exc_type.__name__}: {exc_value}", "runtime")
        if self.tree is not None:
            self.tree.stop()

    def on_receive(self, message: Any) -> Any:
        match message:
            case Boot():
                return self._boot()
            case CreateInstance(task_id, config, limits):
                if self.failure is not None:
                    raise self.failure
                return self._create(task_id, config, limits)
            case _Refill(task_id, config, limits):
                if self.failure is None:
                    self._refill(task_id, config, limits)
            case InstanceUpdated(info, generation):
                self._updated(info, generation)
            case SupervisorDone(instance_id):
                entry = self._entries.get(instance_id)
                if entry is not None:
                    entry.supervisor = None
                    if entry.removing:
                        self._drop(instance_id)
            case StartInstance(instance_id, config, limits):
                if self.failure is not None:
                    raise self.failure
                return self._start_instance(instance_id, config, limits)
            case ScaleTask(task_id, count, config, limits, forget):
                if self.failure is not None:
                    raise self.failure
                return self._scale(task_id, count, config, limits, forget)
            case ListInstances(task_id, include_idle):
                return [e.info for e in self._entries.values()
                        if (task_id is None or e.task_id == task_id)
                        and (include_idle or not _idle(e))]
            case WatchState(instance_id, states, event):
                self._watch(instance_id, states, event)
            case DescribeTree():
                return self._describe()
            case Query(service, query):
                assert self.tree is not None
                ref = self.tree.services.get(service)
                if ref is None:
                    raise pykka.ActorDeadError(f"no {service} service is running")
                return ref.ask(query, block=False)
            case StopInstance(instance_id, reason):
                entry = self._entries.get(instance_id)
                if entry is None:
                    raise SpearError(f"no instance {instance_id!r}")
                if entry.supervisor is None:
                    return None  # its supervisor is done: nothing left to stop
                return entry.supervisor.ask(StopSupervised(reason), block=False)
            case RestartInstance(instance_id, reason):
                self._restart_instance(instance_id, reason)
            case ServiceFailed(service, generation, reason):
                self._service_failed(service, generation, reason)
            case SupervisorFailed(instance_id, reason):
                self._supervisor_failed(instance_id, reason)
            case InjectCrash(target):
                self._inject(target)
            case _:
                self._log.warning("unexpected message {!r}", type(message).__name__)
        return None

    def _boot(self) -> BootInfo:
        tree = self.tree = ServiceTree(self.config, self.actor_ref, self._scheduler)
        info = tree.boot(self._known_routes)
        self.deps = Deps(runtime=self.actor_ref, services=tree.services,
                         scheduler=self._scheduler, watcher=self._watcher, listener=info,
                         isolation=self._isolation, output=self._output,
                         zygotes=self._zygotes)
        return BootInfo(info.endpoint, info.port, tree.intake, self.deps.children)

    # -- self-supervision ------------------------------------------------------------------------
    def _known_routes(self) -> dict[str, tuple[str, int]]:
        return {iid: (e.task_id, e.config.max_concurrency + e.config.prefetch)
                for iid, e in self._entries.items() if not e.info.state.is_final}

    def _service_failed(self, service: str, generation: int, reason: str) -> None:
        tree = self.tree
        if tree is None or not tree.is_current(service, generation) or self.failure:
            return
        if not tree.within_budget():
            self._escalate(f"{SERVICE_CLASSES[service]} failed once more than "
                           f"service_restart allows: {reason}", service)
            return
        tree.restart(service, reason, self._known_routes)
        for entry in self._entries.values():  # it must learn again what the instances know
            safe_tell(entry.supervisor, Reattach(service))

    def _supervisor_failed(self, instance_id: str, reason: str) -> None:
        entry = self._entries.get(instance_id)
        if entry is None or self.failure is not None or self.tree is None:
            return
        entry.supervisor = None
        if not self.tree.within_budget():
            self._escalate(f"SupervisorActor[{instance_id}] failed once more than "
                           f"service_restart allows: {reason}", f"supervisor/{instance_id}")
            return
        self._log.warning("supervisor of {} restarted: {}", instance_id, reason)
        restarts = entry.info.restarts + 1
        self.tree.event("ServiceRestarted", service=f"supervisor/{instance_id}",
                        reason=reason, restarts=restarts)
        self._start_supervisor(instance_id, entry, restarts, reason)

    def _escalate(self, reason: str, service: str) -> None:
        if self.failure is not None:
            return
        error = self.failure = SystemFailed(f"the spearlet gave up: {reason}")
        self._log.critical("{}; stopping every instance", error)
        if self.tree is not None:
            self.tree.event("SystemFailed", service=service, reason=reason,
                            restarts=sum(self.tree.restarts.values()))
            self.tree.fail_all(error)
        for entry in reversed(list(self._entries.values())):
            safe_tell(entry.supervisor, StopSupervised("system_failed"))
        try:
            self._escalate_to(error)
        except Exception:  # the facade's callback must not take the root down
            self._log.exception("escalation callback failed")

    def _restart_instance(self, instance_id: str, reason: str) -> None:
        entry = self._entries.get(instance_id)
        if entry is None:
            raise SpearError(f"no instance {instance_id!r}")
        if entry.supervisor is None or not safe_tell(entry.supervisor,
                                                     RestartSupervised(reason)):
            raise InstanceFailed(f"instance {instance_id} is {entry.info.state.value}",
                                 instance_id)

    def _inject(self, target: str) -> None:
        kind, _, instance_id = target.partition("/")
        if self.tree is not None and target in SERVICE_CLASSES:
            ref = self.tree.services.get(target)
            if ref is None or not safe_tell(ref, Crash()):
                raise SpearError(f"service {target!r} is not running")
            return
        entry = self._entries.get(instance_id) if kind in ("instance", "supervisor") else None
        if entry is None:
            raise SpearError(f"unknown crash target {target!r} (monitor, connection, tasks, "
                             "instance/<id> or supervisor/<id>)")
        if entry.supervisor is None or not safe_tell(entry.supervisor, InjectCrash(target)):
            raise SpearError(f"{target}: the instance is {entry.info.state.value}")

    # -- creation ------------------------------------------------------------------------------
    def _allocated(self) -> tuple[float, int]:
        cpus, memory = 0.0, 0
        for e in self._entries.values():
            if e.supervisor is not None:
                cpus += e.limits.cpus or 0.0
                memory += e.limits.memory_bytes or 0
        return cpus, memory

    def _create(self, task_id: str, config: InstanceConfig, limits: ResourceLimits) -> str:
        """A new instance, or (``config.prestart``) an idle member of the warm pool claimed,
        READY at once if it already is; the pool is refilled after the answer."""
        if config.prestart <= 0:
            return self._new(task_id, config, limits)
        idle = self._pool(task_id, config, limits)
        if not idle:
            instance_id = self._new(task_id, config, limits)
        else:
            ready = [i for i in idle if self._entries[i].info.state is InstanceState.READY]
            instance_id = (ready or idle)[0]
            entry = self._entries[instance_id]
            assert entry.claimed is not None
            entry.claimed.set()
            if entry.supervisor is not None:  # routes it now, if it is READY
                safe_tell(entry.supervisor, Reattach("tasks"))
            assert self.deps is not None
            safe_tell(self.deps.monitor, RecordEvent("InstanceClaimed", {
                "instance_id": instance_id, "task_id": task_id}, time.time()))
        # shortly after, not next: the caller's wait_ready must not queue behind the refill
        ref, refill = self.actor_ref, _Refill(task_id, config, limits)
        self._scheduler.call_later(REFILL_DELAY, lambda: safe_tell(ref, refill))
        return instance_id

    def _pool(self, task_id: str, config: InstanceConfig, limits: ResourceLimits) -> list[str]:
        return [iid for iid, e in self._entries.items()
                if _idle(e) and not e.info.state.is_final and e.task_id == task_id
                and e.config == config and e.limits == limits]

    def _refill(self, task_id: str, config: InstanceConfig, limits: ResourceLimits) -> None:
        if task_id not in self._templates:
            return  # the task was removed (a reload) since the claim: no pool for it
        for _ in range(config.prestart - len(self._pool(task_id, config, limits))):
            try:
                self._new(task_id, config, limits, claimed=threading.Event())
            except SpearError as exc:  # capacity: the pool stays short
                self._log.warning("warm pool of task {} not refilled: {}", task_id, exc)
                return

    def _new(self, task_id: str, config: InstanceConfig, limits: ResourceLimits,
             claimed: threading.Event | None = None) -> str:
        if self.deps is None:
            raise RuntimeError("runtime not booted yet")
        if not isinstance(task_id, str) or not _TASK_ID.match(task_id):
            raise ConfigError(f"task id {task_id!r} must be 1-64 letters, digits, '_', '.' "
                              "or '-', starting with a letter or digit")
        if limits.network == "none" and self.deps.listener.transport != "ipc":
            raise ConfigError(
                f"task {task_id}: ResourceLimits.network='none' leaves the instance no network, "
                "so it can only reach the spearlet over ipc: set ConnectionConfig.transport="
                f"'ipc' (it is {self.deps.listener.transport!r})")
        self._admit(task_id, limits)
        instance_id = f"{task_id}-{next(self._counter)}"
        cwd = config.working_dir or os.path.join(self.work_dir, instance_id)
        os.makedirs(cwd, mode=0o700, exist_ok=True)
        argv = _argv(config, cwd)
        info = InstanceInfo(id=instance_id, task_id=task_id, state=InstanceState.CREATING,
                            pid=None, restarts=0, connection_id=None, session_id=None,
                            started_at=None, last_exit_code=None, last_error=None)
        entry = _Entry(task_id, config, limits, argv, cwd, info, None, time.time(),
                       claimed=claimed)
        self._entries[instance_id] = entry
        self._templates[task_id] = (config, limits)
        safe_tell(self.deps.monitor, RecordEvent("InstanceCreated", {
            "instance_id": instance_id, "task_id": task_id, "command": list(argv)},
            time.time()))
        self._start_supervisor(instance_id, entry, 0, None)
        self._log.info("created instance {} of task {}", instance_id, task_id)
        return instance_id

    def _admit(self, task_id: str, limits: ResourceLimits) -> None:
        """InsufficientResources unless ``limits`` fit beside every running instance."""
        cpus, memory = self._allocated()
        if limits.cpus and cpus + limits.cpus > self.capacity_cpus:
            raise InsufficientResources(
                f"task {task_id}: {limits.cpus:g} CPUs asked, {self.capacity_cpus - cpus:g} of "
                f"{self.capacity_cpus:g} free")
        if limits.memory_bytes and memory + limits.memory_bytes > self.capacity_memory:
            free = self.capacity_memory - memory
            raise InsufficientResources(
                f"task {task_id}: {limits.memory_bytes >> 20} MiB asked, {free >> 20} MiB of "
                f"{self.capacity_memory >> 20} MiB free")

    def _start_instance(self, instance_id: str, config: InstanceConfig | None,
                        limits: ResourceLimits | None) -> bool:
        """``start``: a finished instance runs again under its id, with a fresh budget."""
        entry = self._entries.get(instance_id)
        if entry is None or entry.removing:
            raise SpearError(f"no instance {instance_id!r}")
        if entry.supervisor is not None:
            if config is not None or limits is not None:
                raise SpearError(f"instance {instance_id} is {entry.info.state.value}: stop it "
                                 "before giving it a new configuration")
            return False  # running already
        new_limits = limits or entry.limits
        self._admit(entry.task_id, new_limits)
        if config is not None:
            cwd = config.working_dir or os.path.join(self.work_dir, instance_id)
            os.makedirs(cwd, mode=0o700, exist_ok=True)
            entry.argv = _argv(config, cwd)
            entry.config, entry.cwd = config, cwd
        entry.limits = new_limits
        entry.info = replace(entry.info, state=InstanceState.CREATING, pid=None, restarts=0)
        self._notify(entry)
        self._start_supervisor(instance_id, entry, 0, None)
        self._log.info("started instance {} again (fresh restart budget)", instance_id)
        return True

    def _scale(self, task_id: str, count: int, config: InstanceConfig | None,
               limits: ResourceLimits | None, forget: bool) -> dict[str, list[str]]:
        if count < 0:
            raise ConfigError(f"scale {task_id}: the count must be >= 0, got {count}")
        if config is not None:
            self._templates[task_id] = (config, limits or ResourceLimits())
        # the task's instances: idle warm-pool members are the pool's, not counted (a scale
        # up claims them first); forgetting the task removes them too
        mine = [(iid, _idle(e)) for iid, e in self._entries.items()
                if e.task_id == task_id and not e.removing]
        live = [iid for iid, idle in mine if not idle]
        template = self._templates.get(task_id)
        if template is None and not mine:
            raise SpearError(f"no task {task_id!r}")
        created: list[str] = []
        removed: list[str] = []
        if count > len(live):
            assert template is not None
            for _ in range(count - len(live)):
                created.append(self._create(task_id, *template))
        going = live[count:] + ([iid for iid, idle in mine if idle] if forget else [])
        for instance_id in reversed(going):  # the newest first
            removed.append(instance_id)
            entry = self._entries[instance_id]
            entry.removing = True
            if entry.supervisor is None or not safe_tell(entry.supervisor,
                                                         StopSupervised("removed")):
                self._drop(instance_id)
        if forget:
            self._templates.pop(task_id, None)
        return {"created": created, "removed": removed}

    def _drop(self, instance_id: str) -> None:
        entry = self._entries.pop(instance_id, None)
        self._output.drop(instance_id)
        if entry is not None:
            for _, event in entry.watchers:
                event.set()
            self._log.info("instance {} removed", instance_id)

    def _start_supervisor(self, instance_id: str, entry: _Entry, restarts: int,
                          last_error: str | None) -> None:
        assert self.deps is not None
        entry.supervisor = SupervisorActor.start(
            instance_id=instance_id, task_id=entry.task_id, config=entry.config,
            limits=entry.limits, argv=entry.argv, cwd=entry.cwd, deps=self.deps,
            restarts=restarts, last_error=last_error, claimed=entry.claimed)

    # -- state ---------------------------------------------------------------------------------
    def _updated(self, info: InstanceInfo, generation: int) -> None:
        entry = self._entries.get(info.id)
        if entry is None or generation < entry.generation:
            return  # an update from a generation that was replaced meanwhile
        if entry.info.state.is_final and not info.state.is_final \
                and generation == entry.generation:
            return  # a late update from an instance actor after its supervisor finished
        entry.generation = generation
        entry.info = info
        self._notify(entry)

    def _watch(self, instance_id: str, states: frozenset[InstanceState],
               event: threading.Event) -> None:
        entry = self._entries.get(instance_id)
        if entry is None:
            event.set()
            return
        entry.watchers.append((states, event))
        self._notify(entry)

    def _notify(self, entry: _Entry) -> None:
        state = entry.info.state
        keep = []
        for states, event in entry.watchers:
            if state in states or state.is_final:
                event.set()
            else:
                keep.append((states, event))
        entry.watchers = keep

    def _describe(self) -> dict[str, Any]:
        children = []
        for instance_id, e in self._entries.items():
            sup = e.supervisor
            children.append({
                "instance_id": instance_id, "task_id": e.task_id,
                "supervisor_alive": sup is not None and sup.is_alive(),
                "restart_policy": {"mode": e.config.restart.mode,
                                   "max_restarts": e.config.restart.max_restarts,
                                   "window": e.config.restart.window},
                "info": e.info, "created_at": e.created_at, "idle": _idle(e)})
        tree = self.tree
        deps = self.deps
        return {"runtime_alive": True,
                "services": tree.alive() if tree is not None else {},
                "service_restarts": ({SERVICE_CLASSES[n]: c for n, c in tree.restarts.items()}
                                     if tree is not None else {}),
                "failed": str(self.failure) if self.failure is not None else None,
                "instances": children,
                "capacity": {"cpus": self.capacity_cpus, "memory": self.capacity_memory},
                "isolation": self._isolation.mode if self._isolation is not None else "rlimit",
                "zygotes": self._zygotes.describe() if self._zygotes is not None else [],
                "zygote_restarts": self._zygotes.restarts if self._zygotes is not None else 0,
                "endpoint": deps.listener.endpoint if deps else None}


def _idle(entry: _Entry) -> bool:
    """A warm-pool member not claimed yet."""
    return entry.claimed is not None and not entry.claimed.is_set()


def _argv(config: InstanceConfig, cwd: str) -> list[str]:
    """What runs: the command (SpawnError now, not in a restart loop), or for a handler
    instance forked from a zygote, the command line that stands for it."""
    if config.entry is not None:
        return [sys.executable, "-m", "spear_actors.zygote", "--serve", config.entry]
    return resolve_command(config.command, cwd)
