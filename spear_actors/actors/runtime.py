"""RuntimeActor (the seed's ProcessRuntime): root of the supervision tree.

Runs in its own Pykka thread. ``create_instance`` is admission (cpus and memory against node
capacity), the working directory, the binary check (SpawnError at once, no restart loop),
then a SupervisorActor that owns the instance. It keeps the latest InstanceInfo of every
instance (pushed by the supervisors and instance actors), so queries never wait on them.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import pykka

from .._log import logger
from ..config import InstanceConfig, ResourceLimits, SystemConfig
from ..errors import ConfigError, InsufficientResources
from ..messages import (
    CreateInstance,
    DescribeTree,
    GetSupervisor,
    InstanceUpdated,
    ListInstances,
    RecordEvent,
    SupervisorDone,
    WatchState,
)
from ..process import resolve_command
from ..records import InstanceInfo, InstanceState
from .deps import Deps
from .service import ServiceActor
from .supervisor import SupervisorActor

__all__ = ["RuntimeActor"]

_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(slots=True)
class _Entry:
    task_id: str
    config: InstanceConfig
    limits: ResourceLimits
    info: InstanceInfo
    supervisor: pykka.ActorRef[Any] | None
    created_at: float
    watchers: list[tuple[frozenset[InstanceState], threading.Event]] = field(
        default_factory=list)


class RuntimeActor(ServiceActor):
    """Creates instances and keeps their latest state; see the module docstring."""

    ASKED = (CreateInstance, GetSupervisor, ListInstances, WatchState, DescribeTree)

    def __init__(self, config: SystemConfig, work_dir: str) -> None:
        super().__init__()
        self.config = config
        self.work_dir = work_dir
        self.deps: Deps | None = None
        self._entries: dict[str, _Entry] = {}
        self._counter = itertools.count(1)
        self.capacity_cpus = float(config.capacity_cpus or psutil.cpu_count() or 1)
        self.capacity_memory = int(config.capacity_memory or psutil.virtual_memory().total)
        self._log = logger.bind(actor="runtime")

    def handle(self, message: Any) -> Any:
        match message:
            case Deps():
                self.deps = message
            case CreateInstance(task_id, config, limits):
                return self._create(task_id, config, limits)
            case InstanceUpdated(info):
                self._updated(info)
            case SupervisorDone(instance_id):
                entry = self._entries.get(instance_id)
                if entry is not None:
                    entry.supervisor = None
            case GetSupervisor(instance_id):
                entry = self._entries.get(instance_id)
                return entry.supervisor if entry else None
            case ListInstances(task_id):
                return [e.info for e in self._entries.values()
                        if task_id is None or e.task_id == task_id]
            case WatchState(instance_id, states, event):
                self._watch(instance_id, states, event)
            case DescribeTree():
                return self._describe()
            case _:
                self._log.warning("unexpected message {!r}", type(message).__name__)
        return None

    # -- creation ------------------------------------------------------------------------------
    def _allocated(self) -> tuple[float, int]:
        cpus, memory = 0.0, 0
        for e in self._entries.values():
            if e.supervisor is not None:
                cpus += e.limits.cpus or 0.0
                memory += e.limits.memory_bytes or 0
        return cpus, memory

    def _create(self, task_id: str, config: InstanceConfig, limits: ResourceLimits) -> str:
        if self.deps is None:
            raise RuntimeError("runtime not wired yet")
        if not isinstance(task_id, str) or not _TASK_ID.match(task_id):
            raise ConfigError(f"task id {task_id!r} must be 1-64 letters, digits, '_', '.' "
                              "or '-', starting with a letter or digit")
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
        instance_id = f"{task_id}-{next(self._counter)}"
        cwd = config.working_dir or os.path.join(self.work_dir, instance_id)
        os.makedirs(cwd, mode=0o700, exist_ok=True)
        argv = resolve_command(config.command, cwd)  # SpawnError now, not in a restart loop
        info = InstanceInfo(id=instance_id, task_id=task_id, state=InstanceState.CREATING,
                            pid=None, restarts=0, connection_id=None, session_id=None,
                            started_at=None, last_exit_code=None, last_error=None)
        entry = _Entry(task_id, config, limits, info, None, time.time())
        self._entries[instance_id] = entry
        self.deps.monitor.tell(RecordEvent("InstanceCreated", {
            "instance_id": instance_id, "task_id": task_id, "command": list(argv)},
            time.time()))
        entry.supervisor = SupervisorActor.start(
            instance_id=instance_id, task_id=task_id, config=config, limits=limits,
            argv=argv, cwd=cwd, deps=self.deps)
        self._log.info("created instance {} of task {}", instance_id, task_id)
        return instance_id

    # -- state ---------------------------------------------------------------------------------
    def _updated(self, info: InstanceInfo) -> None:
        entry = self._entries.get(info.id)
        if entry is None:
            return
        if entry.info.state.is_final and not info.state.is_final:
            return  # a late update from an instance actor after its supervisor finished
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
                "info": e.info, "created_at": e.created_at})
        deps = self.deps
        services = {}
        if deps is not None:
            services = {"MonitorActor": deps.monitor.is_alive(),
                        "ConnectionActor": deps.connection.is_alive(),
                        "TaskExecutionManager": deps.tasks.is_alive()}
        return {"runtime_alive": True, "services": services, "instances": children,
                "capacity": {"cpus": self.capacity_cpus, "memory": self.capacity_memory},
                "endpoint": deps.listener.endpoint if deps else None}
