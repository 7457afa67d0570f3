"""Self-supervision (DESIGN.md section 7): the RuntimeActor restarts a failed service actor
with fresh state, instances outlive it, requests in flight end exactly once, and past the
budget the system fails. Real actors, real instance processes, ``inject_crash`` as the bug."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pykka
import pytest
from helpers import wait_until

from spear_actors import (
    ConnectionConfig,
    InstanceState,
    RestartPolicy,
    SpearError,
    SpearSystem,
    SystemFailed,
)
from spear_actors.actors.monitor import MonitorActor
from spear_actors.messages import GetEvents

from .support import WAIT, echo, events_of, example, last_seq, wait_event, wait_info

SERVICES = ("monitor", "connection", "tasks")
CLASS = {"monitor": "MonitorActor", "connection": "ConnectionActor",
         "tasks": "TaskExecutionManager"}


def outcomes(futures: list[Future[bytes]], timeout: float) -> tuple[int, list[BaseException]]:
    """(answers, errors) once every future has ended; fails if one is still open."""
    deadline = time.monotonic() + timeout
    answers, errors = 0, []
    for future in futures:
        try:
            future.result(max(0.0, deadline - time.monotonic()))
            answers += 1
        except SpearError as exc:
            errors.append(exc)
    return answers, errors


@pytest.mark.parametrize("target", SERVICES)
def test_a_failed_service_is_restarted_and_instances_keep_their_process(
        make_system: Callable[..., SpearSystem], target: str) -> None:
    system = make_system()
    iids = [system.create_instance("echo", echo()) for _ in range(2)]
    before = {iid: system.wait_ready(iid, WAIT) for iid in iids}
    since = last_seq(system)

    system.inject_crash(target)

    restarted = wait_event(system, "ServiceRestarted", since=since if target != "monitor"
                           else None, match=lambda e: e.data["service"] == target)
    assert restarted.data["restarts"] == 1 and "crash injected" in restarted.data["reason"]
    wait_until(lambda: f"{CLASS[target]} [alive] restarts 1" in repr(system.tree()), WAIT,
               message="the restart count in the tree")
    for iid in iids:
        info = system.wait_ready(iid, WAIT)
        assert info.pid == before[iid].pid and info.restarts == 0
    assert system.execute("echo", b"still serving", timeout=WAIT) == b"still serving"


def test_after_a_connection_restart_every_instance_authenticates_again_in_time(
        make_system: Callable[..., SpearSystem]) -> None:
    """Within 2 x heartbeat_interval + 1 s (DESIGN.md section 7), same pid, no restart."""
    interval = 1.0
    system = make_system(connection=ConnectionConfig(heartbeat_interval=interval,
                                                     heartbeat_timeout=3 * interval))
    iids = [system.create_instance("echo", echo()) for _ in range(2)]
    before = {iid: system.wait_ready(iid, WAIT) for iid in iids}

    started = time.monotonic()
    system.inject_crash("connection")

    def authenticated_again() -> bool:
        infos = {i.id: i for i in system.instances()}
        return all(infos[iid].state is InstanceState.READY
                   and infos[iid].connection_id not in (None, before[iid].connection_id)
                   for iid in iids)

    wait_until(authenticated_again, WAIT, message="every instance READY on a new connection")
    took = time.monotonic() - started
    assert took <= 2 * interval + 1.0, f"READY again after {took:.2f} s"
    for iid in iids:
        info = system.instance(iid)
        assert info.pid == before[iid].pid and info.restarts == 0
    assert not events_of(system, kinds={"InstanceRestarting", "InstanceExited"})
    assert len(system.connections()) == 2


def test_dedicated_listeners_survive_a_connection_restart(
        make_system: Callable[..., SpearSystem]) -> None:
    system = make_system(connection=ConnectionConfig(
        heartbeat_interval=0.2, heartbeat_timeout=0.6, per_instance_listeners=True))
    iid = system.create_instance("echo", echo())
    before = system.wait_ready(iid, WAIT)
    system.inject_crash("connection")
    info = wait_info(system, iid, lambda i: i.state is InstanceState.READY
                     and i.connection_id not in (None, before.connection_id),
                     what="READY on a new connection")
    assert info.pid == before.pid and info.restarts == 0
    assert system.execute(iid, b"own listener", timeout=WAIT) == b"own listener"


@pytest.mark.parametrize("retries", [0, 2])
@pytest.mark.parametrize("target", [*SERVICES, "instance", "supervisor"])
def test_requests_in_flight_end_exactly_once(make_system: Callable[..., SpearSystem],
                                             target: str, retries: int) -> None:
    """Answered, re-sent (retries > 0) or failed with a SpearError; never left open past
    their timeout. A slow handler keeps requests in flight and queued across the crash."""
    system = make_system()
    iid = system.create_instance("sleepy", example("hang", max_concurrency=2, prefetch=0))
    system.wait_ready(iid, WAIT)
    timeout = 8.0
    futures = [system.submit("sleepy", b"0.05", method="sleep", timeout=timeout,
                             retries=retries) for _ in range(20)]
    wait_until(lambda: system.metrics()["tasks"]["pending"] >= 2, WAIT,
               message="requests in flight")
    system.inject_crash(target if target in SERVICES else f"{target}/{iid}")
    futures += [system.submit("sleepy", b"0.01", method="sleep", timeout=timeout,
                              retries=retries) for _ in range(10)]

    answers, errors = outcomes(futures, timeout + 2.0)
    assert answers + len(errors) == len(futures)
    if retries and target in ("monitor", "connection", "tasks", "instance"):
        assert not errors, errors[:3]  # nothing in flight was lost for good
    if target in ("monitor",):
        assert not errors, errors[:3]  # the monitor holds no request
    system.wait_ready(iid, WAIT)
    assert system.execute("sleepy", b"0", method="sleep", timeout=WAIT) == b"slept"


def test_a_failed_supervisor_takes_its_instance_and_both_are_started_afresh(
        make_system: Callable[..., SpearSystem]) -> None:
    system = make_system()
    iid = system.create_instance("echo", echo())
    before = system.wait_ready(iid, WAIT)
    since = last_seq(system)
    system.inject_crash(f"supervisor/{iid}")
    info = wait_info(system, iid, lambda i: i.state is InstanceState.READY
                     and i.pid not in (None, before.pid), what="a fresh instance")
    assert info.restarts == 1
    event = wait_event(system, "ServiceRestarted", since=since)
    assert event.data["service"] == f"supervisor/{iid}"
    wait_until(lambda: not _alive(before.pid), WAIT, message="the old process to die")
    tree = repr(system.tree())
    assert f"SupervisorActor[{iid}] [alive]" in tree


def test_unknown_crash_targets_are_refused(system: SpearSystem) -> None:
    for target in ("runtime", "instance/nope", "supervisor/", "", "tasks/1"):
        with pytest.raises(SpearError, match="crash target"):
            system.inject_crash(target)


def test_past_the_budget_the_system_fails(make_system: Callable[..., SpearSystem]) -> None:
    system = make_system(service_restart=RestartPolicy(max_restarts=2, window=60.0))
    iid = system.create_instance("echo", echo())
    pid = system.wait_ready(iid, WAIT).pid
    assert pid is not None
    for _ in range(2):  # within the budget: restarted
        since = last_seq(system)
        system.inject_crash("tasks")
        wait_event(system, "ServiceRestarted", since=since)
    [monitor] = pykka.ActorRegistry.get_by_class(MonitorActor)
    in_flight = system.submit("echo", b"x", timeout=WAIT)  # it may or may not be answered

    system.inject_crash("connection")  # one too many

    failure = system.wait_failed(WAIT)
    assert isinstance(failure, SystemFailed) and "ConnectionActor" in str(failure)
    events: list[Any] = monitor.ask(GetEvents(None, frozenset({"SystemFailed"})), timeout=WAIT)
    assert [e.data["service"] for e in events] == ["connection"]
    wait_until(lambda: not _alive(pid), WAIT, message="every instance to be stopped")
    for call in (system.instances, system.tree, system.metrics,
                 lambda: system.execute("echo", b"x", timeout=1),
                 lambda: system.submit("echo", b"x"),
                 lambda: system.create_instance("echo", echo())):
        with pytest.raises(SystemFailed):
            call()
    try:
        in_flight.result(WAIT)
    except SpearError:
        pass  # ended, one way or the other
    assert in_flight.done()


def test_a_crash_in_the_monitor_does_not_cut_any_connection(system: SpearSystem) -> None:
    iid = system.create_instance("echo", echo())
    before = system.wait_ready(iid, WAIT)
    system.inject_crash("monitor")
    wait_until(lambda: system.metrics()["instances"].get(iid), WAIT,
               message="the new monitor sampling the instance again")
    assert system.instance(iid).connection_id == before.connection_id


def _alive(pid: int | None) -> bool:
    import psutil

    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
