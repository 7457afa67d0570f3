"""Shared constants and helpers for the actor-system tests (real processes, bounded waits)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from spear_actors import (
    ConnectionConfig,
    Event,
    InstanceConfig,
    InstanceInfo,
    RestartPolicy,
    SpearSystem,
)

PROGRAMS = Path(__file__).parent / "programs"

HEARTBEAT_INTERVAL = 0.2
HEARTBEAT_TIMEOUT = 0.6
CONNECTION = ConnectionConfig(heartbeat_interval=HEARTBEAT_INTERVAL,
                              heartbeat_timeout=HEARTBEAT_TIMEOUT)
FAST_RESTARTS = RestartPolicy(backoff_min=0.05, backoff_max=0.4)
WAIT = 10.0
"""Bound for waits that normally end well within a second (a loaded 2-core machine can take a
while to start Python and import zmq)."""

ECHO = (sys.executable, "-m", "spear_actors.examples.echo")


def example(name: str, *, env: Mapping[str, str] | None = None, **kwargs: Any
            ) -> InstanceConfig:
    """InstanceConfig running ``spear_actors.examples.<name>`` with fast restarts."""
    kwargs.setdefault("restart", FAST_RESTARTS)
    return InstanceConfig(command=[sys.executable, "-m", f"spear_actors.examples.{name}"],
                          env=dict(env or {}), **kwargs)


def echo(**kwargs: Any) -> InstanceConfig:
    return example("echo", **kwargs)


def program(name: str, **kwargs: Any) -> InstanceConfig:
    """InstanceConfig running ``tests/actors/programs/<name>.py``."""
    kwargs.setdefault("restart", FAST_RESTARTS)
    return InstanceConfig(command=[sys.executable, str(PROGRAMS / f"{name}.py")], **kwargs)


def last_seq(system: SpearSystem) -> int:
    events = system.events(limit=1)
    return events[-1].seq if events else 0


def events_of(system: SpearSystem, instance_id: str | None = None,
              kinds: Iterable[str] | None = None, since: int | None = None) -> list[Event]:
    """Every recorded event (oldest first) of ``kinds`` about ``instance_id``."""
    found = system.events(limit=None, kinds=set(kinds) if kinds else None, since_seq=since)
    return [e for e in found if instance_id is None or e.data.get("instance_id") == instance_id]


def wait_event(system: SpearSystem, kind: str, instance_id: str | None = None, *,
               since: int | None = None, count: int = 1, timeout: float = WAIT,
               match: Callable[[Event], bool] = lambda _e: True) -> Event:
    """The ``count``-th event of ``kind`` (after seq ``since``) matching; bounded wait."""
    def found() -> list[Event]:
        return [e for e in events_of(system, instance_id, {kind}, since) if match(e)]

    deadline = time.monotonic() + timeout
    while True:
        hits = found()
        if len(hits) >= count:
            return hits[count - 1]
        if time.monotonic() >= deadline:
            recent = [(e.seq, e.kind, dict(e.data)) for e in system.events(limit=30)
                      if not e.kind.startswith("Message")]
            raise AssertionError(f"no {kind} #{count} for {instance_id} within {timeout} s; "
                                 f"recent events: {recent}")
        time.sleep(0.01)


def wait_info(system: SpearSystem, instance_id: str, predicate: Callable[[InstanceInfo], bool],
              timeout: float = WAIT, what: str = "instance condition") -> InstanceInfo:
    """The instance's info once ``predicate`` holds for it; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        info = system.instance(instance_id)
        if predicate(info):
            return info
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {info}")
        time.sleep(0.01)

