"""Instances that misbehave around their connection, each beside a healthy echo instance that
must keep answering promptly: one that never authenticates, ones that die in the middle of
authenticating, one that floods heartbeats, and a slow consumer that stops reading its socket
while large requests are sent to it."""

from __future__ import annotations

from concurrent.futures import Future, wait
from typing import Any

from helpers import wait_until

from spear_actors import (
    ConnectionConfig,
    InstanceFailed,
    InstanceState,
    RestartPolicy,
    SpearError,
    TimeoutError,
)

from .support import (
    ECHO,
    HANG,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    WAIT,
    EchoProbe,
    Systems,
    crash_reports,
    instance_config,
    launch,
    program,
)

GIVE_UP = RestartPolicy(max_restarts=2, window=60.0, backoff_min=0.05, backoff_max=0.2)
AUTH_TIMEOUT = 1.0
CONNECTION = ConnectionConfig(heartbeat_interval=HEARTBEAT_INTERVAL,
                              heartbeat_timeout=HEARTBEAT_TIMEOUT, auth_timeout=AUTH_TIMEOUT)


def reasons(system: Any, instance_id: str) -> list[str]:
    return [e.data["reason"] for e in system.events(limit=None, kinds={"InstanceExited"})
            if e.data.get("instance_id") == instance_id]


def only_connection_is(system: Any, instance_id: str) -> bool:
    return [c.instance_id for c in system.connections()] == [instance_id]


def assert_left_alone(system: Any, instance_id: str, pid: int | None) -> None:
    info = system.instance(instance_id)
    assert info.state.is_serving and info.pid == pid and info.restarts == 0, info
    assert all(system.tree().services.values()), system.tree()


def test_instance_that_never_authenticates(systems: Systems, captured_logs: list[Any]
                                           ) -> None:
    system = systems.start(CONNECTION)
    [echo] = launch(system, "echo", ECHO)
    pid = system.instance(echo).pid
    with EchoProbe(system, echo) as probe:
        silent = system.create_instance("silent", instance_config(
            HANG, env={"SPEAR_EXAMPLE_HANG": "before_auth"}, startup_timeout=0.5,
            restart=GIVE_UP, stop_timeout=0.5))
        info = system.wait_state(silent, {InstanceState.FAILED}, timeout=WAIT)
    assert info.restarts == GIVE_UP.max_restarts
    assert reasons(system, silent) == ["startup_timeout"] * (GIVE_UP.max_restarts + 1)
    probe.result.assert_healthy()
    assert_left_alone(system, echo, pid)
    assert only_connection_is(system, echo)
    assert not crash_reports(captured_logs)


def test_instances_that_exit_during_authentication(systems: Systems,
                                                   captured_logs: list[Any]) -> None:
    system = systems.start(CONNECTION)
    [echo] = launch(system, "echo", ECHO)
    pid = system.instance(echo).pid
    errors_before = sum(system.metrics()["errors"].values())
    modes = ("connect_only", "truncated", "after_send")
    with EchoProbe(system, echo) as probe:
        quitters = {mode: system.create_instance(f"quit-{mode.replace('_', '-')}",
                                                 instance_config(
            program("exit_during_auth"), env={"EXIT_MODE": mode}, restart=GIVE_UP))
            for mode in modes}
        for iid in quitters.values():
            info = system.wait_state(iid, {InstanceState.FAILED}, timeout=WAIT)
            assert info.last_exit_code == 7 and info.restarts == GIVE_UP.max_restarts, info
            assert "restart limit reached" in (info.last_error or ""), info
    probe.result.assert_healthy()
    assert_left_alone(system, echo, pid)
    # what they left behind (a half-authenticated session, a pending peer) is reclaimed by
    # the heartbeat and auth timeouts
    wait_until(lambda: only_connection_is(system, echo), AUTH_TIMEOUT + WAIT,
               message="the quitters' connections to be reclaimed")
    wait_until(lambda: system.metrics()["connection_totals"]["pending"] == 0, WAIT)
    # each truncated AUTH_REQUEST was refused and counted
    wait_until(lambda: sum(system.metrics()["errors"].values()) - errors_before
               >= GIVE_UP.max_restarts + 1, WAIT, message="the truncated frames to be counted")
    assert not crash_reports(captured_logs)


