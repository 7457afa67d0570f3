"""READY <-> BUSY: an instance whose every slot holds a request reports BUSY."""

from __future__ import annotations

from spear_actors import InstanceState, SpearSystem
from tests.helpers import wait_until

from .conftest import HANG, launch


def test_instance_is_busy_while_its_slots_are_full(system: SpearSystem) -> None:
    [iid] = launch(system, "sleepy", HANG, max_concurrency=1, prefetch=0)
    system.wait_ready(iid, timeout=15)
    assert system.instance(iid).state is InstanceState.READY
    future = system.submit(iid, b"1.0", method="sleep", timeout=10)
    wait_until(lambda: system.instance(iid).state is InstanceState.BUSY, 5,
               message="a full instance never showed BUSY")
    assert future.result(10) == b"slept"
    wait_until(lambda: system.instance(iid).state is InstanceState.READY, 5,
               message="the instance stayed BUSY after its work was done")
