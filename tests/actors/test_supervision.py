"""Supervision: restarts after kill -9, crash loops, restart modes, actor crashes, operator
stop and restart. Real processes; every wait is bounded."""

from __future__ import annotations

import os
import signal
import time
from typing import Literal

import psutil
import pytest
from helpers import holds_for

from spear_actors import InstanceState, RestartPolicy, SpearSystem

from .support import (
    WAIT,
    echo,
    events_of,
    example,
    last_seq,
    program,
    wait_event,
    wait_info,
)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_kill_9_restarts_only_that_instance(system: SpearSystem) -> None:
    ids = [system.create_instance("echo", echo()) for _ in range(3)]
    before = {iid: system.wait_ready(iid, WAIT) for iid in ids}
    victim = ids[1]
    old = before[victim]
    assert old.pid is not None
    since = last_seq(system)

    os.kill(old.pid, signal.SIGKILL)

    ready = wait_event(system, "InstanceReady", victim, since=since)
    exited = wait_event(system, "InstanceExited", victim, since=since)
    assert exited.seq < ready.seq
    assert exited.data["exit_code"] == -signal.SIGKILL and exited.data["pid"] == old.pid
    restarting = wait_event(system, "InstanceRestarting", victim, since=since)
    assert exited.seq < restarting.seq < ready.seq
    assert restarting.data["attempt"] == 1

    info = wait_info(system, victim, lambda i: i.state is InstanceState.READY
                     and i.pid not in (None, old.pid), what="the replacement")
    assert info.restarts == 1
    assert info.session_id not in (None, old.session_id)
    assert ready.data["pid"] == info.pid
    assert gone(old.pid)
    assert system.execute(victim, b"back", timeout=5) == b"back"

    for iid in ids:
        if iid != victim:
            other = system.instance(iid)
            assert other.state is InstanceState.READY
            assert (other.pid, other.session_id, other.restarts) == (
                before[iid].pid, before[iid].session_id, 0)
            assert not events_of(system, iid, {"InstanceExited", "InstanceRestarting"})


def test_crash_loop_fails_after_max_restarts_with_growing_backoff(system: SpearSystem) -> None:
    policy = RestartPolicy(max_restarts=3, window=30, backoff_min=0.05, backoff_max=1)
    iid = system.create_instance("crashy", example(
        "crash", env={"SPEAR_EXAMPLE_EXIT_BEFORE_CONNECT": "3"}, restart=policy))

    info = system.wait_state(iid, {InstanceState.FAILED}, WAIT)
    assert info.state is InstanceState.FAILED
    assert info.restarts == 3
    assert info.last_exit_code == 3
    assert info.last_error is not None and "restart limit" in info.last_error
    failed = wait_event(system, "InstanceFailed", iid)
    assert failed.data["restarts"] == 3 and "restart limit" in failed.data["reason"]

    restarting = events_of(system, iid, {"InstanceRestarting"})
    assert [e.data["attempt"] for e in restarting] == [1, 2, 3]
    delays = [e.data["delay"] for e in restarting]
    for attempt, delay in enumerate(delays, start=1):
        nominal = min(policy.backoff_max, policy.backoff_min * 2 ** (attempt - 1))
        assert nominal * (1 - policy.jitter) <= delay <= nominal * (1 + policy.jitter), (
            attempt, delay)
    assert delays == sorted(delays) and len(set(delays)) == 3
    # the backoff was really waited: each start comes at least `delay` after its decision
    started = events_of(system, iid, {"InstanceStarted"})
    assert len(started) == 4
    for decision, start in zip(restarting, started[1:], strict=True):
        assert start.seq > decision.seq
        assert start.time - decision.time >= decision.data["delay"] - 0.005

    # FAILED is final: no more restarts, however long we look past the backoff
    assert holds_for(lambda: system.instance(iid).restarts == 3
                     and system.instance(iid).state is InstanceState.FAILED, 0.5)
    assert len(events_of(system, iid, {"InstanceStarted"})) == 4
    drawing = repr(system.tree())
    assert f"InstanceActor[{iid}] FAILED pid -" in drawing and "restart limit" in drawing
    assert "restarts 3 (limit 3 in " in drawing


@pytest.mark.parametrize(("mode", "exit_code", "restarted"), [
    ("transient", 0, False), ("transient", 3, True), ("permanent", 0, True)])
