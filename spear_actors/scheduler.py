"""One timer thread for the whole system: delayed calls (backoff, deadlines, sampling).

Actors cannot sleep without blocking their inbox, and a ``threading.Timer`` per delay would
leak threads; instead every delay is an entry in one heap served by one thread. Callbacks run
in the scheduler thread and must be quick (typically ``actor_ref.tell(...)``); an exception
from one is logged and survived.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

from ._log import log_exception, logger

__all__ = ["Scheduler", "TimerHandle"]


class TimerHandle:
    """A scheduled call; :meth:`cancel` prevents it if it has not run yet."""

    __slots__ = ("cancelled", "due", "fn")

    def __init__(self, due: float, fn: Callable[[], object]) -> None:
        self.due = due
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """Runs callbacks after a delay (monotonic clock) in one daemon thread."""

    def __init__(self, name: str = "spear-scheduler") -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], object]) -> TimerHandle:
        handle = TimerHandle(time.monotonic() + max(0.0, delay), fn)
        with self._cond:
            if self._stopped:
                handle.cancelled = True
                return handle
            heapq.heappush(self._heap, (handle.due, next(self._counter), handle))
            if self._heap[0][2] is handle:
                self._cond.notify()
        return handle

    def call_every(self, interval: float, fn: Callable[[], object]) -> TimerHandle:
        """Call ``fn`` every ``interval`` seconds until the returned handle is cancelled."""
        outer = TimerHandle(0.0, fn)

        def tick() -> None:
            if outer.cancelled:
                return
            fn()
            if not outer.cancelled:
                self.call_later(interval, tick)

        self.call_later(interval, tick)
        return outer

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (
                        not self._heap or self._heap[0][0] > time.monotonic()):
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                if self._stopped:
                    return
                _, _, handle = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            try:
                handle.fn()
            except Exception:
                log_exception(logger, "scheduled call {} raised", handle.fn)
