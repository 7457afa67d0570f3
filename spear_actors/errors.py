"""The error hierarchy: everything the library raises derives from :class:`SpearError`.

Standard library only, so the sans-IO protocol and the instance client can import it cheaply.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "ExecutionError",
    "InstanceFailed",
    "InsufficientResources",
    "LocalProtocolError",
    "NoInstanceAvailable",
    "ProtocolError",
    "RemoteProtocolError",
    "SpawnError",
    "SpearError",
    "SystemFailed",
    "TimeoutError",
    "TransportError",
]

_builtin_timeout = TimeoutError


class SpearError(Exception):
    """Root of every error spear_actors raises."""


class ConfigError(SpearError, ValueError):
    """A configuration value (Python, TOML or environment) is missing or invalid."""


class ProtocolError(SpearError):
    """A wire-protocol rule was broken.

    ``code`` is the contract's ERROR code (``bad_message``, ``unsupported_version``,
    ``too_large``, ...) to send back or count.
    """

    def __init__(self, message: str, code: str = "bad_message") -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(ProtocolError):
    """We tried to build or send something the protocol does not allow (our bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow (their fault)."""


class AuthenticationError(SpearError):
    """The handshake was refused; carries the server's (generic) message."""


class TransportError(SpearError):
    """A socket could not be bound, connected or used."""


class SpawnError(SpearError):
    """An instance process could not be started (missing or non-executable binary, ...)."""


class InsufficientResources(SpearError):
    """Admission refused: the node does not have the CPUs or memory asked for."""


class InstanceFailed(SpearError):
    """An instance died or was given up on while work depended on it."""

    def __init__(self, message: str, instance_id: str | None = None) -> None:
        super().__init__(message)
        self.instance_id = instance_id


class ExecutionError(SpearError):
    """The instance's handler raised; ``message`` is what it reported."""

    def __init__(self, message: str, instance_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.instance_id = instance_id


class NoInstanceAvailable(SpearError):
    """No instance can take the request (none READY, or the task's queue is full)."""


class TimeoutError(SpearError, _builtin_timeout):
    """A bounded wait ran out. Also a builtin ``TimeoutError``."""


class SystemFailed(SpearError):
    """The spearlet gave up on itself: a service actor failed more often than
    ``SystemConfig.service_restart`` allows (DESIGN.md section 7). Every instance has been
    stopped; every later call on the system raises this."""