def test_transient_instance_is_restarted_only_after_an_abnormal_exit(
        system: SpearSystem, mode: Literal["transient", "permanent"], exit_code: int,
        restarted: bool) -> None:
    config = example("crash", env={"SPEAR_EXAMPLE_EXIT_AFTER": "0.2",
                                   "SPEAR_EXAMPLE_EXIT_CODE": str(exit_code)},
                     restart=RestartPolicy(mode=mode, backoff_min=0.05, backoff_max=0.4))
    iid = system.create_instance("transient", config)
    system.wait_ready(iid, WAIT)
    exited = wait_event(system, "InstanceExited", iid)
    assert exited.data["exit_code"] == exit_code
    if restarted:
        wait_event(system, "InstanceRestarting", iid)
        info = wait_info(system, iid, lambda i: i.restarts >= 1, what="a restart")
        assert info.state is not InstanceState.STOPPED
        wait_event(system, "InstanceReady", iid, count=2)
    else:
        info = system.wait_state(iid, {InstanceState.STOPPED}, WAIT)
        assert info.restarts == 0 and info.last_exit_code == 0
        wait_event(system, "InstanceStopped", iid)
        assert not events_of(system, iid, {"InstanceRestarting", "InstanceFailed"})
        assert len(events_of(system, iid, {"InstanceStarted"})) == 1


def test_temporary_instance_is_never_restarted(system: SpearSystem) -> None:
    temporary = RestartPolicy(mode="temporary", backoff_min=0.05, backoff_max=0.4)
    killed = system.create_instance("temp", echo(restart=temporary))
    clean = system.create_instance("temp", example(
        "crash", env={"SPEAR_EXAMPLE_EXIT_AFTER": "0.2", "SPEAR_EXAMPLE_EXIT_CODE": "0"},
        restart=temporary))
    pid = system.wait_ready(killed, WAIT).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    info = system.wait_state(killed, {InstanceState.FAILED, InstanceState.STOPPED}, WAIT)
    assert info.state is InstanceState.FAILED  # an abnormal end, not restarted
    assert info.restarts == 0 and info.last_exit_code == -signal.SIGKILL
    info = system.wait_state(clean, {InstanceState.STOPPED}, WAIT)
    assert info.restarts == 0 and info.last_exit_code == 0

    assert holds_for(lambda: system.instance(killed).restarts == 0
                     and system.instance(clean).restarts == 0, 0.3)
    for iid in (killed, clean):
        assert not events_of(system, iid, {"InstanceRestarting"})
        assert len(events_of(system, iid, {"InstanceStarted"})) == 1
    assert gone(pid)


def test_instance_actor_crash_restarts_the_instance(system: SpearSystem) -> None:
    iid = system.create_instance("echo", echo())
    old = system.wait_ready(iid, WAIT)
    assert old.pid is not None
    since = last_seq(system)

    system.inject_crash(f"instance/{iid}")

    info = wait_info(system, iid, lambda i: i.state is InstanceState.READY
                     and i.pid not in (None, old.pid), what="the replacement")
    assert info.restarts == 1
    restarting = wait_event(system, "InstanceRestarting", iid, since=since)
    assert "crash" in restarting.data["reason"]
    assert gone(old.pid)
    assert system.execute(iid, b"after the crash", timeout=5) == b"after the crash"


def test_stop_instance_is_not_a_failure(system: SpearSystem) -> None:
    iid = system.create_instance("echo", echo())
    pid = system.wait_ready(iid, WAIT).pid
    assert pid is not None
    since = last_seq(system)

    info = system.stop_instance(iid)

    assert info.state is InstanceState.STOPPED
    assert info.restarts == 0
    assert system.instance(iid).state is InstanceState.STOPPED
    assert system.instance(iid).restarts == 0
    stopped = wait_event(system, "InstanceStopped", iid, since=since)
    exited = wait_event(system, "InstanceExited", iid, since=since)
    assert exited.data["exit_code"] == 0 and exited.seq < stopped.seq  # left on SIGNAL stop
    assert not events_of(system, iid, {"InstanceRestarting", "InstanceFailed"})
    assert gone(pid)
    assert holds_for(lambda: system.instance(iid).state is InstanceState.STOPPED, 0.3)
    assert system.stop_instance(iid).state is InstanceState.STOPPED  # idempotent


def test_stop_kills_an_instance_that_ignores_sigterm_after_stop_timeout(
        system: SpearSystem) -> None:
    stop_timeout = 0.3
    iid = system.create_instance("stubborn", program("stubborn", stop_timeout=stop_timeout))
    pid = system.wait_ready(iid, WAIT).pid
    assert pid is not None

    started = time.monotonic()
    info = system.stop_instance(iid, timeout=WAIT)
    took = time.monotonic() - started

    assert info.state is InstanceState.STOPPED and info.restarts == 0
    assert info.last_exit_code == -signal.SIGKILL
    assert took >= stop_timeout
    assert took < stop_timeout * 2 + 2.0
    assert gone(pid)
    wait_event(system, "InstanceStopped", iid)


