"""Read a ``spear.toml`` file into a :class:`SystemConfig` and the tasks to launch.

Standard library only (``tomllib``, or ``tomli`` on Python 3.10); runs in the caller's thread.
Every error is a :class:`~spear_actors.errors.ConfigError` whose message starts with the file
name and names the dotted key, e.g. ``spear.toml: tasks[0].restart.max_restarts: expected int,
got str 'x'``, so the CLI can refuse a bad file before anything starts.

Layout (all tables optional; see the commented ``spear.toml`` at the repository root)::

    [system]      work_dir, capacity_cpus, capacity_memory, isolation, [system.service_restart]
    [connection]  ConnectionConfig fields
    [monitoring]  MonitoringConfig fields
    [control]     endpoint, server_secret_key_file, authorized_keys_file (remote control:
                  beyond loopback only with both key files, i.e. CURVE)
    [[tasks]]     name, command (or entry = "pkg.module:handler" with preload = [...]),
                  instances, resources = {ResourceLimits fields}, and the InstanceConfig
                  fields (env, prestart, restart = {RestartPolicy fields}, ...)

Conveniences: sizes (``capacity_memory``, ``resources.memory_bytes`` or its short spelling
``resources.memory``) may be strings such as
``"512MiB"``; relative ``work_dir``/``working_dir`` and a relative ``command[0]`` containing a
``/`` are taken relative to the file's directory; a ``command`` element ``"{python}"`` stands
for the interpreter running spear-actors (so instances get its packages).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import (
    ConnectionConfig,
    InstanceConfig,
    MonitoringConfig,
    ResourceLimits,
    RestartPolicy,
    SystemConfig,
    from_mapping,
)
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["PYTHON_PLACEHOLDER", "ControlSettings", "SpearFile", "TaskSpec", "command_from",
           "load", "parse", "parse_size", "path_from"]

PYTHON_PLACEHOLDER = "{python}"
_TOP_KEYS = ("connection", "control", "monitoring", "system", "tasks")
_CONTROL_KEYS = ("authorized_keys_file", "endpoint", "server_secret_key_file")
_ENDPOINT = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.*-]+):(\d{1,5})")
_LOOPBACK = ("127.", "localhost", "[::1]")
_SYSTEM_KEYS = ("capacity_cpus", "capacity_memory", "isolation", "service_restart", "work_dir")
_TASK_KEYS = ("instances", "name", "resources")
_INSTANCE_KEYS = tuple(f.name for f in dataclasses.fields(InstanceConfig) if f.init)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}


@dataclass(frozen=True)
class TaskSpec:
    """One ``[[tasks]]`` entry: launch ``instances`` copies of ``config`` under task ``name``."""

    name: str
    instances: int
    config: InstanceConfig
    limits: ResourceLimits


@dataclass(frozen=True)
class ControlSettings:
    """``[control]``: where the control endpoint binds. Beyond loopback only with CURVE:
    ``server_secret_key_file`` (a ``zmq.auth.create_certificates`` secret certificate) and
    ``authorized_keys_file`` (one Z85 client public key per line); paths are absolute."""

    endpoint: str
    server_secret_key_file: str | None = None
    authorized_keys_file: str | None = None

    @property
    def curve(self) -> bool:
        return self.server_secret_key_file is not None

    @property
    def host(self) -> str:
        return self.endpoint[len("tcp://"):].rsplit(":", 1)[0]

    @property
    def loopback(self) -> bool:
        return self.host.startswith(_LOOPBACK)


@dataclass(frozen=True)
class SpearFile:
    """A parsed configuration file."""

    system: SystemConfig
    tasks: tuple[TaskSpec, ...]
    source: str
    control: ControlSettings | None = None

    @property
    def instance_count(self) -> int:
        return sum(task.instances for task in self.tasks)


def load(path: str | os.PathLike[str]) -> SpearFile:
    """Read and check ``path``; relative paths inside are taken from its directory."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, not a TOML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from None
    return parse(text, source, base_dir=os.path.dirname(os.path.abspath(source)))


def parse(text: str, source: str = "<string>", base_dir: str | None = None) -> SpearFile:
    """Parse TOML ``text``; ``source`` prefixes every error message."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    try:
        return _build(data, source, base_dir or os.getcwd())
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def parse_size(value: object, where: str) -> int:
    """``512``, ``"512"``, ``"64MiB"``, ``"1.5 GB"`` -> bytes (KiB/MiB/GiB are powers of 2)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a size, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if match:
            unit = (match.group(2) or "").lower()
            unit = unit[:-1] if unit.endswith("b") and unit != "b" else unit
            return int(float(match.group(1)) * _UNITS[unit])
    raise ConfigError(f"{where}: expected a size in bytes (an integer, or a string such as "
                      f"'512MiB'), got {type(value).__name__} {value!r}")


