"""The per-instance output rings ``tail`` reads: the last lines each instance wrote.

:class:`OutputRings` keeps, per instance id, a bounded deque of its most recent stdout and
stderr lines (default 1 000), kept across the instance's restarts (same id), dropped when the
instance is removed. Lines arrive from the process watcher thread (the ``on_output``
callback of :func:`~spear_actors.process.spawn`); readers are any thread (the control
server's workers, the facade). One lock guards everything; each call holds it briefly.
Every line gets a sequence number per instance so a follower (``tail -f``) can ask for what
came after the last one it saw.
"""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["DEFAULT_RING_LINES", "OutputRings"]

DEFAULT_RING_LINES = 1000


class OutputRings:
    """Bounded recent output of every instance; thread-safe (see the module docstring)."""

    def __init__(self, lines: int = DEFAULT_RING_LINES) -> None:
        self.lines = lines
        self._lock = threading.Lock()
        self._rings: dict[str, deque[tuple[int, str]]] = {}
        self._seq: dict[str, int] = {}

    def append(self, instance_id: str, stream: str, line: str) -> None:
        """One line (without its newline) of ``stream`` ("stdout"/"stderr"). Watcher thread."""
        with self._lock:
            ring = self._rings.get(instance_id)
            if ring is None:
                ring = self._rings[instance_id] = deque(maxlen=self.lines)
            seq = self._seq.get(instance_id, 0) + 1
            self._seq[instance_id] = seq
            ring.append((seq, line))

    def tail(self, instance_id: str, n: int = 100, since: int | None = None
             ) -> tuple[list[str], int]:
        """The last ``n`` lines (after sequence number ``since``, if given) and the sequence
        number of the newest line (pass it back as ``since`` to follow)."""
        with self._lock:
            ring = self._rings.get(instance_id, ())
            last = self._seq.get(instance_id, 0)
            entries = [e for e in ring if since is None or e[0] > since]
        if n >= 0:
            entries = entries[-n:] if n else []
        return [line for _, line in entries], last

    def mark(self, instance_id: str) -> int:
        """The sequence number of the newest line so far (0 if none)."""
        with self._lock:
            return self._seq.get(instance_id, 0)

    def drop(self, instance_id: str) -> None:
        """Forget an instance that was removed (scale-down, reload)."""
        with self._lock:
            self._rings.pop(instance_id, None)
            self._seq.pop(instance_id, None)
