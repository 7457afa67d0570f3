"""The Prometheus exporter in-process: a real system under load, scraped over real HTTP and
parsed with prometheus_client's parser; and ``up --metrics-port`` without the package."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers import wait_until

from spear_actors import ConnectionConfig, InstanceConfig, SpearSystem, SystemConfig
from spear_actors.exporter import INSTALL_HINT, start_exporter

prometheus_parser = pytest.importorskip("prometheus_client.parser")
N = 30


def test_execute_histogram_by_task_over_http() -> None:
    config = SystemConfig(connection=ConnectionConfig(heartbeat_interval=0.5))
    with SpearSystem.start(config) as system:
        iid = system.create_instance("echo", InstanceConfig(
            command=[sys.executable, "-m", "spear_actors.examples.echo"]))
        system.wait_ready(iid, 10)
        for i in range(N):
            system.execute("echo", b"%d" % i, timeout=5)
        exporter = start_exporter(system, 0)
        try:
            assert exporter.host == "127.0.0.1" and exporter.port > 0  # loopback by default

            def histogram() -> dict[tuple[str, str], float] | None:
                with urllib.request.urlopen(exporter.url, timeout=5) as answer:
                    text = answer.read().decode()
                family = next(f for f in prometheus_parser.text_string_to_metric_families(text)
                              if f.name == "spear_execute_duration_seconds")
                assert all(set(s.labels) <= {"task", "le"} for s in family.samples)
                found = {(s.name.rsplit("_", 1)[1], s.labels.get("le", "")): s.value
                         for s in family.samples if s.labels["task"] == "echo"}
                return found if found.get(("count", "")) == N else None

            found = wait_until(histogram, 10, message=f"{N} executes in the histogram")
            assert found[("bucket", "+Inf")] == N
            assert found[("bucket", "0.0005")] <= found[("bucket", "0.01")] <= N
            assert 0 < found[("sum", "")] < N
        finally:
            exporter.close()


def test_metrics_port_without_prometheus_client_fails_at_once(tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "prometheus_client.py").write_text("raise ImportError('not installed here')\n")
    env = {"PYTHONPATH": f"{shim}:{Path(__file__).resolve().parents[1]}", "PATH": "/usr/bin"}
    done = subprocess.run([sys.executable, "-m", "spear_actors.cli", "up", "--metrics-port",
                           "0", "--run-dir", str(tmp_path / "run")], capture_output=True,
                          text=True, timeout=20, env=env, cwd=tmp_path, check=False)
    assert done.returncode == 2, done.stderr
    assert INSTALL_HINT in done.stderr and "--metrics-port" in done.stderr
    assert not (tmp_path / "run").exists()  # nothing was started