def test_operator_restart_is_not_counted_against_max_restarts(system: SpearSystem) -> None:
    policy = RestartPolicy(max_restarts=1, window=30, backoff_min=0.05, backoff_max=0.4)
    iid = system.create_instance("echo", echo(restart=policy))
    info = system.wait_ready(iid, WAIT)
    pids = [info.pid]

    for n in (1, 2):
        system.restart_instance(iid)
        info = wait_info(system, iid, lambda i: i.state is InstanceState.READY
                         and i.pid not in (None, *pids), what=f"operator restart {n}")
        pids.append(info.pid)
        assert info.restarts == n
    assert all(gone(pid) for pid in pids[:-1] if pid is not None)
    reasons = [e.data["reason"] for e in events_of(system, iid, {"InstanceRestarting"})]
    assert reasons == ["operator restart", "operator restart"]

    # the policy's budget (1 restart) is untouched: a crash is still restarted ...
    assert info.pid is not None
    os.kill(info.pid, signal.SIGKILL)
    info = wait_info(system, iid, lambda i: i.state is InstanceState.READY
                     and i.pid not in (None, *pids), what="the restart after a crash")
    pids.append(info.pid)
    assert info.restarts == 3
    # ... and only the next one exhausts it
    assert info.pid is not None
    os.kill(info.pid, signal.SIGKILL)
    info = system.wait_state(iid, {InstanceState.FAILED}, WAIT)
    assert info.last_error is not None and "restart limit" in info.last_error


def test_stop_during_the_restart_backoff_stops_at_once(system: SpearSystem) -> None:
    slow = RestartPolicy(backoff_min=5, backoff_max=5, jitter=0)
    iid = system.create_instance("crashy", example(
        "crash", env={"SPEAR_EXAMPLE_EXIT_BEFORE_CONNECT": "3"}, restart=slow))
    system.wait_state(iid, {InstanceState.RESTARTING}, WAIT)
    started = time.monotonic()
    info = system.stop_instance(iid, timeout=WAIT)
    assert time.monotonic() - started < 2.0  # not after the 5 s backoff
    assert info.state is InstanceState.STOPPED
    wait_event(system, "InstanceStopped", iid)
    assert holds_for(lambda: len(events_of(system, iid, {"InstanceStarted"})) == 1, 0.3)


def test_stop_before_authentication(system: SpearSystem) -> None:
    iid = system.create_instance("hang", example(
        "hang", env={"SPEAR_EXAMPLE_HANG": "before_auth"}, stop_timeout=0.2))
    started = wait_event(system, "InstanceStarted", iid)
    info = system.stop_instance(iid, timeout=WAIT)
    assert info.state is InstanceState.STOPPED and info.restarts == 0
    assert info.last_exit_code == -signal.SIGTERM  # SIGTERM did it, no SIGKILL needed
    assert gone(started.data["pid"])
    assert not events_of(system, iid, {"InstanceRestarting", "InstanceFailed"})


def test_restart_budget_resets_after_healthy_running(system: SpearSystem) -> None:
    reset_after = 0.3
    policy = RestartPolicy(max_restarts=1, window=60, backoff_min=0.05, backoff_max=0.4,
                           reset_after=reset_after)
    iid = system.create_instance("echo", echo(restart=policy))
    info = system.wait_ready(iid, WAIT)
    pids = [info.pid]
    for n in (1, 2, 3):
        # healthy for longer than reset_after: the one allowed restart is available again
        assert holds_for(lambda: system.instance(iid).state is InstanceState.READY,
                         reset_after + 0.1)
        assert info.pid is not None
        os.kill(info.pid, signal.SIGKILL)
        info = wait_info(system, iid, lambda i: i.state is InstanceState.READY
                         and i.pid not in (None, *pids), what=f"restart {n}")
        pids.append(info.pid)
        assert info.restarts == n
    # failing again before reset_after: restart 3 spent the budget of one
    assert info.pid is not None
    os.kill(info.pid, signal.SIGKILL)
    info = system.wait_state(iid, {InstanceState.FAILED}, WAIT)
    assert info.restarts == 3
    assert info.last_error is not None and "restart limit" in info.last_error
