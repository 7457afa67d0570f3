"""``spear-actors up --demo`` needs no configuration, tells its story and exits 0; with
``--metrics-port`` a Prometheus scrape shows the demo's load while it runs."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from .support import CLI
from .test_up import free_port


def executes_scraped(port: int) -> float:
    """spear_execute_duration_seconds_count for task echo (0 if not served yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0.0
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "spear_execute_duration_seconds_count"
               and s.labels.get("task") == "echo")


def test_demo_runs_clean(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    with open(tmp_path / "out", "w") as out_file, open(tmp_path / "err", "w") as err_file:
        proc = subprocess.Popen([*CLI, "up", "--demo", "--metrics-port", str(port)],
                                stdout=out_file, stderr=err_file, stdin=subprocess.DEVNULL)
        try:
            seen = 0.0
            while proc.poll() is None and seen < 5000 and time.monotonic() - started < 60:
                seen = executes_scraped(port)  # while the demo load runs
                time.sleep(0.05)
            returncode = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    elapsed = time.monotonic() - started
    result = subprocess.CompletedProcess(proc.args, returncode, (tmp_path / "out").read_text(),
                                         (tmp_path / "err").read_text())
    assert result.returncode == 0, result.stdout + result.stderr
    assert seen >= 5000, f"the scrape saw {seen} executes"
    out = result.stdout
    assert f"Prometheus metrics at http://127.0.0.1:{port}/metrics" in out
    assert re.search(r"started 3 echo handler instances \(forked from a zygote\)", out), out
    assert "5000 requests answered" in out and "every answer checked" in out
    assert re.search(r"killed echo-2 \(pid \d+\) with SIGKILL: its supervisor restarted it as "
                     r"pid \d+, READY again \d+ ms after the kill \(restarts: 1\)", out), out
    assert re.search(r"crashed the ConnectionActor \(a drill\): the root restarted it and all 3 "
                     r"instances authenticated again \d+ ms later, same pids", out), out
    assert "└── RuntimeActor [alive]" in out
    assert "ConnectionActor [alive] restarts 1" in out
    assert "SupervisorActor[echo-2] [alive] permanent, restarts 1 (limit 5 in 60 s)" in out
    assert out.count("InstanceActor[") == 3 and out.count(" READY pid ") == 3
    for label in ("requests", "throughput", "latency", "restarts", "connections"):
        assert re.search(rf"^  {label} +\S", out, re.MULTILINE), label
    assert re.search(r"^  restarts +1$", out, re.MULTILINE)
    assert "all instances stopped" in out
    assert "burst [" in result.stderr and "5000/5000" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 45, f"the demo took {elapsed:.1f} s"
