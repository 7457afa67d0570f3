"""``spear-actors up --demo`` needs no configuration, tells its story and exits 0."""

from __future__ import annotations

import re
import time

from .support import run_cli


def test_demo_runs_clean() -> None:
    started = time.monotonic()
    result = run_cli("up", "--demo", timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "5000 requests answered" in out and "every answer checked" in out
    assert re.search(r"killed echo-2 \(pid \d+\) with SIGKILL: its supervisor restarted it as "
                     r"pid \d+, READY again \d+ ms after the kill \(restarts: 1\)", out), out
    assert re.search(r"crashed the ConnectionActor \(a drill\): the root restarted it and all 3 "
                     r"instances authenticated again \d+ ms later, same pids", out), out
    assert "└── RuntimeActor [alive]" in out
    assert "ConnectionActor [alive] restarts 1" in out
    assert "SupervisorActor[echo-2] [alive] permanent, restarts 1/5" in out
    assert out.count("InstanceActor[") == 3 and out.count(" READY pid ") == 3
    for label in ("requests", "throughput", "latency", "restarts", "connections"):
        assert re.search(rf"^  {label} +\S", out, re.MULTILINE), label
    assert re.search(r"^  restarts +1$", out, re.MULTILINE)
    assert "all instances stopped" in out
    assert "burst [" in result.stderr and "5000/5000" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 45, f"the demo took {elapsed:.1f} s"
