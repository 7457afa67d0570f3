"""Configuration records (frozen dataclasses) with validation and a strict dict loader.

Standard library only. Every record validates itself on construction and raises
:class:`~spear_actors.errors.ConfigError` naming the field and the problem.
:func:`from_mapping` builds a record from a plain mapping (parsed TOML), refusing unknown keys
and wrong types with the dotted key path in the message.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union

from .errors import ConfigError

__all__ = [
    "ConnectionConfig",
    "InstanceConfig",
    "MonitoringConfig",
    "ResourceLimits",
    "RestartPolicy",
    "SecretValidator",
    "SystemConfig",
    "from_mapping",
]

SecretValidator = Callable[[str, str], bool]
"""Extra auth check ``(instance_id, token) -> bool`` on top of the built-in ones."""

MIB = 1 << 20


def _positive(owner: object, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{type(owner).__name__}.{name} must be a number, got {value!r}")
        if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{type(owner).__name__}.{name} must be {bound}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ConnectionConfig:
    """How the spearlet listens for instances and polices their connections."""

    host: str = "127.0.0.1"
    port: int = 0
    """0 lets the OS pick a free port (no bind-then-rebind race)."""
    transport: Literal["tcp", "ipc"] = "tcp"
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 3.0
    auth_timeout: float = 5.0
    connection_timeout: float = 300.0
    """Backstop: a connection with no traffic of any kind for this long is closed."""
    max_connections: int = 1024
    max_pending: int = 4096
    """Peers that have sent something but not yet authenticated; beyond this they are dropped."""
    max_message_size: int = 16 * MIB
    secret_validator: SecretValidator | None = field(default=None, compare=False)
    port_fallback: bool = False
    """If ``port`` is taken, try the next ports up to ``port_range_end`` instead of failing."""
    port_range_end: int | None = None
    ipc_dir: str | None = None
    """Directory for ``ipc`` endpoints (created 0700); default: a private temp dir."""
    per_instance_listeners: bool = False
    """Give every instance a ROUTER of its own (own port or ipc path) that accepts only that
    instance's auth (the seed's port isolation); the main listener then refuses them."""
    allow_remote: bool = False
    """Binding beyond loopback is refused unless this is set (and CURVE keys are given)."""
    curve_secret_key: str | None = field(default=None, repr=False)
    curve_public_key: str | None = None
    gate: Literal["none", "plain"] = "none"
    """ZeroMQ's own gate (DESIGN.md section 11). ``"plain"``: every connection must present
    its instance id and secret as ZMTP PLAIN credentials, checked by the router pump's ZAP
    handler; libzmq refuses any other peer during the handshake, so not one frame of it
    reaches Python. The AUTH_REQUEST handshake still opens the session. Instances are told
    with ``SPEAR_GATE=plain`` (InstanceClient honours it); a client written from the wire
    contract alone (section 2) needs the default, ``"none"``. Not with CURVE keys."""
    enable_monitoring: bool = True
    """The seed's switch: False and the connection service tells the monitor nothing about
    connections or their messages (no events, no message counts, no per-connection data);
    the connection totals (active, pending, opened, closed, auth failures) are still kept."""

    def __post_init__(self) -> None:
        _positive(self, "heartbeat_interval", "heartbeat_timeout", "auth_timeout",
                  "connection_timeout", "max_connections", "max_pending", "max_message_size")
        if self.transport not in ("tcp", "ipc"):
            raise ConfigError(f"ConnectionConfig.transport must be 'tcp' or 'ipc', "
                              f"got {self.transport!r}")
        if not isinstance(self.port, int) or isinstance(self.port, bool) \
                or not 0 <= self.port <= 65535:
            raise ConfigError(f"ConnectionConfig.port must be 0..65535, got {self.port!r}")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ConfigError("ConnectionConfig.heartbeat_timeout must exceed heartbeat_interval "
                              f"({self.heartbeat_timeout} <= {self.heartbeat_interval})")
        if self.port_range_end is not None and not self.port <= self.port_range_end <= 65535:
            raise ConfigError("ConnectionConfig.port_range_end must be between port and 65535")
        if self.secret_validator is not None and not callable(self.secret_validator):
            raise ConfigError("ConnectionConfig.secret_validator must be callable")
        _check_curve_keys(self.curve_secret_key, self.curve_public_key)
        if self.gate not in ("none", "plain"):
            raise ConfigError(f"ConnectionConfig.gate must be 'none' or 'plain', got "
                              f"{self.gate!r}")
        if self.gate == "plain" and self.curve_secret_key:
            raise ConfigError("ConnectionConfig.gate='plain' and CURVE keys exclude each other "
                              "(a socket has one security mechanism)")


_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_ENTRY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_Z85 = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                 ".-:+=^!/*?&<>()[]{}@%$#")


def _check_curve_keys(secret: str | None, public: str | None) -> None:
    """CURVE keys come as a pair of 40-character Z85 strings (``zmq.curve_keypair()``): the
    listener needs the secret key, its instances the public one. A half pair or a malformed
    key used to surface only at bind time (a hung start) or as instances that never connect.
    """
    if (secret is None) != (public is None):
        raise ConfigError("ConnectionConfig.curve_secret_key and curve_public_key go together "
                          "(the listener needs the secret key, instances the public key)")
    for name, key in (("curve_secret_key", secret), ("curve_public_key", public)):
        if key is not None and (not isinstance(key, str) or len(key) != 40
                                or not set(key) <= _Z85):
            raise ConfigError(f"ConnectionConfig.{name} must be a 40-character Z85 key "
                              "(as zmq.curve_keypair() makes)")


@dataclass(frozen=True, kw_only=True)
class MonitoringConfig:
    """What the MonitorActor records and how much it keeps."""

    enabled: bool = True
    """False: nothing is recorded at all (no events, counts, latencies or samples)."""
    enable_connection_tracking: bool = True
    """Connection events and ``metrics()["connections"]`` (per connection)."""
    enable_message_tracking: bool = True
    """Message counts and bytes (system-wide and per connection), message events, rates."""
    enable_performance_tracking: bool = True
    """Latencies (execute, queue/transport/handler, processing time) and psutil samples."""
    metrics_buffer_size: int = 10_000
    collection_interval: float = 1.0
    metrics_port: int | None = None
    """Serve Prometheus text exposition on this port (``spear-actors up``; None: off)."""
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        _positive(self, "metrics_buffer_size", "collection_interval")
        port = self.metrics_port
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 0 <= port < 65536):
            raise ConfigError(f"metrics_port must be a port number (0..65535), got {port!r}")


@dataclass(frozen=True, kw_only=True)
class RestartPolicy:
    """OTP-style restart policy for one instance.

    ``mode``: ``permanent`` restarts after any exit, ``transient`` only after an abnormal one
    (non-zero exit, signal, heartbeat loss, crash), ``temporary`` never.
    At most ``max_restarts`` within ``window`` seconds, else FAILED. Backoff doubles from
    ``backoff_min`` to ``backoff_max`` with +-``jitter`` (fraction), and the count resets after
    ``reset_after`` seconds of healthy running.
    """

    mode: Literal["permanent", "transient", "temporary"] = "permanent"
    max_restarts: int = 5
    window: float = 60.0
    backoff_min: float = 0.1
    backoff_max: float = 10.0
    jitter: float = 0.2
    reset_after: float = 30.0

    def __post_init__(self) -> None:
        if self.mode not in ("permanent", "transient", "temporary"):
            raise ConfigError("RestartPolicy.mode must be permanent, transient or temporary, "
                              f"got {self.mode!r}")
        _positive(self, "max_restarts", "backoff_min", "jitter", allow_zero=True)
        _positive(self, "window", "backoff_max", "reset_after")
        if self.backoff_min > self.backoff_max:
            raise ConfigError("RestartPolicy.backoff_min must not exceed backoff_max")
        if self.jitter >= 1:
            raise ConfigError("RestartPolicy.jitter is a fraction and must be < 1")

    def backoff(self, attempt: int, rand: float = 0.5) -> float:
        """Delay before restart number ``attempt`` (1-based); ``rand`` in [0, 1) gives jitter."""
        base = min(self.backoff_max, self.backoff_min * 2.0 ** max(0, attempt - 1))
        return max(0.0, base * (1 + self.jitter * (2 * rand - 1)))


@dataclass(frozen=True, kw_only=True)
class ResourceLimits:
    """What one instance may use. ``cpus``/``memory_bytes`` also count for admission.

    Enforced by the kernel (DESIGN.md section 9): in a cgroup of its own where cgroups can be
    used, ``memory_bytes`` caps resident memory, ``cpus`` is a CPU quota (0.5 = half a core),
    ``max_processes`` a pids limit and ``cpu_affinity`` a cpuset; otherwise rlimits
    (``memory_bytes`` then caps address space). ``network="none"`` runs the instance in a
    network namespace of its own with no interface up (it needs the ``ipc`` transport).
    """

    cpus: float | None = None
    memory_bytes: int | None = None
    cpu_affinity: tuple[int, ...] | None = None
    max_open_files: int | None = None
    nice: int | None = None
    max_processes: int | None = None
    """Processes and threads the instance may have at once (cgroup pids limit)."""
    network: Literal["host", "none"] = "host"

    def __post_init__(self) -> None:
        for name in ("cpus", "memory_bytes", "max_open_files", "max_processes"):
            if getattr(self, name) is not None:
                _positive(self, name)
        for name in ("memory_bytes", "max_open_files", "max_processes"):
            if not isinstance(getattr(self, name), (int, type(None))):
                raise ConfigError(f"ResourceLimits.{name} must be a whole number, "
                                  f"got {getattr(self, name)!r}")
        if self.cpus is not None and self.cpus < 0.01:
            raise ConfigError(f"ResourceLimits.cpus must be at least 0.01, got {self.cpus!r}")
        if self.network not in ("host", "none"):
            raise ConfigError("ResourceLimits.network must be 'host' or 'none', "
                              f"got {self.network!r}")
        if self.cpu_affinity is not None:
            object.__setattr__(self, "cpu_affinity", tuple(self.cpu_affinity))
            if not self.cpu_affinity or not all(
                    isinstance(c, int) and c >= 0 for c in self.cpu_affinity):
                raise ConfigError("ResourceLimits.cpu_affinity must be a non-empty list of CPU "
                                  f"numbers, got {self.cpu_affinity!r}")
        if self.nice is not None and (not isinstance(self.nice, int)
                                      or not -20 <= self.nice <= 19):
            raise ConfigError(f"ResourceLimits.nice must be -20..19, got {self.nice!r}")


@dataclass(frozen=True, kw_only=True)
class InstanceConfig:
    """How to run one instance: its command line (or handler), environment and supervision
    settings.

    Exactly one of ``command`` (an argv, spawned) and ``entry`` (``"package.module:handler"``,
    a Python handler ``(method: str, data: bytes) -> bytes`` forked from a zygote that already
    imported the instance client and ``preload``; DESIGN.md section 10)."""

    command: Sequence[str] = ()
    entry: str | None = None
    preload: Sequence[str] = ()
    """Modules the zygote of an ``entry`` instance imports once, before it forks."""
    prestart: int = 0
    """Warm pool: keep this many idle, authenticated instances of this config (and task),
    from the first ``create_instance`` with it on; ``create_instance`` claims one."""
    env: Mapping[str, str] = field(default_factory=dict)
    inherit_env: bool = False
    working_dir: str | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    startup_timeout: float = 10.0
    stop_timeout: float = 5.0
    max_concurrency: int = 1
    """Handler calls the instance runs at once."""
    prefetch: int = 8
    """Requests sent ahead beyond ``max_concurrency``; they wait inside the instance, hiding
    the round trip (like AMQP prefetch). 0 for strict one-at-a-time dispatch."""

    def __post_init__(self) -> None:
        if isinstance(self.command, str) or not isinstance(self.command, Sequence):
            raise ConfigError("InstanceConfig.command must be a list of strings (argv), "
                              f"got {self.command!r}")
        object.__setattr__(self, "command", tuple(self.command))
        if isinstance(self.preload, str) or not isinstance(self.preload, Sequence) or not all(
                isinstance(m, str) and _MODULE.fullmatch(m) for m in self.preload):
            raise ConfigError("InstanceConfig.preload must be a list of module names, "
                              f"got {self.preload!r}")
        object.__setattr__(self, "preload", tuple(self.preload))
        if self.entry is not None:
            if self.command:
                raise ConfigError("InstanceConfig: give command or entry, not both")
            if not isinstance(self.entry, str) or not _ENTRY.fullmatch(self.entry):
                raise ConfigError("InstanceConfig.entry must read 'package.module:handler', "
                                  f"got {self.entry!r}")
        elif self.preload:
            raise ConfigError("InstanceConfig.preload goes with entry (a zygote's imports)")
        elif not self.command or not all(isinstance(a, str) and a for a in self.command):
            raise ConfigError("InstanceConfig.command must be a non-empty list of non-empty "
                              "strings (or give an entry instead)")
        if not isinstance(self.env, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()):
            raise ConfigError("InstanceConfig.env must map strings to strings")
        object.__setattr__(self, "env", types.MappingProxyType(dict(self.env)))
        if not isinstance(self.restart, RestartPolicy):
            raise ConfigError("InstanceConfig.restart must be a RestartPolicy")
        _positive(self, "startup_timeout", "stop_timeout", "max_concurrency")
        _positive(self, "prefetch", allow_zero=True)
        if isinstance(self.prestart, bool) or not isinstance(self.prestart, int) \
                or self.prestart < 0:
            raise ConfigError(f"InstanceConfig.prestart must be an integer >= 0, "
                              f"got {self.prestart!r}")


@dataclass(frozen=True, kw_only=True)
class SystemConfig:
    """Everything :meth:`SpearSystem.start` needs; the defaults work with no configuration."""

    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    work_dir: str | None = None
    """Parent of the per-instance working directories; default: a private temp dir."""
    capacity_cpus: float | None = None
    """Admission capacity; default: what psutil reports for this node."""
    capacity_memory: int | None = None
    service_restart: RestartPolicy = field(default_factory=RestartPolicy)
    """Restart intensity of the service actors and instance supervisors together (DESIGN.md
    section 7): at most ``max_restarts`` within ``window`` seconds, then the system fails."""
    isolation: Literal["auto", "rlimit"] = "auto"
    """``auto``: a cgroup per instance where cgroups can be used, else rlimits (DESIGN.md
    section 9); ``rlimit``: never touch cgroups."""

    def __post_init__(self) -> None:
        if self.isolation not in ("auto", "rlimit"):
            raise ConfigError("SystemConfig.isolation must be 'auto' or 'rlimit', "
                              f"got {self.isolation!r}")
        if not isinstance(self.service_restart, RestartPolicy):
            raise ConfigError("SystemConfig.service_restart must be a RestartPolicy")
        if not isinstance(self.connection, ConnectionConfig):
            raise ConfigError("SystemConfig.connection must be a ConnectionConfig")
        if not isinstance(self.monitoring, MonitoringConfig):
            raise ConfigError("SystemConfig.monitoring must be a MonitoringConfig")


T = TypeVar("T")


def _check_value(value: Any, hint: Any, where: str) -> Any:
    """Return ``value`` converted for ``hint`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{where}: unexpected value {value!r}")
    if origin is Literal:
        if value not in typing.get_args(hint):
            allowed = ", ".join(repr(a) for a in typing.get_args(hint))
            raise ConfigError(f"{where}: must be one of {allowed}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
        return from_mapping(hint, value, where)
    if origin in (tuple, Sequence) or hint in (tuple, Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        item = (typing.get_args(hint) or (Any,))[0]
        return tuple(_check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is Mapping or hint is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
        key_t, val_t = typing.get_args(hint) or (Any, Any)
        return {_check_value(k, key_t, where): _check_value(v, val_t, f"{where}.{k}")
                for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} "
                              f"{value!r}")
        return float(value)
    if isinstance(hint, type):
        if isinstance(value, bool) and hint is int:
            raise ConfigError(f"{where}: expected an integer, got a boolean")
        if not isinstance(value, hint):
            raise ConfigError(f"{where}: expected {hint.__name__}, got "
                              f"{type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{where}: cannot be set from a file")


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and wrong types.

    ``where`` is the dotted path used in error messages (e.g. ``tasks[0].restart``).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ConfigError(f"{path}: unknown key (known: {', '.join(sorted(known))})")
        kwargs[key] = _check_value(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None
