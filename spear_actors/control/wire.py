"""What travels on the control endpoint: one msgpack map per request, ``{token, op, args}``;
the answer ``{ok: true, result}`` or ``{ok: false, code, error[, error_type]}``. Results are
plain data (:func:`plain`: records as maps, enums as values), rebuilt into records on the
client side (:func:`info_from`, :func:`tree_from_dict`, ...). Pure functions, any thread.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import msgpack

from ..inspect import SupervisionTree
from ..records import ConnectionState, ConnectionStatus, Event, InstanceInfo, InstanceState

__all__ = [
    "MAX_REQUEST",
    "REFUSED",
    "connection_from",
    "event_from",
    "info_from",
    "pack",
    "plain",
    "tree_from_dict",
]

MAX_REQUEST = 1 << 20
REFUSED = "control token refused"


def plain(value: Any) -> Any:
    """Records, enums and mappings as msgpack-friendly data (maps, lists, scalars)."""
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name != "secret_validator"}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, deque)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    return repr(value)


def tree_from_dict(data: Mapping[str, Any]) -> SupervisionTree:
    """Rebuild a :class:`SupervisionTree` (whose repr draws it) from its ``to_dict()``."""
    nodes: list[dict[str, Any]] = []
    in_flight: dict[str, Any] = {}
    for node in data.get("instances", []):
        nodes.append({"info": info_from(node),
                      "supervisor_alive": node["supervisor"]["alive"],
                      "restart_policy": dict(node["supervisor"]["restart_policy"])})
        in_flight[node["id"]] = {"in_flight": node.get("in_flight", 0)}
    tasks = dict(data.get("tasks", {}))
    runtime = data.get("runtime", {})
    return SupervisionTree(endpoint=data.get("endpoint"),
                           services=dict(runtime.get("services", {})),
                           instances=nodes, taken_at=float(data.get("taken_at", time.time())),
                           tasks={**tasks, "instances": in_flight},
                           service_restarts=dict(runtime.get("service_restarts") or {}),
                           failed=runtime.get("failed"), isolation=runtime.get("isolation"),
                           zygotes=list(runtime.get("zygotes") or []),
                           zygote_restarts=int(runtime.get("zygote_restarts") or 0))


def _fields(cls: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    return {f.name: data.get(f.name) for f in dataclasses.fields(cls)}


def info_from(data: Mapping[str, Any]) -> InstanceInfo:
    fields = _fields(InstanceInfo, data)
    fields["state"] = InstanceState(fields["state"])
    return InstanceInfo(**fields)


def connection_from(data: Mapping[str, Any]) -> ConnectionState:
    fields = _fields(ConnectionState, data)
    fields["status"] = ConnectionStatus(fields["status"])
    return ConnectionState(**fields)


def event_from(data: Mapping[str, Any]) -> Event:
    return Event(seq=data["seq"], time=data["time"], kind=data["kind"],
                 data=dict(data.get("data") or {}))


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
