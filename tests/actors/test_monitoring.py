"""What the system reports: events, metrics, connections and the supervision tree; and that
no secret ever reaches any of them, nor the log; and that shutdown leaves nothing behind."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import psutil
import pykka
import pytest
from helpers import wait_until

from spear_actors import (
    AuthenticationError,
    InstanceClient,
    InstanceState,
    MonitoringConfig,
    SpearSystem,
)
from spear_actors.records import ConnectionStatus

from .support import WAIT, echo, events_of, wait_info

N = 40


def restart_by_kill(system: SpearSystem, iid: str) -> Any:
    old = system.instance(iid)
    assert old.pid is not None
    os.kill(old.pid, signal.SIGKILL)
    return wait_info(system, iid, lambda i: i.state is InstanceState.READY
                     and i.pid not in (None, old.pid), what="the restarted instance")


def test_events_metrics_connections_and_tree_reflect_what_happened(
        make_system: Callable[..., SpearSystem]) -> None:
    system = make_system(monitoring=MonitoringConfig(collection_interval=0.2))
    a, b = (system.create_instance("echo", echo()) for _ in range(2))
    for iid in (a, b):
        system.wait_ready(iid, WAIT)
        for i in range(N):
            assert system.execute(iid, b"%d" % i, timeout=5) == b"%d" % i
    info_a = restart_by_kill(system, a)
    info_b = system.instance(b)
    assert system.execute(a, b"again", timeout=5) == b"again"

    # -- metrics (the monitor is told asynchronously: wait for it to catch up)
    def caught_up() -> dict[str, Any] | None:
        m = system.metrics()
        msgs = m["messages"]
        ok = (m["restarts"] == 1 and m["execute_latency"]["count"] >= 2 * N + 1
              and msgs["out"].get("EXECUTE_REQUEST", {}).get("count", 0) >= 2 * N + 1
              and msgs["in"].get("EXECUTE_RESPONSE", {}).get("count", 0) >= 2 * N + 1
              and msgs["in"].get("AUTH_REQUEST", {}).get("count", 0) == 3
              and msgs["in"].get("HEARTBEAT", {}).get("count", 0) >= 1
              and m["connection_totals"]["active"] == 2
              and m["connection_totals"]["total_opened"] >= 3
              and m["connection_totals"]["total_closed"] >= 1
              and all("rss" in m["instances"].get(i, {}) for i in (a, b)))  # sampled
        return m if ok else None

    m = wait_until(caught_up, WAIT, message="metrics to reflect the run")
    assert m is not None
    msgs = m["messages"]
    assert msgs["out"]["AUTH_RESPONSE"]["count"] == 3
    assert msgs["out"]["HEARTBEAT"]["count"] >= 1  # the server echoes heartbeats
    assert msgs["out"]["EXECUTE_REQUEST"]["bytes"] > 0
    assert msgs["total"]["in_count"] == sum(v["count"] for v in msgs["in"].values())
    assert m["connection_totals"]["pending"] == 0
    assert m["auth_failures"] == 0
    latency = m["execute_latency"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"] * 1.02
    assert set(m["throughput"]) >= {"messages_in_per_s", "messages_out_per_s", "executes_per_s"}
    for iid, pid in ((a, info_a.pid), (b, info_b.pid)):
        sample = m["instances"][iid]
        assert sample["rss"] > 0 and sample["num_fds"] > 0
        assert sample["rss"] <= psutil.Process(pid).memory_info().rss * 4

    # -- events: increasing seq, the lifecycle of both instances in order
    events = system.events(limit=None)
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    kinds = [e.kind for e in events_of(system, a)
             if e.kind.startswith("Instance")]
    assert kinds == ["InstanceCreated", "InstanceStarted", "InstanceReady", "InstanceExited",
                     "InstanceRestarting", "InstanceStarted", "InstanceReady"]
    assert [e.kind for e in events_of(system, b) if e.kind.startswith("Instance")] == [
        "InstanceCreated", "InstanceStarted", "InstanceReady"]
    assert len(events_of(system, kinds={"Authenticated"})) == 3
    assert events_of(system, kinds={"Connected"}) and events_of(system, kinds={"Disconnected"})
    assert events_of(system, kinds={"MessageReceived"})
    assert events_of(system, kinds={"MessageSent"})
    last5 = system.events(limit=5)
    assert [e.seq for e in last5] == seqs[-5:]
    assert [e.seq for e in system.events(limit=None, since_seq=seqs[-3])] == seqs[-2:]

    # -- connections: one live, authenticated connection per instance, Unix times
    conns = {c.instance_id: c for c in system.connections()}
    assert set(conns) == {a, b}
    now = time.time()
    for iid, info in ((a, info_a), (b, info_b)):
        c = conns[iid]
        assert c.authenticated and c.status is ConnectionStatus.ACTIVE
        assert c.connection_id == info.connection_id and c.session_id == info.session_id
        assert now - 60 < c.connected_at <= c.last_activity <= now + 1

    # -- the tree, drawn and as data
    tree = system.tree()
    drawing = repr(tree)
    for text in ("RuntimeActor", "MonitorActor", "ConnectionActor", "TaskExecutionManager",
                 f"SupervisorActor[{a}]", f"SupervisorActor[{b}]", f"InstanceActor[{a}]",
                 f"InstanceActor[{b}]", "READY", f"pid {info_a.pid}", f"pid {info_b.pid}",
                 "restarts 1 (limit 5 in 60 s)", "restarts 0 (limit 5 in 60 s)", system.endpoint):
        assert text in drawing, (text, drawing)
    data = tree.to_dict()
    nodes = {n["id"]: n for n in data["instances"]}
    assert set(nodes) == {a, b}
    assert (nodes[a]["state"], nodes[a]["pid"], nodes[a]["restarts"], nodes[a]["max_restarts"]
            ) == ("ready", info_a.pid, 1, 5)
    assert (nodes[b]["state"], nodes[b]["pid"], nodes[b]["restarts"]) == ("ready", info_b.pid, 0)
    assert nodes[a]["supervisor"]["alive"] and nodes[a]["supervisor"]["restart_policy"][
        "mode"] == "permanent"
    assert data["runtime"]["services"] == {"MonitorActor": True, "ConnectionActor": True,
                                           "TaskExecutionManager": True}

    # -- after a stop, everything says so
    system.stop_instance(b)
    tree = system.tree()
    assert tree.to_dict()["instances"][1]["state"] == "stopped"
    assert f"InstanceActor[{b}] STOPPED pid -" in repr(tree)
    assert wait_until(lambda: system.metrics()["connection_totals"]["active"] == 1, WAIT)
    assert [c.instance_id for c in system.connections()] == [a]


def test_secrets_never_reach_events_tree_metrics_or_logs(
        make_system: Callable[..., SpearSystem], captured_logs: list[Any],
        caplog: pytest.LogCaptureFixture) -> None:
    secrets: list[str] = []
    reports: list[str] = []
    with make_system(monitoring=MonitoringConfig(collection_interval=0.2)) as system:
        iid = system.create_instance("echo", echo())
        info = system.wait_ready(iid, WAIT)
        assert info.pid is not None
        secrets.append(psutil.Process(info.pid).environ()["SPEAR_SECRET"])
        assert system.execute(iid, b"work", timeout=5) == b"work"

        info = restart_by_kill(system, iid)  # a new generation gets a new secret
        assert info.pid is not None
        secrets.append(psutil.Process(info.pid).environ()["SPEAR_SECRET"])
        assert secrets[0] != secrets[1] and all(len(s) >= 43 for s in secrets)

        # someone trying the old secret is refused, and that is logged without it
        intruder = InstanceClient(system.endpoint, iid, secrets[0])
        with pytest.raises(AuthenticationError):
            intruder.connect(timeout=5)
        intruder.close()
        wait_until(lambda: system.metrics()["auth_failures"] == 1, WAIT)

        pids = [p.pid for p in psutil.Process().children(recursive=True)]
        reports += [repr(system.events(limit=None)), repr(system.tree()),
                    repr(system.tree().to_dict()), str(system.metrics()),
                    repr(system.instances()), repr(system.connections())]

    # shutdown leaves no child process, no live actor
    assert not [p for p in psutil.Process().children(recursive=True) if p.pid in pids]
    assert pykka.ActorRegistry.get_all() == []
    assert info.pid is not None and not psutil.pid_exists(info.pid)

    logs = "\n".join(str(message) for message in captured_logs) + caplog.text
    assert iid in logs and "authentication failed" in logs  # the capture did work
    for secret in secrets:
        for text in [*reports, logs]:
            assert secret not in text
