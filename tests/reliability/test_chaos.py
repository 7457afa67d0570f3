"""Chaos under load (see chaos.py): four echo instances, a steady stream of requests, and a
killer sending SIGKILL, SIGTERM and SIGSTOP (with or without SIGCONT) at random instances.
``scripts/soak`` runs the same for a minute or more."""

from __future__ import annotations

import gc
import threading

from helpers import wait_until

from spear_actors import RestartPolicy, SpearSystem, SystemConfig

from .chaos import Chaos, ChaosConfig, process_usage
from .support import ECHO, LEFTOVER_WAIT, SHORT, instance_config, leftover_check

SECONDS = 10.0
RSS_TOLERANCE = 40 << 20
"""RSS after shutdown may stay above the start (the allocator keeps freed arenas; the first
system in a process also loads and caches modules), but not by what ~3 000 requests and
dozens of process generations would leak."""
FD_TOLERANCE = 4
INSTANCES = 4


def test_every_request_ends_exactly_once_while_instances_are_killed() -> None:
    gc.collect()
    before = process_usage()
    with leftover_check():
        system = SpearSystem.start(SystemConfig(connection=SHORT))
        try:
            restart = RestartPolicy(max_restarts=10_000, window=60.0, backoff_min=0.05,
                                    backoff_max=0.3)
            ids = [system.create_instance("echo", instance_config(
                ECHO, prefetch=16, restart=restart)) for _ in range(INSTANCES)]
            for iid in ids:
                system.wait_ready(iid, timeout=30)
            result = Chaos(system, ChaosConfig(seconds=SECONDS, seed=20261129)).run()
        finally:
            system.shutdown(timeout=30)
    assert not result.violations(), f"{result.violations()}\n{result.summary()}"
    # the run did what it says: load, every kind of signal, restarts, tree() throughout
    assert result.submitted >= SECONDS * 100, result.summary()
    assert result.disrupted >= 5 and result.restarts >= 5, result.summary()
    assert len(result.signals) == 4, f"not every kind of disruption: {result.summary()}"
    assert sum(result.errors.values()) < result.submitted // 2, result.summary()
    assert result.tree_calls >= SECONDS * 2, result.summary()

    # resources come back to where they started
    def settled() -> bool:
        gc.collect()
        now = process_usage()
        return (now["threads"] <= before["threads"]
                and now["fds"] <= before["fds"] + FD_TOLERANCE
                and now["rss"] <= before["rss"] + RSS_TOLERANCE)
    try:
        wait_until(settled, LEFTOVER_WAIT)
    except AssertionError:
        raise AssertionError(f"resources not back to their start: before {before}, after "
                             f"{process_usage()}, threads {threading.enumerate()}") from None
