"""What every instance subtree needs to reach: actor refs and shared services.

:class:`Deps` is handed down from the runtime to each supervisor and instance actor. It holds
ActorRefs (never actor objects), the scheduler, the process watcher and the listener's
endpoint, all safe to share across threads. The service actors (monitor, connection, tasks)
are reached through :class:`Services`, which always names the *current* incarnation: the
RuntimeActor replaces an entry when it restarts that service, so nobody keeps a stale ref.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pykka

from ..process import Isolation, OutputRings, ProcessWatcher, ZygotePool
from ..scheduler import Scheduler

__all__ = ["ActorSet", "Deps", "ListenerInfo", "ServiceHandle", "ServiceLink", "Services",
           "safe_tell"]


class ActorSet:
    """The supervisor and instance actors of one system (thread-safe), so shutdown can make
    sure none is left running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: set[pykka.ActorRef[Any]] = set()

    def add(self, ref: pykka.ActorRef[Any]) -> None:
        with self._lock:
            self._refs.add(ref)

    def discard(self, ref: pykka.ActorRef[Any]) -> None:
        with self._lock:
            self._refs.discard(ref)

    def snapshot(self) -> list[pykka.ActorRef[Any]]:
        with self._lock:
            return list(self._refs)


class Services:
    """The current ActorRef of each service actor, by name (``monitor``, ``connection``,
    ``tasks``). Written by the RuntimeActor's thread, read by any thread."""

    NAMES = ("monitor", "connection", "tasks")

    def __init__(self) -> None:
        self._refs: dict[str, pykka.ActorRef[Any]] = {}

    def get(self, name: str) -> pykka.ActorRef[Any] | None:
        return self._refs.get(name)

    def set(self, name: str, ref: pykka.ActorRef[Any] | None) -> None:
        if ref is None:
            self._refs.pop(name, None)
        else:
            self._refs[name] = ref

    def handle(self, name: str) -> ServiceHandle:
        return ServiceHandle(self, name)

    def snapshot(self) -> dict[str, pykka.ActorRef[Any]]:
        return dict(self._refs)


class ServiceHandle:
    """Tells (or asks) whichever incarnation of one service is current. Raises
    ``pykka.ActorDeadError`` while none is alive (use :func:`safe_tell`)."""

    __slots__ = ("_name", "_services")

    def __init__(self, services: Services, name: str) -> None:
        self._services = services
        self._name = name

    def _ref(self) -> pykka.ActorRef[Any]:
        ref = self._services.get(self._name)
        if ref is None:
            raise pykka.ActorDeadError(f"no {self._name} service is running")
        return ref

    def tell(self, message: Any) -> None:
        self._ref().tell(message)

    def ask(self, message: Any, *, timeout: float | None = None) -> Any:
        return self._ref().ask(message, timeout=timeout)

    def is_alive(self) -> bool:
        ref = self._services.get(self._name)
        return ref is not None and ref.is_alive()


@dataclass(frozen=True, slots=True)
class ServiceLink:
    """How a service actor reports its own failure to the root that restarts it."""

    name: str
    generation: int
    parent: pykka.ActorRef[Any]


@dataclass(frozen=True, slots=True)
class ListenerInfo:
    endpoint: str
    port: int | None
    transport: str
    curve_public_key: str | None = None
    per_instance: bool = False
    """Each instance gets a listener of its own (ask the ConnectionActor: OpenListener)."""
    gate: str = "none"
    """``plain``: instances present their id and secret as ZMTP PLAIN credentials."""


@dataclass(frozen=True, slots=True)
class Deps:
    runtime: pykka.ActorRef[Any]
    services: Services
    scheduler: Scheduler
    watcher: ProcessWatcher
    listener: ListenerInfo
    children: ActorSet = field(default_factory=ActorSet, compare=False)
    isolation: Isolation | None = None
    """The spearlet's cgroups (None, or mode ``rlimit``: instances get no cgroup)."""
    output: OutputRings = field(default_factory=OutputRings, compare=False)
    """Every instance's recent output lines (``tail``), fed by the watcher thread."""
    zygotes: ZygotePool | None = None
    """The zygotes that fork ``entry`` instances (owned by the facade)."""

    @property
    def connection(self) -> ServiceHandle:
        return ServiceHandle(self.services, "connection")

    @property
    def monitor(self) -> ServiceHandle:
        return ServiceHandle(self.services, "monitor")

    @property
    def tasks(self) -> ServiceHandle:
        return ServiceHandle(self.services, "tasks")


def safe_tell(ref: pykka.ActorRef[Any] | ServiceHandle | None, message: Any) -> bool:
    """``tell`` that tolerates a dead actor (callbacks from other threads may race a stop)."""
    if ref is None:
        return False
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True