FLOOD_CONNECTION = ConnectionConfig(heartbeat_interval=0.5, heartbeat_timeout=1.5,
                                    auth_timeout=AUTH_TIMEOUT)
"""Slower heartbeats for the flood: every frame, the flood's included, goes through the one
ConnectionActor in order, so the other instances' heartbeat answers queue behind the flood.
At load 8-10 the backlog reached 1-2 s, and with a 0.6 s heartbeat timeout the healthy echo
was once reconnected and killed as hung; no per-peer fairness exists to prevent that (see
the issue note). What this test holds the system to: the flood is absorbed, and the others
are served within bounds."""


def test_heartbeat_flood(systems: Systems, captured_logs: list[Any]) -> None:
    system = systems.start(FLOOD_CONNECTION)
    [echo] = launch(system, "echo", ECHO)
    pid = system.instance(echo).pid
    def seen() -> int:  # read and counted, or dropped over the peer's budget and counted
        metrics = system.metrics()
        return int(metrics["messages"]["in"].get("HEARTBEAT", {}).get("count", 0)
                   + metrics["errors"].get("over_budget", 0))

    before = seen()
    with EchoProbe(system, echo) as probe:
        [flooder] = launch(system, "flood", program("heartbeat_flood"),
                           env={"FLOOD_SECONDS": "2"})
        # answered once the two seconds of flooding are over
        sent = int(system.execute(flooder, b"", method="count", timeout=WAIT))
    assert sent >= 2_000, f"only {sent} heartbeats: not much of a flood"
    # the flood costs CPU: answering ~40 000 heartbeats a second (the server must answer
    # each) slows the echo from ~1 ms to tens of ms on 2 quiet cores, ~300 ms at load 8;
    # what matters is that it is served throughout, within bounds
    probe.result.assert_healthy(minimum=5, median=1.0)
    assert_left_alone(system, echo, pid)
    # every heartbeat was read and counted (decoded, or dropped past the flooder's budget,
    # DESIGN.md section 11); the flooder itself is still served
    wait_until(lambda: seen() - before >= sent, WAIT, message="the flood to be counted")
    assert system.metrics()["errors"].get("over_budget", 0) > 0
    assert system.execute(flooder, b"still here", timeout=WAIT) == b"still here"
    assert system.instance(flooder).restarts == 0
    assert not crash_reports(captured_logs)


def test_slow_consumer_does_not_block_the_pump(systems: Systems, captured_logs: list[Any]
                                              ) -> None:
    system = systems.start(CONNECTION)
    [echo] = launch(system, "echo", ECHO)
    pid = system.instance(echo).pid
    [slow] = launch(system, "slow", program("slow_consumer"), prefetch=63)
    big = bytes(256 << 10)
    count = 200  # 50 MiB in all, 16 MiB of it in flight at once
    with EchoProbe(system, echo) as probe:
        futures: list[Future[bytes]] = [system.submit(slow, big, timeout=2.0)
                                        for _ in range(count)]
        _, not_done = wait(futures, timeout=WAIT + 10)
    assert not not_done, f"{len(not_done)} requests to the slow consumer never ended"
    outcomes = [f.exception(0) for f in futures]
    assert all(isinstance(e, (TimeoutError, InstanceFailed)) for e in outcomes), \
        {type(e).__name__ for e in outcomes}
    probe.result.assert_healthy()
    assert_left_alone(system, echo, pid)
    assert system.metrics()["tasks"]["pending"] == 0
    # stopping it works although it never reads the stop SIGNAL (SIGTERM after the grace)
    try:
        stopped = system.stop_instance(slow, timeout=WAIT)
    except SpearError as exc:
        raise AssertionError(f"could not stop the slow consumer: {exc!r}") from None
    assert stopped.state is InstanceState.STOPPED
    assert not crash_reports(captured_logs)
