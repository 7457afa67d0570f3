"""SubmissionQueue: the hand-off of execute calls from caller threads to the task manager.

Callers (any thread) :meth:`~SubmissionQueue.put`; the current TaskExecutionManager drains it
in its own thread. A burst of submits costs one actor message (a coalesced
``DrainSubmissions`` wake-up). The RuntimeActor owns the queue, so submissions waiting in it
survive a manager restart: the new manager drains them when it starts.
"""

from __future__ import annotations

import collections
from typing import Any

import pykka

from ..errors import NoInstanceAvailable
from ..messages import DrainSubmissions, Submission
from .dataplane import fail_future

__all__ = ["SubmissionQueue"]


class SubmissionQueue:
    """Thread-safe, one wake-up per burst."""

    def __init__(self) -> None:
        self._items: collections.deque[Submission] = collections.deque()
        self._woken = False
        self.actor: pykka.ActorRef[Any] | None = None
        """The manager to wake; each manager sets itself here when it starts."""
        self.closed_reason: str | None = None
        """Set at shutdown or escalation: later submissions fail at once."""

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Submission) -> None:
        if self.closed_reason is not None:
            fail_future(item.future, NoInstanceAvailable(self.closed_reason))
            return
        self._items.append(item)
        if self.closed_reason is not None:  # closed while we appended
            self.close(self.closed_reason)
            return
        if not self._woken:
            self._woken = True
            self.wake()

    def wake(self) -> None:
        """Tell the manager to drain (a dead one is being restarted: its successor drains
        what waits here when it starts)."""
        actor = self.actor
        if actor is not None:
            try:
                actor.tell(DrainSubmissions())
            except pykka.ActorDeadError:
                self._woken = False

    def take_all(self) -> list[Submission]:
        self._woken = False  # reset before draining: a put racing us wakes us again
        items = []
        pop = self._items.popleft
        while self._items:
            items.append(pop())
        return items

    def close(self, why: str) -> None:
        """Refuse later submissions and fail those waiting."""
        self.closed_reason = why
        for item in self.take_all():
            fail_future(item.future, NoInstanceAvailable(why))
