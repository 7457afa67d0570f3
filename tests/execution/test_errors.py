"""How requests end when they cannot succeed: timeouts, handler errors, unknown targets,
shutdown, and instances answering what they were never asked."""

from __future__ import annotations

import builtins
import time
from concurrent.futures import wait

import pytest
from helpers import wait_until

import spear_actors
from spear_actors import (
    ExecutionError,
    InstanceFailed,
    NoInstanceAvailable,
    SpearError,
    SpearSystem,
    SystemConfig,
)

from .conftest import CRASH, ECHO, HANG, ROGUE, SHORT_CONNECTION, WAIT, launch

MARGIN = 0.7
"""Allowance on top of a timeout: deadline checks tick every 50 ms; a loaded 2-core machine."""


def tasks_counter(system: SpearSystem, name: str) -> int:
    return int(system.metrics()["tasks"].get(name, 0))


def test_timeout_raises_in_time_and_the_late_reply_is_dropped(system: SpearSystem) -> None:
    launch(system, "slow", HANG)
    started = time.monotonic()
    with pytest.raises(spear_actors.TimeoutError) as caught:
        system.execute("slow", b"2", method="sleep", timeout=0.3)
    elapsed = time.monotonic() - started
    assert isinstance(caught.value, builtins.TimeoutError)
    assert isinstance(caught.value, SpearError)
    assert 0.3 <= elapsed < 0.3 + MARGIN, elapsed
    assert "within 0.3 s" in str(caught.value), "not the manager's own error"
    assert tasks_counter(system, "timeouts") >= 1

    # the handler finishes ~2 s after the call: its reply must be dropped and counted
    wait_until(lambda: tasks_counter(system, "late_replies_dropped") >= 1, timeout=WAIT,
               message="the late reply to be counted")
    # and the instance is fine afterwards (nothing was resolved twice or left in flight)
    assert system.execute("slow", b"still here", timeout=5) == b"still here"
    stats = system.metrics()["tasks"]
    assert stats["pending"] == 0 and stats["queued"] == 0


def test_submit_future_times_out_too(system: SpearSystem) -> None:
    launch(system, "slow", HANG)
    future = system.submit("slow", b"2", method="sleep", timeout=0.2)
    wait([future], timeout=0.2 + MARGIN)
    assert future.done()
    assert isinstance(future.exception(0), spear_actors.TimeoutError)


def test_handler_error_becomes_execution_error(system: SpearSystem) -> None:
    (iid,) = launch(system, "crashy", CRASH)
    with pytest.raises(ExecutionError) as caught:
        system.execute("crashy", b"boom 42", method="fail", timeout=5)
    assert "ValueError" in str(caught.value) and "boom 42" in str(caught.value)
    assert "boom 42" in caught.value.message
    assert caught.value.instance_id == iid
    # an error reply is an ordinary answer: the instance keeps serving
    assert system.execute("crashy", b"ok", timeout=5) == b"ok"
    assert system.instance(iid).restarts == 0


@pytest.mark.parametrize("target", ["no-such-task", "echo-99"])
def test_unknown_target_fails_at_once(system: SpearSystem, target: str) -> None:
    launch(system, "echo", ECHO)
    started = time.monotonic()
    with pytest.raises(NoInstanceAvailable, match=target):
        system.execute(target, b"x", timeout=5)
    assert time.monotonic() - started < 0.5


def test_shutdown_ends_in_flight_requests_with_an_error(no_leftovers: None) -> None:
    spear = SpearSystem.start(SystemConfig(connection=SHORT_CONNECTION))
    try:
        launch(spear, "slow", HANG, stop_timeout=1.0)
        futures = [spear.submit("slow", b"5", method="sleep", timeout=30) for _ in range(3)]
        wait_until(lambda: spear.metrics()["tasks"]["pending"] == 3, timeout=WAIT,
                   message="3 requests in flight")
        started = time.monotonic()
        spear.shutdown(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        spear.shutdown(timeout=10)
    assert elapsed < 4.0, f"shutdown took {elapsed:.2f} s (the handler sleeps 5 s)"
    _, not_done = wait(futures, timeout=0.5)
    assert not not_done, "shutdown left requests unanswered"
    for future in futures:
        assert isinstance(future.exception(0), (InstanceFailed, NoInstanceAvailable)), \
            future.exception(0)
    with pytest.raises(SpearError):
        spear.submit("slow", b"x")


def test_replies_to_requests_never_given_are_dropped(system: SpearSystem) -> None:
    # the rogue answers every request id - 1 (here: the request in flight on the other
    # instance) and request id + 1000 (nobody's) before answering the real one
    launch(system, "slow", HANG)
    launch(system, "rogue", ROGUE, env={"ROGUE_OFFSETS": "1000,-1"})
    slow = system.submit("slow", b"1", method="sleep", timeout=10)
    wait_until(lambda: system.metrics()["tasks"]["pending"] == 1, timeout=WAIT,
               message="the sleep request in flight")
    answers = [system.execute("rogue", f"real {i}".encode(), timeout=5) for i in range(20)]
    assert answers == [f"real {i}".encode() for i in range(20)]
    assert slow.result(timeout=WAIT) == b"slept", "a rogue reply resolved someone else's request"

    def dropped() -> bool:
        stats = system.metrics()["tasks"]
        return bool(stats.get("foreign_replies_dropped", 0) >= 1
                    and stats.get("late_replies_dropped", 0) >= 20)
    try:
        wait_until(dropped, timeout=WAIT, message="rogue replies to be counted")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; tasks: {system.metrics()['tasks']}") from None
    stats = system.metrics()["tasks"]
    assert stats["pending"] == 0
