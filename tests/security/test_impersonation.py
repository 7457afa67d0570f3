"""One instance against another (programs/rogue.py, authenticated with its own credentials):
it cannot authenticate as the other, take over the other's session, or answer the requests
routed to the other."""

from __future__ import annotations

import json
from concurrent.futures import wait
from typing import Any

from helpers import wait_until
from reliability.support import HANG, WAIT, Systems, crash_reports, launch

from spear_actors import SpearSystem

from .support import ROGUE

PENDING = 5


def ask(system: SpearSystem, rogue: str, method: str, data: bytes) -> dict[str, Any]:
    return dict(json.loads(system.execute(rogue, data, method=method, timeout=WAIT)))


def test_an_instance_cannot_act_for_another(systems: Systems, captured_logs: list[Any]
                                            ) -> None:
    system = systems.start()
    [victim] = launch(system, "victim", HANG)  # serves; method "sleep" answers slowly
    [rogue] = launch(system, "rogue", ROGUE)
    before = system.instance(victim)
    failures = system.metrics()["auth_failures"]

    # its own secret with the other's id, on a fresh connection: refused
    attempt = ask(system, rogue, "impersonate", victim.encode())
    assert attempt == {"accepted": False, "seen": ["AuthRejected"]}, attempt
    # an AUTH_REQUEST for the other on its own authenticated connection: refused too
    attempt = ask(system, rogue, "reauth", victim.encode())
    assert attempt == {"errors": ["bad_message"]}, attempt
    wait_until(lambda: system.metrics()["auth_failures"] == failures + 1, WAIT)

    # the victim kept its session; the rogue is still only itself
    after = system.instance(victim)
    assert (after.connection_id, after.session_id) == (before.connection_id, before.session_id)
    by_instance = {c.instance_id: c for c in system.connections()}
    assert set(by_instance) == {victim, rogue}
    assert by_instance[victim].connection_id == before.connection_id

    # requests in flight on the victim; the rogue answers their ids (just below its own)
    stats = system.metrics()["tasks"]
    foreign = stats.get("foreign_replies_dropped", 0)
    slow = [system.submit(victim, b"1.0", method="sleep", timeout=WAIT)
            for _ in range(PENDING)]
    wait_until(lambda: system.metrics()["tasks"]["instances"][victim]["in_flight"] == PENDING,
               WAIT, message="the victim's requests to be in flight")
    offsets = [*range(-PENDING - 3, 0), 1, 2, 1000]
    assert ask(system, rogue, "forge", json.dumps(offsets).encode()) == {
        "forged": len(offsets)}
    _, not_done = wait(slow, timeout=WAIT)
    assert not not_done
    assert [f.result(0) for f in slow] == [b"slept"] * PENDING, "a forged answer got through"
    wait_until(lambda: system.metrics()["tasks"].get("foreign_replies_dropped", 0)
               >= foreign + PENDING, WAIT, message="the forged replies to be counted")
    stats = system.metrics()["tasks"]
    assert stats["foreign_replies_dropped"] - foreign == PENDING, stats
    assert stats["late_replies_dropped"] >= len(offsets) - PENDING - 2, stats

    assert system.execute(rogue, b"me", timeout=WAIT) == b"me"
    assert system.execute(victim, b"me too", timeout=WAIT) == b"me too"
    assert system.instance(victim).restarts == 0
    assert not crash_reports(captured_logs)
