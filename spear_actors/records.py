"""Public read-only records: instance states and info, events, connection state.

Standard library only. Everything here is a frozen dataclass or an enum, safe to hand
across threads and to print at the REPL.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConnectionState", "ConnectionStatus", "Event", "InstanceInfo", "InstanceState"]


class InstanceState(enum.Enum):
    """Lifecycle of one instance (see DESIGN.md section 4)."""

    CREATING = "creating"
    STARTING = "starting"
    CONNECTING = "connecting"
    READY = "ready"
    BUSY = "busy"
    UNHEALTHY = "unhealthy"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (InstanceState.STOPPED, InstanceState.FAILED)

    @property
    def is_serving(self) -> bool:
        return self in (InstanceState.READY, InstanceState.BUSY)


class ConnectionStatus(enum.Enum):
    """Where one peer connection stands."""

    PENDING = "pending"
    """Connected (sent something) but not yet authenticated."""
    ACTIVE = "active"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """Snapshot of one instance, as :meth:`SpearSystem.instances` returns it."""

    id: str
    task_id: str
    state: InstanceState
    pid: int | None
    restarts: int
    connection_id: str | None
    session_id: str | None
    started_at: float | None
    last_exit_code: int | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded event; ``kind`` is a DESIGN.md section 5 name, ``data`` its fields."""

    seq: int
    time: float
    kind: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """One peer connection, with the seed's fields (times are Unix seconds)."""

    connection_id: str
    instance_id: str | None
    remote_addr: str | None
    connected_at: float
    last_activity: float
    authenticated: bool
    client_type: str | None
    client_version: str | None
    session_id: str | None
    status: ConnectionStatus
    heartbeat_sequence: int
