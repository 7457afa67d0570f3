"""Many concurrent requests through a real SpearSystem: correctness, spread, instance loss."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from concurrent.futures import Future, wait

import pytest
from helpers import wait_until

from spear_actors import InstanceFailed, SpearSystem

from .conftest import ECHO, PID_ECHO, WAIT, launch

N_SPREAD = 10_000
N_KILL = 8_000


def payload(i: int) -> bytes:
    return i.to_bytes(4, "big")


def lifecycle(system: SpearSystem) -> list[tuple[str, dict[str, object]]]:
    """The recent non-message events, for failure messages."""
    return [(e.kind, dict(e.data)) for e in system.events(limit=None)
            if not e.kind.startswith("Message")][-30:]


def all_done(futures: list[Future[bytes]], timeout: float) -> None:
    """Every future completes within ``timeout`` (no hang, whatever its outcome)."""
    _, not_done = wait(futures, timeout=timeout)
    assert not not_done, f"{len(not_done)} of {len(futures)} futures still pending after " \
                         f"{timeout} s"


def test_ten_thousand_concurrent_submits_are_answered_and_spread(busy_system: SpearSystem
                                                                 ) -> None:
    system = busy_system
    ids = launch(system, "pids", PID_ECHO, 3, max_concurrency=4)
    pids = {system.instance(iid).pid for iid in ids}
    assert len(pids) == 3

    futures = [system.submit("pids", payload(i), timeout=30) for i in range(N_SPREAD)]
    all_done(futures, 60)
    served: Counter[int] = Counter()
    errors = [f.exception(0) for f in futures if f.exception(0) is not None]
    assert not errors, f"{len(errors)} failed, e.g. {errors[0]!r}; events: {lifecycle(system)}"
    for i, future in enumerate(futures):
        pid, _, data = future.result(0).partition(b":")
        assert data == payload(i), f"request {i} got someone else's answer"
        served[int(pid)] += 1
    assert set(served) == pids, \
        f"served by {served}, instances are {pids}; events: {lifecycle(system)}"
    assert min(served.values()) >= N_SPREAD // 20, f"load not spread: {served}"

    stats = system.metrics()["tasks"]
    assert stats["pending"] == 0 and stats["queued"] == 0
    assert all(i["in_flight"] == 0 for i in stats["instances"].values())


@pytest.mark.parametrize("retries", [0, 2])
def test_kill_nine_mid_stream_ends_every_request(busy_system: SpearSystem, retries: int
                                                 ) -> None:
    system = busy_system
    ids = launch(system, "echo", ECHO, 3, max_concurrency=4)

    futures = [system.submit("echo", payload(i), timeout=30, retries=retries)
               for i in range(N_KILL)]
    wait_until(lambda: sum(f.done() for f in futures) >= N_KILL // 5, timeout=WAIT,
               message="the stream to get going")
    outstanding = sum(not f.done() for f in futures)
    victim = system.instance(ids[1])
    assert victim.pid is not None and victim.restarts == 0, \
        f"{victim} restarted under load by itself: {lifecycle(system)}"
    os.kill(victim.pid, signal.SIGKILL)
    assert outstanding > N_KILL // 4, "the kill should land mid-stream"

    all_done(futures, 60)
    ok = failed = 0
    for i, future in enumerate(futures):
        error = future.exception(0)
        if error is None:
            assert future.result(0) == payload(i)
            ok += 1
        else:
            assert isinstance(error, InstanceFailed), repr(error)
            failed += 1
    assert ok + failed == N_KILL
    if retries:
        assert failed == 0, f"{failed} idempotent requests failed despite retries={retries}"
    # the killed instance comes back and serves again
    system.wait_ready(ids[1], timeout=WAIT)
    assert system.instance(ids[1]).restarts == 1
    assert system.execute(ids[1], b"back", timeout=5) == b"back"


def test_execute_latency_is_recorded(system: SpearSystem) -> None:
    launch(system, "echo", ECHO)
    before = system.metrics()["execute_latency"]["count"]
    started = time.monotonic()
    for i in range(50):
        assert system.execute("echo", payload(i), timeout=5) == payload(i)
    elapsed = time.monotonic() - started

    def recorded() -> dict[str, float] | None:
        latency: dict[str, float] = system.metrics()["execute_latency"]
        return latency if latency["count"] >= before + 50 else None

    latency = wait_until(recorded, timeout=5, message="50 latencies in the metrics")
    assert latency is not None
    assert 0 < latency["p50"] <= latency["max"] <= elapsed
