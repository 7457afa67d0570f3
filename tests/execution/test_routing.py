"""Where requests go: an explicit instance target, and an instance that is restarting."""

from __future__ import annotations

import os
import signal
from collections import Counter
from concurrent.futures import wait

from spear_actors import InstanceState, SpearSystem

from .conftest import ECHO, PID_ECHO, WAIT, launch

NOT_SERVING = {InstanceState.RESTARTING, InstanceState.STARTING, InstanceState.CONNECTING}


def test_instance_id_target_routes_only_to_that_instance(system: SpearSystem) -> None:
    ids = launch(system, "pids", PID_ECHO, 3, max_concurrency=2)
    chosen = system.instance(ids[1])
    futures = [system.submit(ids[1], str(i).encode(), timeout=10) for i in range(300)]
    _, not_done = wait(futures, timeout=30)
    assert not not_done
    served = Counter(f.result(0).partition(b":")[0] for f in futures)
    assert served == Counter({str(chosen.pid).encode(): 300}), served
    for i, future in enumerate(futures):
        assert future.result(0).partition(b":")[2] == str(i).encode()
    # the task id still spreads over all three
    answers = [system.submit("pids", b"x", timeout=10) for _ in range(300)]
    wait(answers, timeout=30)
    assert len({f.result(0).partition(b":")[0] for f in answers}) == 3


def test_requests_wait_for_a_restarting_instance(system: SpearSystem) -> None:
    (iid,) = launch(system, "echo", ECHO)
    before = system.instance(iid)
    assert before.pid is not None
    os.kill(before.pid, signal.SIGKILL)
    system.wait_state(iid, NOT_SERVING, timeout=WAIT)
    futures = [system.submit("echo", b"%d" % i, timeout=10) for i in range(20)]
    _, not_done = wait(futures, timeout=WAIT)
    assert not not_done
    assert [f.result(0) for f in futures] == [b"%d" % i for i in range(20)]
    after = system.instance(iid)
    assert after.restarts == 1 and after.pid != before.pid


def test_idempotent_requests_sent_right_after_a_kill_all_succeed(system: SpearSystem) -> None:
    # no waiting for the supervisor to notice: some requests may go to the dead connection
    # and be lost; retries=1 re-sends them once the instance is back
    (iid,) = launch(system, "echo", ECHO)
    pid = system.instance(iid).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    futures = [system.submit(iid, b"%d" % i, timeout=10, retries=1) for i in range(20)]
    _, not_done = wait(futures, timeout=WAIT)
    assert not not_done
    assert [f.result(0) for f in futures] == [b"%d" % i for i in range(20)]
    assert system.instance(iid).restarts == 1
