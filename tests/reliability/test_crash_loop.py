"""Crash loops: the restart limit and the backoff are respected, the instance ends FAILED, and
the healthy instances beside it keep answering promptly while it burns its budget."""

from __future__ import annotations

import pytest

from spear_actors import InstanceFailed, InstanceState, RestartPolicy, SpearSystem

from .support import CRASH, ECHO, WAIT, EchoProbe, instance_config, launch

MAX_RESTARTS = 4
POLICY = RestartPolicy(max_restarts=MAX_RESTARTS, window=60.0, backoff_min=0.1,
                       backoff_max=1.0, jitter=0.0)
"""Backoffs 0.1, 0.2, 0.4, 0.8 s: about 1.5 s of backoff plus five process starts."""


def test_crash_loop_fails_per_policy_without_slowing_the_others(system: SpearSystem) -> None:
    healthy = launch(system, "echo", ECHO, 2)
    pids = {iid: system.instance(iid).pid for iid in healthy}

    with EchoProbe(system, "echo") as probe:
        looper = system.create_instance("looper", instance_config(
            CRASH, env={"SPEAR_EXAMPLE_EXIT_BEFORE_CONNECT": "3"}, restart=POLICY))
        with pytest.raises(InstanceFailed, match="restart limit reached"):
            system.wait_ready(looper, timeout=WAIT + 10)
    result = probe.result

    info = system.instance(looper)
    assert info.state is InstanceState.FAILED
    assert info.restarts == MAX_RESTARTS
    assert info.last_exit_code == 3
    assert info.last_error is not None and "restart limit reached" in info.last_error

    events = [e for e in system.events(limit=None, kinds={
        "InstanceStarted", "InstanceExited", "InstanceRestarting", "InstanceFailed"})
        if e.data.get("instance_id") == looper]
    kinds = [e.kind for e in events]
    assert kinds.count("InstanceStarted") == MAX_RESTARTS + 1, kinds
    assert kinds.count("InstanceRestarting") == MAX_RESTARTS, kinds
    assert kinds[-1] == "InstanceFailed", kinds
    # the backoff doubles (no jitter here) and is really waited out before each new start
    restarting = [e for e in events if e.kind == "InstanceRestarting"]
    delays = [e.data["delay"] for e in restarting]
    assert delays == [POLICY.backoff(n) for n in range(1, MAX_RESTARTS + 1)], delays
    for event in restarting:
        started = next(e for e in events if e.kind == "InstanceStarted" and e.seq > event.seq)
        assert started.time - event.time >= event.data["delay"] - 0.01, (event, started)

    # meanwhile the healthy instances answered promptly and were left alone
    result.assert_healthy()
    for iid in healthy:
        now = system.instance(iid)
        assert now.state.is_serving and now.pid == pids[iid] and now.restarts == 0, now
    assert system.metrics()["restarts"] == MAX_RESTARTS
