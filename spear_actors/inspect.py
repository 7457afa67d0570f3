"""SupervisionTree: the live supervision tree as data and as a drawing for the REPL.

Built in the caller's thread from snapshots the actors return; holds no references to them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .records import InstanceInfo

__all__ = ["SupervisionTree"]


def _uptime(started_at: float | None, now: float) -> str:
    if started_at is None:
        return "-"
    seconds = max(0.0, now - started_at)
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _alive(flag: bool) -> str:
    return "alive" if flag else "dead"


@dataclass(frozen=True)
class SupervisionTree:
    """``repr()`` draws the tree; :meth:`to_dict` gives the same as plain data."""

    endpoint: str | None
    services: dict[str, bool]
    instances: list[dict[str, Any]]
    taken_at: float
    tasks: dict[str, Any]
    service_restarts: dict[str, int] | None = None
    failed: str | None = None
    """Why the system gave up (DESIGN.md section 7), or None."""
    isolation: str | None = None
    """How instance limits are enforced (DESIGN.md section 9): ``cgroup v2``, ``cgroup v1``
    or ``rlimit``."""
    zygotes: list[dict[str, Any]] | None = None
    """The zygotes forking handler instances (DESIGN.md section 10): pid, alive, preload,
    path, children."""
    zygote_restarts: int = 0

    @classmethod
    def from_snapshots(cls, runtime: dict[str, Any], tasks: dict[str, Any] | None
                       ) -> SupervisionTree:
        return cls(endpoint=runtime.get("endpoint"), services=dict(runtime["services"]),
                   instances=list(runtime["instances"]), taken_at=time.time(),
                   tasks=dict(tasks or {}),
                   service_restarts=dict(runtime.get("service_restarts") or {}),
                   failed=runtime.get("failed"), isolation=runtime.get("isolation"),
                   zygotes=list(runtime.get("zygotes") or []),
                   zygote_restarts=int(runtime.get("zygote_restarts") or 0))

    def to_dict(self) -> dict[str, Any]:
        in_flight = self.tasks.get("instances", {})
        nodes = []
        for node in self.instances:
            info: InstanceInfo = node["info"]
            nodes.append({
                "id": info.id, "task_id": info.task_id,
                "supervisor": {"alive": node["supervisor_alive"],
                               "restart_policy": node["restart_policy"]},
                "state": info.state.value, "pid": info.pid, "restarts": info.restarts,
                "max_restarts": node["restart_policy"]["max_restarts"],
                "connection_id": info.connection_id, "session_id": info.session_id,
                "started_at": info.started_at, "last_exit_code": info.last_exit_code,
                "last_error": info.last_error,
                "in_flight": in_flight.get(info.id, {}).get("in_flight", 0),
                "idle": bool(node.get("idle", False))})
        return {"endpoint": self.endpoint, "taken_at": self.taken_at,
                "runtime": {"alive": True, "services": dict(self.services),
                            "service_restarts": dict(self.service_restarts or {}),
                            "failed": self.failed, "isolation": self.isolation,
                            "zygotes": [dict(z) for z in self.zygotes or []],
                            "zygote_restarts": self.zygote_restarts},
                "tasks": {"pending": self.tasks.get("pending", 0),
                          "queued": self.tasks.get("queued", 0)},
                "instances": nodes}

    def __repr__(self) -> str:
        data = self.to_dict()
        root = f"└── RuntimeActor [{'FAILED: ' + self.failed if self.failed else 'alive'}]"
        if self.isolation:
            root += f" isolation {self.isolation}"
        lines = [f"SpearSystem {self.endpoint or ''}".rstrip(), root]
        services = list(self.services.items())
        entries: list[tuple[str, list[str]]] = []
        restarts = self.service_restarts or {}
        for name, alive in services:
            extra = f" restarts {restarts[name]}" if restarts.get(name) else ""
            if name == "TaskExecutionManager":
                extra += (f"  {data['tasks']['pending']} in flight, "
                          f"{data['tasks']['queued']} queued")
            entries.append((f"{name} [{_alive(alive)}]{extra}", []))
        if self.zygotes:
            entries.append((f"ZygotePool restarts {self.zygote_restarts}", [
                f"Zygote[{','.join(z['preload']) or '-'}] [{_alive(z['alive'])}] "
                f"pid {z['pid']}, {z['children']} forked" for z in self.zygotes]))
        for node in data["instances"]:
            policy = node["supervisor"]["restart_policy"]
            head = (f"SupervisorActor[{node['id']}] "
                    f"[{_alive(node['supervisor']['alive'])}] {policy['mode']}, "
                    f"restarts {node['restarts']} (limit {node['max_restarts']} in "
                    f"{policy['window']:g} s)")
            child = (f"InstanceActor[{node['id']}] {node['state'].upper()}"
                     f"{' idle' if node.get('idle') else ''}"
                     f" pid {node['pid'] if node['pid'] is not None else '-'}"
                     f" {node['connection_id'] or 'no connection'}"
                     f" up {_uptime(node['started_at'], self.taken_at)}")
            if node["in_flight"]:
                child += f" ({node['in_flight']} in flight)"
            if node["last_error"] and node["state"] in ("failed", "restarting", "unhealthy"):
                child += f" — {node['last_error']}"
            entries.append((head, [child]))
        for i, (head, children) in enumerate(entries):
            last = i == len(entries) - 1
            lines.append(f"    {'└──' if last else '├──'} {head}")
            for j, child in enumerate(children):
                lines.append(f"    {'    ' if last else '│   '}"
                             f"{'└──' if j == len(children) - 1 else '├──'} {child}")
        return "\n".join(lines)

    __str__ = __repr__
