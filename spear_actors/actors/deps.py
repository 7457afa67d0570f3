"""What every instance subtree needs to reach: actor refs and shared services.

A frozen record handed down from the runtime to each supervisor and instance actor. It holds
ActorRefs (never actor objects), the scheduler, the process watcher and the listener's
endpoint, all safe to share across threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pykka

from ..process import ProcessWatcher
from ..scheduler import Scheduler

__all__ = ["ActorSet", "Deps", "ListenerInfo", "safe_tell"]


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


@dataclass(frozen=True, slots=True)
class ListenerInfo:
    endpoint: str
    port: int | None
    transport: str
    curve_public_key: str | None = None
    per_instance: bool = False
    """Each instance gets a listener of its own (ask the ConnectionActor: OpenListener)."""


@dataclass(frozen=True, slots=True)
class Deps:
    runtime: pykka.ActorRef[Any]
    connection: pykka.ActorRef[Any]
    monitor: pykka.ActorRef[Any]
    tasks: pykka.ActorRef[Any]
    scheduler: Scheduler
    watcher: ProcessWatcher
    listener: ListenerInfo
    children: ActorSet = field(default_factory=ActorSet, compare=False)


def safe_tell(ref: pykka.ActorRef[Any] | None, message: Any) -> bool:
    """``tell`` that tolerates a dead actor (callbacks from other threads may race a stop)."""
    if ref is None:
        return False
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True
