"""spear_actors: the Spear node agent as a Pykka actor system.

Public names are loaded lazily (module ``__getattr__``) so that ``import spear_actors.client``
and ``import spear_actors.protocol`` pull in no pykka, psutil or loguru: instance start time
matters.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # configs
    "SystemConfig": "config",
    "ConnectionConfig": "config",
    "MonitoringConfig": "config",
    "InstanceConfig": "config",
    "RestartPolicy": "config",
    "ResourceLimits": "config",
    # records
    "InstanceState": "records",
    "InstanceInfo": "records",
    "Event": "records",
    "ConnectionState": "records",
    # errors
    "SpearError": "errors",
    "ConfigError": "errors",
    "ProtocolError": "errors",
    "LocalProtocolError": "errors",
    "RemoteProtocolError": "errors",
    "AuthenticationError": "errors",
    "TransportError": "errors",
    "SpawnError": "errors",
    "InsufficientResources": "errors",
    "InstanceFailed": "errors",
    "ExecutionError": "errors",
    "NoInstanceAvailable": "errors",
    "TimeoutError": "errors",
    "SystemFailed": "errors",
    # facade and tools
    "SpearSystem": "system",
    "SupervisionTree": "inspect",
    "InstanceClient": "client",
    "attach": "control",
}

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "ConnectionConfig",
    "ConnectionState",
    "Event",
    "ExecutionError",
    "InstanceClient",
    "InstanceConfig",
    "InstanceFailed",
    "InstanceInfo",
    "InstanceState",
    "InsufficientResources",
    "LocalProtocolError",
    "MonitoringConfig",
    "NoInstanceAvailable",
    "ProtocolError",
    "RemoteProtocolError",
    "ResourceLimits",
    "RestartPolicy",
    "SpawnError",
    "SpearError",
    "SpearSystem",
    "SupervisionTree",
    "SystemConfig",
    "SystemFailed",
    "TimeoutError",
    "TransportError",
    "__version__",
    "attach",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'spear_actors' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
