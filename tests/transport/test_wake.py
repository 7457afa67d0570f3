"""WakePipe: coalesced wake-ups from any thread, never lost."""

from __future__ import annotations

import select
import threading

from spear_actors.transport.wake import WakePipe


def _readable(pipe: WakePipe, timeout: float) -> bool:
    return bool(select.select([pipe.fd], [], [], timeout)[0])


def test_wake_coalesces_until_drained() -> None:
    pipe = WakePipe()
    try:
        assert not _readable(pipe, 0)
        pipe.wake()
        pipe.wake()
        assert _readable(pipe, 1.0)
        pipe.drain()
        assert not _readable(pipe, 0)
        pipe.wake()  # after a drain, a wake is delivered again
        assert _readable(pipe, 1.0)
    finally:
        pipe.close()


def test_no_wakeup_is_lost_under_concurrent_wakes() -> None:
    """A consumer that drains, then takes the work, always sees every item."""
    pipe = WakePipe()
    items: list[int] = []
    seen: list[int] = []
    n = 20_000
    done = threading.Event()

    def consumer() -> None:
        while len(seen) < n:
            if not _readable(pipe, 2.0):
                return  # a lost wake-up: the test fails on the count below
            pipe.drain()
            while items:
                seen.append(items.pop())
        done.set()

    thread = threading.Thread(target=consumer)
    thread.start()
    try:
        for i in range(n):
            items.append(i)
            pipe.wake()
        assert done.wait(30), f"consumer stalled after {len(seen)} of {n} items"
    finally:
        thread.join(5)
        pipe.close()
    assert sorted(seen) == list(range(n))
