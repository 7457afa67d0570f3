"""Graceful shutdown in the middle of a stream of requests: every request ends (an answer or
an error, never silence), and no instance process, descendant or zombie is left behind."""

from __future__ import annotations

import time
from concurrent.futures import Future

import psutil
import pytest
from helpers import wait_until

from spear_actors import InstanceFailed, NoInstanceAvailable, SpearError, SpearSystem

from .support import ECHO, HANG, WAIT, Systems, launch, process_gone, program

STREAM = 3_000
SHUTDOWN_BOUND = 15.0
"""Slowest part: an instance busy in a 60 s handler call gets the stop SIGNAL, a second of
grace, then SIGTERM."""


def descendants(system: SpearSystem) -> dict[int, str]:
    """Every process of every instance, with what it is."""
    found = {}
    for info in system.instances():
        assert info.pid is not None
        proc = psutil.Process(info.pid)
        found[info.pid] = f"{info.id} (main)"
        for child in proc.children(recursive=True):
            found[child.pid] = f"{info.id} (descendant)"
    return found


def test_shutdown_under_load_ends_every_request_and_leaves_no_process(systems: Systems
                                                                      ) -> None:
    system = systems.start()
    launch(system, "echo", ECHO, 3, prefetch=16)
    [sleeper] = launch(system, "sleeper", HANG)
    [forker] = launch(system, "forker", program("forker"))
    processes = descendants(system)
    assert len([p for p in processes.values() if p.startswith(forker)]) == 3, processes

    stuck = [system.submit(sleeper, b"60", method="sleep", timeout=120) for _ in range(2)]
    futures: list[Future[bytes]] = [system.submit("echo", i.to_bytes(4, "big"), timeout=60)
                                    for i in range(STREAM)]
    futures += [system.submit(forker, b"f", timeout=60) for _ in range(100)]
    wait_until(lambda: sum(f.done() for f in futures) >= STREAM // 4, WAIT,
               message="the stream to get going")
    started = time.monotonic()
    system.shutdown(timeout=SHUTDOWN_BOUND)
    took = time.monotonic() - started
    assert took < SHUTDOWN_BOUND + 5, f"shutdown took {took:.1f} s"

    # every request has ended, at once: answered, or failed with a reason
    assert all(f.done() for f in [*futures, *stuck]), \
        f"{sum(not f.done() for f in futures)} requests left hanging"
    failed = sum(f.exception(0) is not None for f in futures)
    print(f"shutdown took {took:.2f} s; {len(futures) - failed} answered, {failed} failed")
    for i, future in enumerate(futures[:STREAM]):
        error = future.exception(0)
        if error is None:
            assert future.result(0) == i.to_bytes(4, "big")
        else:
            assert isinstance(error, (InstanceFailed, NoInstanceAvailable)), repr(error)
    for future in stuck:  # in flight in a handler when the instance was stopped
        assert isinstance(future.exception(0), InstanceFailed), repr(future.exception(0))
    with pytest.raises(SpearError):
        system.submit("echo", b"too late")

    # no orphan (the setsid'd grandchild included) and no zombie
    left = {pid: what for pid, what in processes.items() if not process_gone(pid)}
    assert not left, f"left behind: {left}"
    assert not psutil.Process().children(recursive=True)
