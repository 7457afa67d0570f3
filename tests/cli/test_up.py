"""``spear-actors up`` end to end: a real subprocess, attached to through its control endpoint.

One test walks the whole life of a system (start, inspect, operate, SIGTERM) so the start-up
cost is paid once.
"""

from __future__ import annotations

import json
import re
import socket
import stat
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import wait_until

from spear_actors import InstanceState, attach
from spear_actors.control import NotRunning

from .support import ECHO_TOML, UpProcess, run_cli


def _gone(pid: int, created: float) -> bool:
    try:
        return psutil.Process(pid).create_time() != created
    except psutil.NoSuchProcess:
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, Any]:
    """GET /metrics over real HTTP, parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Any, name: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples
            if name is None or s.name == name}


EXPORTED = {"spear_instances": "gauge", "spear_instance_restarts": "counter",
            "spear_execute_duration_seconds": "histogram", "spear_messages": "counter",
            "spear_connections_active": "gauge", "spear_auth_failures": "counter",
            "spear_instance_memory_bytes": "gauge", "spear_instance_cpu_seconds": "counter"}
"""The parser's family names (it drops the ``_total`` of counters) and their types."""


def check_prometheus(port: int) -> None:
    def sampled() -> dict[str, Any] | None:
        families = scrape(port)
        memory = samples(families["spear_instance_memory_bytes"])
        return families if len(memory) == 2 else None

    families = wait_until(sampled, 20, message="both instances sampled")
    assert {name: f.type for name, f in families.items()} == EXPORTED
    assert samples(families["spear_instances"])[(("state", "ready"),)] == 2
    assert set(samples(families["spear_instances"])) == {
        (("state", s.value),) for s in InstanceState}  # every state, bounded
    assert samples(families["spear_connections_active"]) == {(): 2}
    assert samples(families["spear_auth_failures"], "spear_auth_failures_total") == {(): 0}
    restarts = samples(families["spear_instance_restarts"], "spear_instance_restarts_total")
    assert restarts == {(("instance", "echo-1"), ("task", "echo")): 0,
                        (("instance", "echo-2"), ("task", "echo")): 0}
    messages = samples(families["spear_messages"], "spear_messages_total")
    assert messages[(("direction", "in"), ("type", "AUTH_REQUEST"))] == 2
    assert all(v > 0 for v in samples(families["spear_instance_memory_bytes"]).values())
    assert len(samples(families["spear_instance_cpu_seconds"])) == 2


def test_up_attach_operate_and_terminate(tmp_path: Path) -> None:
    config = tmp_path / "spear.toml"
    config.write_text(ECHO_TOML)
    run_dir = tmp_path / "run"
    port = free_port()
    with UpProcess(config, run_dir, ["--log-json", "--metrics-port", str(port)]) as up:
        run_file = up.wait_run_file()
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(run_file.stat().st_mode) == 0o600
        assert set(json.loads(run_file.read_text())) >= {"endpoint", "token", "pid",
                                                        "started_at"}

        with attach(run_dir, timeout=5) as spear:
            infos = wait_until(lambda: (i := spear.instances()) and len(i) == 2 and all(
                x.state is InstanceState.READY for x in i) and i, 20, message="2 READY")
            tree = spear.tree()
            drawing = repr(tree)
            assert "SupervisorActor[echo-1]" in drawing and "InstanceActor[echo-2] READY" \
                in drawing
            assert [n["state"] for n in tree.to_dict()["instances"]] == ["ready", "ready"]
            check_prometheus(port)
            secrets = {psutil.Process(i.pid).environ()["SPEAR_SECRET"] for i in infos if i.pid}

            table = run_cli("metrics", "--run-dir", str(run_dir))
            assert table.returncode == 0, table.stderr
            assert "rss MiB" in table.stdout and "cpu %" in table.stdout
            assert "req/s" in table.stdout and "{" not in table.stdout
            raw = run_cli("metrics", "--json", "--run-dir", str(run_dir))
            data = json.loads(raw.stdout, parse_constant=pytest.fail)  # strict JSON
            assert data["connection_totals"]["active"] == 2
            assert {c["instance_id"] for c in data["connections"].values()} >= {"echo-1",
                                                                              "echo-2"}

            status = run_cli("status", "--run-dir", str(run_dir))
            assert status.returncode == 0, status.stderr
            assert re.search(r"^isolation: (cgroup v[12]|rlimit)$", status.stdout, re.M)
            assert f"isolation {tree.isolation}" in drawing
            for info in infos:
                line = next(ln for ln in status.stdout.splitlines() if ln.startswith(info.id))
                assert "ready" in line and str(info.pid) in line

            old = spear.instance("echo-1")
            spear.restart_instance("echo-1")
            new = wait_until(lambda: (i := spear.instance("echo-1")).state.is_serving
                             and i.pid != old.pid and i, 15, message="echo-1 replaced")
            assert new.pid != old.pid
            assert any(e.kind == "InstanceStarted" and e.data.get("pid") == new.pid
                       for e in spear.events(limit=200))
            procs = {i.pid: psutil.Process(i.pid).create_time()
                     for i in spear.instances() if i.pid}
            assert len(procs) == 2

        assert up.terminate() == 0, up.output
        for pid, created in procs.items():
            wait_until(lambda p=pid, c=created: _gone(p, c), 5, message=f"pid {pid} gone")
        assert not run_file.exists()
        lines = up.output.splitlines()
        records = [json.loads(line) for line in lines if line.strip()]  # every line is JSON
        assert all(list(r)[:3] == ["time", "level", "message"] for r in records)
        # compact: exactly as the tightest JSON encoding of itself, and short
        assert all(json.dumps(json.loads(line), separators=(",", ":"), ensure_ascii=False)
                   == line and len(line) < 1000 for line in lines if line.strip())
        assert all(r["time"].endswith("+00:00") and r["level"] in ("INFO", "WARNING", "DEBUG",
                                                                    "ERROR") for r in records)
        assert any(r.get("instance") == "echo-2" and "actor" in r for r in records)
        assert any(r.get("instance") == "echo-1" and r.get("stream") for r in records)
        assert any("2/2 instances ready" in r["message"] for r in records)
        assert any(f"127.0.0.1:{port}/metrics" in r["message"] for r in records)
        assert not any("record" in r or "text" in r for r in records)  # not loguru's dump
        assert secrets and not any(secret in up.output for secret in secrets)

    with pytest.raises(NotRunning, match="no spear-actors system is running"):
        attach(run_dir)
    status = run_cli("status", "--run-dir", str(run_dir))
    assert status.returncode == 1
    assert "no spear-actors system is running" in status.stderr
