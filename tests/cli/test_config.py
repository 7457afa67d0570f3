"""spear.toml loading: good files give the right records; bad ones a precise message.

Unit tests run :func:`spear_actors.tomlconfig.parse` in-process; the CLI tests check that
``up`` refuses a bad file with exit code 2, naming file and key, before anything starts.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from spear_actors import ConfigError, RestartPolicy
from spear_actors.tomlconfig import load, parse, parse_size

from .support import run_cli

_TASK = "[[tasks]]\nname = 'a'\ncommand = ['x']\n"

FULL = """
[system]
capacity_cpus = 2
capacity_memory = "1GiB"
work_dir = "work"

[connection]
port = 0
heartbeat_interval = 0.5
heartbeat_timeout = 2

[monitoring]
metrics_buffer_size = 500

[[tasks]]
name = "echo"
command = ["{python}", "-m", "spear_actors.examples.echo"]
instances = 3
env = { A = "1" }
prefetch = 64
working_dir = "."
restart = { mode = "transient", max_restarts = 2 }
resources = { memory_bytes = "256MiB", nice = 5, cpu_affinity = [0] }

[[tasks]]
name = "other"
command = ["./bin/tool", "--flag"]
"""


def test_full_file(tmp_path: Path) -> None:
    spec = parse(FULL, "spear.toml", base_dir=str(tmp_path))
    assert spec.system.capacity_cpus == 2.0 and spec.system.capacity_memory == 1 << 30
    assert spec.system.work_dir == str(tmp_path / "work")
    assert spec.system.connection.heartbeat_interval == 0.5
    assert spec.system.connection.heartbeat_timeout == 2.0
    assert spec.system.monitoring.metrics_buffer_size == 500
    echo, other = spec.tasks
    assert (echo.name, echo.instances, other.instances) == ("echo", 3, 1)
    assert echo.config.command[0] == sys.executable
    assert dict(echo.config.env) == {"A": "1"} and echo.config.prefetch == 64
    assert echo.config.working_dir == str(tmp_path)
    assert echo.config.restart == RestartPolicy(mode="transient", max_restarts=2)
    assert echo.limits.memory_bytes == 256 << 20 and echo.limits.cpu_affinity == (0,)
    assert other.config.command == (str(tmp_path / "bin" / "tool"), "--flag")
    assert spec.instance_count == 4


def test_service_restart_budget() -> None:
    spec = parse("[system.service_restart]\nmax_restarts = 2\nwindow = 10.0\n", "spear.toml")
    assert (spec.system.service_restart.max_restarts,
            spec.system.service_restart.window) == (2, 10.0)


def test_empty_file_gives_defaults() -> None:
    spec = parse("", "spear.toml")
    assert spec.tasks == () and spec.system.connection.port == 0


@pytest.mark.parametrize(("text", "message"), [
    ("[[tasks]\nname = 'x'", r"spear\.toml: invalid TOML: .*line 1, column"),
    ("bogus = 1", r"spear\.toml: bogus: unknown key"),
    ("[system]\nwork_dri = 'x'", r"spear\.toml: system\.work_dri: unknown key"),
    ("[connection]\nprot = 1", r"spear\.toml: connection\.prot: unknown key"),
    ("[connection]\nport = 'x'", r"spear\.toml: connection\.port: expected int, got str 'x'"),
    ("[connection]\nheartbeat_interval = 5.0",
     r"spear\.toml: connection: .*heartbeat_timeout must exceed heartbeat_interval"),
    ("[[tasks]]\nname = 'a'\ncommand = ['x']\nrestart = { max_restarts = 'x' }",
     r"spear\.toml: tasks\[0\]\.restart\.max_restarts: expected int, got str 'x'"),
    ("[[tasks]]\nname = 'a'", r"spear\.toml: tasks\[0\]\.command: missing"),
    ("[[tasks]]\ncommand = ['x']", r"spear\.toml: tasks\[0\]\.name: missing"),
    ("[[tasks]]\nname = 'a b'\ncommand = ['x']", r"tasks\[0\]\.name: expected letters"),
    ("[[tasks]]\nname = 'a'\ncommand = 'x'", r"tasks\[0\]\.command: expected a list, got str"),
    ("[[tasks]]\nname = 'a'\ncommand = []", r"tasks\[0\]: .*command must be a non-empty"),
    ("[[tasks]]\nname = 'a'\ncommand = ['x']\ninstances = -1",
     r"tasks\[0\]\.instances: expected an integer >= 0"),
    ("[[tasks]]\nname = 'a'\ncommand = ['x']\ncomand = 1", r"tasks\[0\]\.comand: unknown key"),
    ("[[tasks]]\nname = 'a'\ncommand = ['x']\nresources = { memory_bytes = 'lots' }",
     r"tasks\[0\]\.resources\.memory_bytes: expected a size"),
    ("[[tasks]]\nname = 'a'\ncommand = ['x']\nenv = { A = 1 }",
     r"tasks\[0\]\.env\.A: expected str, got int 1"),
    ("[[tasks]]\nname = 'a'\ncommand = ['x']\n[[tasks]]\nname = 'a'\ncommand = ['y']",
     r"tasks\[1\]\.name: task 'a' is defined twice"),
    ("tasks = 3", r"tasks: expected an array of tables"),
    ("[system.service_restart]\nmax_restarts = 'x'",
     r"spear\.toml: system\.service_restart\.max_restarts: expected int, got str 'x'"),
    ("[system]\nservice_restart = 3", r"spear\.toml: system\.service_restart: expected a"),
    ("[system]\nisolation = 'docker'", r"spear\.toml: system\.isolation: must be one of"),
    (f"{_TASK}resources = {{ memory = 'lots' }}",
     r"spear\.toml: tasks\[0\]\.resources\.memory: expected a size .* 'lots'"),
    (f"{_TASK}resources = {{ memory = '64MiB', memory_bytes = 1 }}",
     r"spear\.toml: tasks\[0\]\.resources: give memory or memory_bytes, not both"),
    (f"{_TASK}resources = {{ cpus = 0 }}",
     r"spear\.toml: tasks\[0\]\.resources: ResourceLimits\.cpus must be > 0, got 0"),
    (f"{_TASK}resources = {{ cpus = 'half' }}",
     r"spear\.toml: tasks\[0\]\.resources\.cpus: .*'half'"),
    (f"{_TASK}resources = {{ max_processes = -4 }}",
     r"spear\.toml: tasks\[0\]\.resources: ResourceLimits\.max_processes must be > 0"),
    (f"{_TASK}resources = {{ max_processes = 2.5 }}",
     r"spear\.toml: tasks\[0\]\.resources\.max_processes: expected int"),
    (f"{_TASK}resources = {{ network = 'bridge' }}",
     r"spear\.toml: tasks\[0\]\.resources\.network: must be one of 'host', 'none', "
     r"got 'bridge'"),
])
def test_bad_files(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(text, "spear.toml")


def test_isolation_resources_with_units() -> None:
    spec = parse(_TASK + "[tasks.resources]\nmemory = '64MiB'\ncpus = 0.5\n"
                 "max_processes = 32\nnetwork = 'none'\n", "spear.toml")
    limits = spec.tasks[0].limits
    assert (limits.memory_bytes, limits.cpus, limits.max_processes, limits.network) == (
        64 << 20, 0.5, 32, "none")
    assert parse("[system]\nisolation = 'rlimit'", "s.toml").system.isolation == "rlimit"


@pytest.mark.parametrize(("value", "expected"), [
    (512, 512), ("512", 512), ("4k", 4000), ("4KiB", 4096), ("1.5 GB", 1_500_000_000),
    ("64MiB", 64 << 20), ("2g", 2 * 10**9)])
def test_sizes(value: object, expected: int) -> None:
    assert parse_size(value, "x") == expected


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        load(tmp_path / "nope.toml")


@pytest.mark.parametrize(("text", "message"), [
    ("[[tasks]\n", r"bad\.toml: invalid TOML: .*\(at line 1, column \d+\)"),
    ("[[tasks]]\nname = 'a'\ncommand = ['x']\ntimeout = 3", r"bad\.toml: tasks\[0\]\.timeout: "
                                                            r"unknown key"),
    ("[[tasks]]\nname = 'a'\ncommand = ['x']\nrestart = { max_restarts = 'x' }",
     r"bad\.toml: tasks\[0\]\.restart\.max_restarts: expected int, got str 'x'"),
    ("[[tasks]]\nname = 'a'\n", r"bad\.toml: tasks\[0\]\.command: missing"),
    (None, r"bad\.toml: no such file"),
], ids=["syntax", "unknown-key", "wrong-type", "missing-command", "missing-file"])
def test_up_refuses_bad_config(tmp_path: Path, text: str | None, message: str) -> None:
    config = tmp_path / "bad.toml"
    if text is not None:
        config.write_text(text)
    run_dir = tmp_path / "run"
    result = run_cli("up", "--config", str(config), "--run-dir", str(run_dir))
    assert result.returncode == 2, result.stderr
    assert re.search(r"spear-actors: config error: .*" + message, result.stderr), result.stderr
    assert not run_dir.exists()  # refused before anything started


def test_monitoring_metrics_port_and_flags_from_toml() -> None:
    spec = parse("[monitoring]\nmetrics_port = 9464\nenable_message_tracking = false\n"
                 "[connection]\nenable_monitoring = false\n")
    assert spec.system.monitoring.metrics_port == 9464
    assert spec.system.monitoring.metrics_host == "127.0.0.1"
    assert not spec.system.monitoring.enable_message_tracking
    assert not spec.system.connection.enable_monitoring
    for bad in ("70000", '"9464"', "true"):
        with pytest.raises(ConfigError, match="metrics_port"):
            parse(f"[monitoring]\nmetrics_port = {bad}\n")


@pytest.mark.parametrize(("text", "message"), [
    ('[control]\nendpoint = "tcp://10.1.2.3:7400"', r"control\.endpoint: .* beyond loopback"),
    ('[control]\nendpoint = "tcp://*:7400"', r"control\.endpoint: .* beyond loopback"),
    ('[control]\nendpoint = "ipc:///tmp/x"', r"control\.endpoint: expected"),
    ('[control]\nendpoint = "tcp://0.0.0.0:1"\nauthorized_keys_file = "keys"',
     r"control\.server_secret_key_file: missing"),
    ('[control]\nendpoint = "tcp://0.0.0.0:1"\nserver_secret_key_file = "nope"\n'
     'authorized_keys_file = "nope"', r"control\.server_secret_key_file: no such file"),
    ('[control]\nendpoint = "tcp://127.0.0.1:1"\nport = 3', r"control\.port: unknown key"),
], ids=["remote-no-keys", "wildcard-no-keys", "not-tcp", "one-file", "missing-file",
        "unknown-key"])
def test_control_table_refused(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "keys").write_text("")
    with pytest.raises(ConfigError, match=message):
        parse(text, "s.toml", base_dir=str(tmp_path))


def test_control_keys_are_checked_when_loaded(tmp_path: Path) -> None:
    import zmq.auth

    from spear_actors.control import RemoteAccess

    public_file, _ = zmq.auth.create_certificates(tmp_path, "server")
    (tmp_path / "ok").write_text("# ops\n" + zmq.auth.load_certificate(public_file)[0].decode())
    (tmp_path / "bad").write_text("not a key\n")
    base = '[control]\nendpoint = "tcp://10.213.0.1:7400"\nserver_secret_key_file = "{}"\n' \
           'authorized_keys_file = "{}"\n'
    spec = parse(base.format("server.key_secret", "ok"), "s.toml", base_dir=str(tmp_path))
    assert spec.control is not None and spec.control.curve and not spec.control.loopback
    access = RemoteAccess.load(spec.control)
    assert len(access.authorized) == 1 and "secret_key" not in repr(access)
    with pytest.raises(ConfigError, match=r"authorized_keys_file: line 1"):
        RemoteAccess.load(parse(base.format("server.key_secret", "bad"), "s.toml",
                                base_dir=str(tmp_path)).control)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"server_secret_key_file: .* no secret key"):
        RemoteAccess.load(parse(base.format("server.key", "ok"), "s.toml",
                                base_dir=str(tmp_path)).control)  # type: ignore[arg-type]
    local = parse('[control]\nendpoint = "tcp://127.0.0.1:7400"\n').control
    assert local is not None and local.loopback and not local.curve