def _table(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a table, got {type(value).__name__}")
    return dict(value)


def _unknown(data: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in known:
            path = f"{where}.{key}" if where else key
            raise ConfigError(f"{path}: unknown key (known: {', '.join(known)})")


def _build(data: dict[str, Any], source: str, base_dir: str) -> SpearFile:
    _unknown(data, _TOP_KEYS, "")
    system_table = _table(data, "system")
    _unknown(system_table, _SYSTEM_KEYS, "system")
    if "capacity_memory" in system_table:
        system_table["capacity_memory"] = parse_size(system_table["capacity_memory"],
                                                     "system.capacity_memory")
    if isinstance(system_table.get("work_dir"), str):
        system_table["work_dir"] = path_from(base_dir, system_table["work_dir"])
    restart_table = system_table.pop("service_restart", None)
    system = from_mapping(SystemConfig, system_table, "system")
    if restart_table is not None:
        if not isinstance(restart_table, dict):
            raise ConfigError("system.service_restart: expected a table")
        system = replace(system, service_restart=from_mapping(
            RestartPolicy, restart_table, "system.service_restart"))
    system = replace(
        system,
        connection=from_mapping(ConnectionConfig, _table(data, "connection"), "connection"),
        monitoring=from_mapping(MonitoringConfig, _table(data, "monitoring"), "monitoring"))
    tasks_value = data.get("tasks", [])
    if not isinstance(tasks_value, list):
        raise ConfigError("tasks: expected an array of tables ([[tasks]]), got "
                          f"{type(tasks_value).__name__}")
    tasks: list[TaskSpec] = []
    for i, entry in enumerate(tasks_value):
        task = _task(entry, f"tasks[{i}]", base_dir)
        if any(t.name == task.name for t in tasks):
            raise ConfigError(f"tasks[{i}].name: task {task.name!r} is defined twice")
        tasks.append(task)
    control = _control(data["control"], base_dir) if "control" in data else None
    return SpearFile(system=system, tasks=tuple(tasks), source=source, control=control)


def _control(value: object, base_dir: str) -> ControlSettings:
    if not isinstance(value, Mapping):
        raise ConfigError(f"control: expected a table, got {type(value).__name__}")
    table = dict(value)
    _unknown(table, _CONTROL_KEYS, "control")
    endpoint = table.get("endpoint")
    if not isinstance(endpoint, str) or not _ENDPOINT.fullmatch(endpoint):
        raise ConfigError(f"control.endpoint: expected \"tcp://ADDRESS:PORT\", got {endpoint!r}")
    files: dict[str, str | None] = {}
    for key in ("server_secret_key_file", "authorized_keys_file"):
        path = table.get(key)
        if path is not None and not isinstance(path, str):
            raise ConfigError(f"control.{key}: expected a path, got {type(path).__name__}")
        files[key] = path_from(base_dir, path) if path else None
        if files[key] is not None and not os.path.isfile(str(files[key])):
            raise ConfigError(f"control.{key}: no such file {files[key]}")
    settings = ControlSettings(endpoint, files["server_secret_key_file"],
                               files["authorized_keys_file"])
    given = [k for k, v in files.items() if v is not None]
    if len(given) == 1:
        missing = next(k for k, v in files.items() if v is None)
        raise ConfigError(f"control.{missing}: missing (CURVE needs both "
                          "server_secret_key_file and authorized_keys_file)")
    if not given and not settings.loopback:
        raise ConfigError(f"control.endpoint: {endpoint} is beyond loopback: give "
                          "server_secret_key_file and authorized_keys_file (CURVE), or bind "
                          "127.0.0.1")
    return settings


def _task(entry: object, where: str, base_dir: str) -> TaskSpec:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a table, got {type(entry).__name__}")
    table = dict(entry)
    _unknown(table, tuple(sorted({*_INSTANCE_KEYS, *_TASK_KEYS})), where)
    name = table.pop("name", None)
    if name is None:
        raise ConfigError(f"{where}.name: missing (the task id, e.g. name = \"echo\")")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}.name: expected letters, digits, '_', '.' or '-' "
                          f"(at most 63), got {name!r}")
    count = table.pop("instances", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"{where}.instances: expected an integer >= 0, got {count!r}")
    resources = table.pop("resources", {})
    if not isinstance(resources, Mapping):
        raise ConfigError(f"{where}.resources: expected a table, got "
                          f"{type(resources).__name__}")
    resources = dict(resources)
    if "memory" in resources:  # the short spelling of memory_bytes
        if "memory_bytes" in resources:
            raise ConfigError(f"{where}.resources: give memory or memory_bytes, not both")
        resources["memory_bytes"] = parse_size(resources.pop("memory"),
                                               f"{where}.resources.memory")
    elif "memory_bytes" in resources:
        resources["memory_bytes"] = parse_size(resources["memory_bytes"],
                                               f"{where}.resources.memory_bytes")
    limits = from_mapping(ResourceLimits, resources, f"{where}.resources")
    if "command" not in table and "entry" not in table:
        raise ConfigError(f"{where}.command: missing (the instance's argv as a list of "
                          "strings, e.g. command = [\"{python}\", \"my_instance.py\"], "
                          "or entry = \"package.module:handler\")")
    command = table.get("command")
    if isinstance(command, list) and command and all(isinstance(a, str) for a in command):
        table["command"] = command_from(command, base_dir)
    if isinstance(table.get("working_dir"), str):
        table["working_dir"] = path_from(base_dir, table["working_dir"])
    config = from_mapping(InstanceConfig, table, where)
    return TaskSpec(name=name, instances=count, config=config, limits=limits)


def command_from(command: list[str], base_dir: str) -> list[str]:
    """``command`` with ``{python}`` replaced and a relative ``command[0]`` containing a
    ``/`` taken from ``base_dir`` (a bare name is looked up on PATH when it starts)."""
    argv = [sys.executable if arg == PYTHON_PLACEHOLDER else arg for arg in command]
    if "/" in argv[0] and not os.path.isabs(argv[0]):
        argv[0] = path_from(base_dir, argv[0])
    return argv


def path_from(base_dir: str, path: str) -> str:
    """``path`` (``~`` expanded) taken from ``base_dir`` unless absolute."""
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))
